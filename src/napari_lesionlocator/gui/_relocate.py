"""RelocateDialog: a saved review whose images moved; the reader points to where they are now.

Lists each timepoint whose image is missing or changed (from :class:`io.session.SessionImageError`
or :func:`io.session.check_images`), lets the reader name a folder to look in by file name
(*Look in folder...*) or pick the file of the selected timepoint (*Choose file...*), checks again
(checksum, or the same voxels and grid), and offers *Restore* once every image is found. *Save the
new locations in the session* (on by default) re-points the session folder
(:func:`io.session.repoint_session`) before restoring. A changed image (other voxels) is never
accepted: the masks would land on another scan. Thread: GUI thread (the checks read the files'
checksums, a fraction of a second per scan).
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

__all__ = ["RelocateDialog"]

_COLUMNS = ("timepoint", "saved at", "found", "status")


class RelocateDialog(QDialog):
    """Point a session's moved images to their new location (see the module docstring)."""

    def __init__(self, folder: Path, error=None, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Images of the review moved")
        self.folder = Path(folder)
        self.relocate: dict[str, str] = {}
        self.search: list[str] = []
        self.checks = list(getattr(error, "problems", []) or [])
        self.info = QLabel(f"Some scans of the review {self.folder} are not where they were saved, or changed. "
                           "Point to the folder that holds them now (files are matched by name and checked by "
                           "checksum, or by identical voxels and grid).")
        self.info.setWordWrap(True)
        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(_COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.folder_button = QPushButton("Look in folder...")
        self.folder_button.setToolTip("A folder that holds the scans now (looked up by file name).")
        self.file_button = QPushButton("Choose file...")
        self.file_button.setToolTip("The image file (or DICOM folder) of the selected timepoint.")
        self.repoint_box = QCheckBox("Save the new locations in the session")
        self.repoint_box.setChecked(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.restore_button = self.buttons.addButton("Restore", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.folder_button)
        row.addWidget(self.file_button)
        row.addStretch(1)
        row.addWidget(self.repoint_box)
        layout = QVBoxLayout(self)
        layout.addWidget(self.info)
        layout.addWidget(self.table, 1)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(self.buttons)
        self.folder_button.clicked.connect(self._ask_folder)
        self.file_button.clicked.connect(self._ask_file)
        self.resize(820, 300)
        if not self.checks:
            self.recheck()
        else:
            self._fill()

    @property
    def repoint(self) -> bool:
        return self.repoint_box.isChecked()

    @property
    def all_found(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def recheck(self) -> list:
        """Check every image again with the folders and files given so far."""
        from ..core.errors import LesionLocatorError
        from ..io.session import check_images

        try:
            self.checks = check_images(self.folder, relocate=self.relocate, search=self.search)
        except LesionLocatorError as exc:
            self.status.setText(str(exc))
            self.checks = []
        self._fill()
        return self.checks

    def add_folder(self, folder) -> list:
        folder = str(Path(folder).expanduser())
        if folder not in self.search:
            self.search.append(folder)
        return self.recheck()

    def set_file(self, timepoint: str, path) -> list:
        self.relocate[str(timepoint)] = str(Path(path).expanduser())
        return self.recheck()

    def _ask_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "The folder that holds the scans now", str(self.folder.parent))
        if folder:
            self.add_folder(folder)

    def _ask_file(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if not rows:
            self.status.setText("Select the timepoint whose image you want to pick.")
            return
        tp = self.table.item(min(rows), 0).text()
        path, _ = QFileDialog.getOpenFileName(self, f"The image of {tp}", str(self.folder.parent))
        if path:
            self.set_file(tp, path)

    def _fill(self) -> None:
        self.table.setRowCount(len(self.checks))
        for r, c in enumerate(self.checks):
            found = c.path if c.ok else ""
            state = {"ok": "found", "same voxels": "found (same image, other file)"}.get(c.status, c.status)
            for col, text in enumerate((c.timepoint, c.saved_path or "", found or "", state)):
                item = QTableWidgetItem(text)
                item.setToolTip(c.message or text)
                if col == 3:
                    item.setForeground(Qt.GlobalColor.darkGreen if c.ok else Qt.GlobalColor.red)
                self.table.setItem(r, col, item)
        bad = [c for c in self.checks if not c.ok]
        self.restore_button.setEnabled(self.all_found)
        if self.checks:
            self.status.setText("Every scan was found: Restore." if not bad else
                                f"{len(bad)} scan(s) still missing or changed: "
                                + "; ".join(c.message for c in bad))

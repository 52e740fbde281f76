"""Rate and correct an existing segmentation (the Imaging Data Commons AI-annotation QA workflow).

Open a DICOM-SEG (e.g. an IDC ``ai-segmentations-dcm`` file): its CT and a Labels layer (one id per
segment) appear, with a table of the segments. Give each a Likert score 1-5 (the IDC definition of
the chosen score is shown) and a comment, correct masks with napari's label tools, and export
``qa-results.csv`` plus the corrected SEG (:class:`~napari_lesionlocator.io.qa.QASession`). *Save
review* / *Resume review* keep the work in a folder between sessions.

An edit is what the reader changed in the Labels layer compared with the AI's display map: voxels
painted with a segment's id are added to it, voxels the AI showed as that segment and that no
longer are are taken out of it. Each segment keeps its own whole mask otherwise (overlaps survive).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import LesionLocatorError
from ..core.results import compose_label_map
from ..io.qa import LIKERT, QASession, write_qa_results_csv
from ._layers import image_layer_data, labels_layer_data

__all__ = ["QAWidget"]


class _Line(QLabel):
    """A word-wrapped status line that takes no room while it is empty (the table gets it)."""

    def __init__(self) -> None:
        super().__init__("")
        self.setWordWrap(True)
        self.setVisible(False)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt naming
        super().setText(text)
        self.setVisible(bool(text))


class QAWidget(QWidget):
    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ._dock_fit import keep_on_screen

        keep_on_screen(self)  # a tab of the other secondary docks when the column would not fit the screen
        self.viewer = napari_viewer
        self.qa: QASession | None = None
        self.labels_layer = None
        self._ai_display: np.ndarray | None = None
        self.reviewer = QLineEdit("reviewer")
        self.reviewer.setToolTip("Reviewer id (IDC: rad* for radiologists, ne* for non-experts)")
        open_button = QPushButton("Open SEG...")
        open_button.clicked.connect(self._open_dialog)
        resume_button = QPushButton("Resume review...")
        resume_button.clicked.connect(self._resume_dialog)
        row = QHBoxLayout()
        row.addWidget(QLabel("Reviewer"))
        row.addWidget(self.reviewer)
        row.addWidget(open_button)
        row.addWidget(resume_button)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Segment", "Score", "Comment"])
        self.table.currentCellChanged.connect(lambda r, *_: self._show_definition(r))
        # Compact rows (the style's default is ~30 px: only ~3.6 rows showed in the docks' tab group)
        # from the font, and the status lines take no room while empty, so >= 6 segments show with
        # all docks open on a 1600x1000 screen (also with both status lines shown).
        row_height = self.table.fontMetrics().height() + 4
        rows = self.table.verticalHeader()
        rows.setMinimumSectionSize(min(row_height, rows.minimumSectionSize()))
        rows.setDefaultSectionSize(row_height)
        self.definition = _Line()
        self.save_button = QPushButton("Save review...")
        self.save_button.clicked.connect(self._save_dialog)
        self.export_button = QPushButton("Export CSV + corrected SEG...")
        self.export_button.clicked.connect(self._export_dialog)
        buttons = QHBoxLayout()
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.export_button)
        self.status = _Line()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 2, 6, 2)  # all docks together fit a 1000 px screen
        lay.setSpacing(2)
        lay.addLayout(row)
        lay.addWidget(self.table)
        lay.addWidget(self.definition)
        lay.addLayout(buttons)
        lay.addWidget(self.status)

    # ------------------------------------------------------------ open / resume
    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "DICOM-SEG to review", str(Path.home()), "DICOM (*.dcm);;All (*)")
        if path:
            self.open_seg(path)

    def _resume_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Saved review folder", str(Path.home()))
        if folder:
            self.resume(folder)

    def open_seg(self, path: str, ct=None) -> bool:
        try:
            qa = QASession.from_seg(path, ct, reviewer=self.reviewer.text().strip() or "reviewer")
        except LesionLocatorError as exc:
            self.status.setText(f"Cannot open {Path(path).name}: {exc}")
            return False
        self._show(qa)
        return True

    def resume(self, folder: str) -> bool:
        try:
            qa = QASession.load(folder)
        except LesionLocatorError as exc:
            self.status.setText(f"Cannot resume: {exc}")
            return False
        self.reviewer.setText(qa.reviewer)
        self._show(qa)
        return True

    def _show(self, qa: QASession) -> None:
        self.qa = qa
        data, kwargs, _ = image_layer_data(qa.image)
        image_layer = self.viewer.add_image(data, **kwargs)
        ai = compose_label_map([qa.ai_lesions[i] for i in qa.segment_ids], qa.image.geometry)
        self._ai_display = ai.array.copy()
        current = compose_label_map([qa.current_lesions()[i] for i in qa.segment_ids], qa.image.geometry,
                                    name=f"{image_layer.name} lesions")
        ldata, lkwargs, _ = labels_layer_data(current, image_name=image_layer.name)
        self.labels_layer = self.viewer.add_labels(ldata, **lkwargs)
        self.table.setRowCount(len(qa.segment_ids))
        for r, lid in enumerate(qa.segment_ids):
            name = QTableWidgetItem(f"{lid}: {qa.names.get(lid, lid)}")
            self.table.setItem(r, 0, name)
            combo = QComboBox()
            combo.setFrame(False)  # fits the compact row
            combo.addItem("-", None)
            for score in (5, 4, 3, 2, 1):
                combo.addItem(str(score), score)
                combo.setItemData(combo.count() - 1, LIKERT[score], 3)  # Qt.ToolTipRole
            rating = qa.ratings.get(lid)
            if rating is not None and rating.score is not None:
                combo.setCurrentIndex(combo.findData(rating.score))
            combo.currentIndexChanged.connect(lambda _i, row=r: self._show_definition(row))
            self.table.setCellWidget(r, 1, combo)
            self.table.setItem(r, 2, QTableWidgetItem(rating.comment if rating else ""))
        self.status.setText(f"{len(qa.segment_ids)} segment(s) to rate from {qa.ai_segmentation}")

    def _show_definition(self, row: int) -> None:
        combo = self.table.cellWidget(row, 1) if row >= 0 else None
        score = combo.currentData() if combo is not None else None
        self.definition.setText(f"{score}: {LIKERT[score]}" if score else "")

    # ------------------------------------------------------------ sync, save, export
    def score_combo(self, lesion_id: int) -> QComboBox:
        return self.table.cellWidget(self.qa.segment_ids.index(lesion_id), 1)

    def sync(self) -> None:
        """Take the table's scores/comments and the Labels layer's edits into the QA session."""
        qa = self.qa
        qa.reviewer = self.reviewer.text().strip() or "reviewer"
        data = np.asarray(self.labels_layer.data)
        for r, lid in enumerate(qa.segment_ids):
            score = self.table.cellWidget(r, 1).currentData()
            item = self.table.item(r, 2)
            comment = item.text() if item is not None else ""
            if score is not None:
                qa.rate(lid, score, comment)
            now, before = data == lid, self._ai_display == lid
            if np.array_equal(now, before) and lid not in qa.corrected:
                continue
            own = qa.ai_lesions[lid].mask.to_full()
            corrected = (own & ~(before & ~now)) | now
            if lid in qa.corrected or not np.array_equal(corrected, own):
                qa.correct(lid, corrected)

    def _save_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the review into", str(Path.home()))
        if folder:
            self.save(folder)

    def save(self, folder: str) -> Path | None:
        if self.qa is None:
            self.status.setText("Open a SEG first.")
            return None
        self.sync()
        path = self.qa.save(folder)
        self.status.setText(f"Review saved to {folder}")
        return path

    def _export_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export qa-results.csv and the corrected SEG into",
                                                  str(Path.home()))
        if folder:
            self.export(folder)

    def export(self, folder: str, *, overwrite: bool = False):
        if self.qa is None:
            self.status.setText("Open a SEG first.")
            return None
        self.sync()
        try:
            corrected, row = self.qa.export(folder, overwrite=overwrite)
            csv_path = write_qa_results_csv(Path(folder) / "qa-results.csv", [row], overwrite=overwrite)
        except LesionLocatorError as exc:
            self.status.setText(f"Not exported: {exc}")
            return None
        self.status.setText(f"Wrote {csv_path.name}" + (f" and {corrected.name}" if corrected else
                                                        " (all segments strongly agreed: no corrected SEG)"))
        return csv_path, corrected

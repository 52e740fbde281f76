"""Export dock: the viewer's study (every timepoint with its lesions) written in the chosen formats.

The formats are those of ``lesionlocator export`` (:mod:`napari_lesionlocator.cli.export`): NIfTI /
NRRD / MHA instance maps, each lesion's own mask, prompts JSON, the lesion table with RECIST,
DICOM-SEG and DICOM SR. The job runs in a worker with progress; every file is planned first, so an
existing output stops the export before anything is written unless "replace existing files" is
ticked; files are atomic and get the user's umask.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..cli.export import DEFAULT_FORMATS, FORMATS, iter_export_study, study_model_inputs
from ..core.errors import LesionLocatorError
from ._session import session_for
from ._workers import JobRunner

__all__ = ["ExportWidget"]

_LABELS = {"nifti": "NIfTI instance maps", "nrrd": "NRRD instance maps", "mha": "MHA instance maps",
           "lesions": "per-lesion masks", "prompts": "prompts JSON", "tables": "tables (CSV/JSON, RECIST)",
           "dicom-seg": "DICOM-SEG", "dicom-sr": "DICOM SR (TID 1500)"}


class ExportWidget(QWidget):
    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ._dock_fit import keep_on_screen

        keep_on_screen(self)  # a tab of the other secondary docks when the column would not fit the screen
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.runner = JobRunner(self)
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("output folder")
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder)
        row.addWidget(browse)
        grid = QGridLayout()
        self.checks: dict[str, QCheckBox] = {}
        for n, fmt in enumerate(FORMATS):
            box = QCheckBox(_LABELS[fmt])
            box.setChecked(fmt in DEFAULT_FORMATS)
            box.setToolTip(f"lesionlocator export --formats {fmt}")
            self.checks[fmt] = box
            grid.addWidget(box, n // 2, n % 2)
        self.overwrite = QCheckBox("replace existing files")
        self.export_button = QPushButton("Export")
        self.export_button.setToolTip("Write every timepoint's lesions in the ticked formats")
        self.export_button.clicked.connect(self.export)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 2, 6, 2)  # all docks together fit a 1000 px screen
        lay.addLayout(row)
        lay.addLayout(grid)
        lay.addWidget(self.overwrite)
        lay.addWidget(self.export_button)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addStretch(1)
        self.runner.progressed.connect(self._on_progress)
        self.runner.succeeded.connect(self._on_success)
        self.runner.failed.connect(lambda exc: self.status.setText(f"Export failed: {exc}"))
        self.runner.done.connect(lambda: self.export_button.setEnabled(True))
        self.written: dict[str, list[Path]] = {}

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export into folder", self.folder.text() or str(Path.home()))
        if folder:
            self.folder.setText(folder)

    def formats(self) -> list[str]:
        return [fmt for fmt, box in self.checks.items() if box.isChecked()]

    def export(self) -> bool:
        """Start the export job; False (with the reason in the status line) when it cannot start."""
        folder = self.folder.text().strip()
        if not folder:
            self.status.setText("Choose an output folder first.")
            return False
        if not self.formats():
            self.status.setText("Tick at least one format.")
            return False
        try:
            inputs = study_model_inputs(self.session.study())
        except LesionLocatorError as exc:
            self.status.setText(f"Nothing to export: {exc}")
            return False
        if not any(inputs["lesions"]):
            self.status.setText("No lesion in any timepoint yet: segment or open some first.")
            return False
        images, lesions = inputs.pop("images"), inputs.pop("lesions")
        formats, overwrite = self.formats(), self.overwrite.isChecked()

        def job(token, on_progress):
            return iter_export_study(images, lesions, folder, formats=formats, overwrite=overwrite, **inputs)

        self.export_button.setEnabled(False)
        self.status.setText("Exporting...")
        self.runner.start(job, desc="Exporting", total=1)
        return True

    def _on_progress(self, event) -> None:
        self.progress.setRange(0, max(int(event.total), 1))
        self.progress.setValue(int(event.step))
        if event.message:
            self.status.setText(event.message)

    def _on_success(self, written) -> None:
        self.written = written
        n = sum(len(v) for v in written.values())
        self.status.setText(f"Wrote {n} file(s) / folder(s) to {self.folder.text().strip()}.")

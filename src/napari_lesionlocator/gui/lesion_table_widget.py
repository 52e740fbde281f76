"""LesionTableWidget ("Lesion table"): the study's lesions with RECIST 1.1, a size plot and the session.

* **Lesion table**: one row per lesion: colour and id, name (editable), site and RECIST role
  (pick lists; making a lesion a target is checked by :func:`core.recist.target_rule_problems`,
  a refusal is shown as a napari notification with the reasons), then per timepoint the volume
  (mL), the RECIST long and short axes (mm) and the status (present, new, disappeared, lost, not
  evaluable, unverified, ...). Columns sort; a row click centres the view on the lesion (every
  timepoint when the review grid is open); "Copy CSV" puts :meth:`Study.review_csv` (sizes and
  provenance) on the clipboard.
* **Response table**: per timepoint the sum of the target diameters, change vs baseline and vs
  nadir and the response (CR/PR/SD/PD/NE) with its reason; "(provisional)" while a target lesion
  is unverified.
* **Plot** (pyqtgraph): each lesion's long axis or volume over time, and the target sum with the
  -30 % (PR, from baseline) and +20 % (PD, from nadir) thresholds.
* **Session**: Save / Restore (io.session, in a worker), autosave every 60 s and after each engine
  result into the recovery folder; when a recovery of another session exists at start, a bar
  offers to restore or discard it.

The study is :func:`~._table_study.review_study_for` the viewer's session: a label edit changes
only the lesions it touched, and the study measures only those again (cached per mask), so the
row updates well within a second.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QStyledItemDelegate,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import LesionLocatorError
from ..core.progress import ProgressEvent
from ..core.study import ROLES, SITES, Study
from ._gc import freeze_long_lived_objects
from ._layers import image_layer_data, lesion_colour
from ._panels import LesionColourDelegate, paint_lesion_item
from ._session import session_for
from ._table_study import review_study_for
from ._view import centre_view
from ._workers import JobRunner

if TYPE_CHECKING:
    import napari

__all__ = ["LesionTableWidget", "FIXED_COLUMNS", "PER_TIMEPOINT", "AUTOSAVE_MS"]

#: Lesion table columns before the per-timepoint ones.
FIXED_COLUMNS = ("id", "name", "site", "RECIST")
#: Per-timepoint columns (header "T<k> <what>").
PER_TIMEPOINT = ("mL", "long", "short", "status")
#: Response table columns.
RESPONSE_COLUMNS = ("", "sum mm", "vs baseline", "vs nadir", "response", "reason")
AUTOSAVE_MS = 60_000
_SORT = Qt.ItemDataRole.UserRole + 1
_ID = Qt.ItemDataRole.UserRole


class _Item(QTableWidgetItem):
    """A cell that sorts by its sort key (numbers as numbers, empty cells last)."""

    def __lt__(self, other) -> bool:
        a, b = self.data(_SORT), other.data(_SORT)
        if a is None or b is None:
            return (a is None) < (b is None) if (a is None) != (b is None) else self.text() < other.text()
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a < b
        return str(a) < str(b)


class _PickList(QStyledItemDelegate):
    """A combo box editor for the site and role columns."""

    def __init__(self, choices, parent=None) -> None:
        super().__init__(parent)
        self.choices = tuple(choices)

    def createEditor(self, parent, option, index):  # noqa: N802 - Qt naming
        box = QComboBox(parent)
        box.addItems(self.choices)
        box.activated.connect(lambda _i, b=box: self.commitData.emit(b))
        return box

    def setEditorData(self, editor, index) -> None:  # noqa: N802
        i = editor.findText(str(index.data()))
        editor.setCurrentIndex(max(0, i))

    def setModelData(self, editor, model, index) -> None:  # noqa: N802
        model.setData(index, editor.currentText())


def _fmt(value, digits: int = 1) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _session_job(kind: str, state_or_folder, target=None) -> Generator[ProgressEvent, None, object]:
    """The worker side of Save / Autosave / Restore (io.session)."""
    from ..io import session as io_session

    yield ProgressEvent(0, 1, f"{kind}...")
    if kind == "save":
        out = io_session.save_session(state_or_folder, target, overwrite=True)
        io_session.discard_recovery(str(state_or_folder.get("session_id")))
    elif kind == "autosave":
        out = io_session.autosave(state_or_folder, target)
    elif kind == "report":
        out = _write_report(state_or_folder, target)
    else:
        relocate, search, repoint = target or ({}, (), False)
        if repoint and (relocate or search):  # the new locations go into the session first (checked there)
            io_session.repoint_session(state_or_folder, relocate=relocate, search=search)
        out = io_session.load_session(state_or_folder, relocate=relocate, search=search)
    yield ProgressEvent(1, 1, f"{kind} done")
    return kind, out


def _write_report(state: dict, path: Path) -> Path:
    """Worker: the response report of a study snapshot (a study of its own, so the reader can go on
    editing the live one meanwhile)."""
    from ..core.study import Timepoint
    from ..report import write_report

    copy = Study([Timepoint(t["image"], None, t["date"]) for t in state["timepoints"]],
                 state.get("patient_id", "patient"), sort_by_date=False)
    copy.restore_state(state)
    folder = state.get("session_folder")
    return write_report(copy, path, overwrite=True, session_folder=folder)


class LesionTableWidget(QWidget):
    """Lesion table + RECIST response + size plot + session save/restore over the viewer's study."""

    table_updated = Signal(object)  # lesion ids whose rows changed (None: all)

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None, *,
                 recovery_root: str | None = None, offer_recovery: bool = True) -> None:
        super().__init__(parent)
        self.session = session_for(napari_viewer)
        self.viewer = self.session.viewer
        self.model = review_study_for(self.session)
        freeze_long_lived_objects(self.viewer)
        self.recovery_root = recovery_root  # None: io.session's default (or $LESIONLOCATOR_RECOVERY)
        self.runner = JobRunner(self)
        self._names: list[str] = []
        self._rows: dict[int, int] = {}
        self._filling = False
        self._autosaved_revision = -1
        self._autosave_pending = False
        self.summary = None
        self.last_error: str | None = None
        self.last_report: Path | None = None
        self.last_restored: Study | None = None  # the study the last restore put into the viewer
        self.relocate_dialog = None
        self._restoring: Path | None = None
        self._placed = False
        self._sized = False
        try:  # the window's size before this dock was added (adding it on the right may grow it)
            self._window_size = self.viewer.window._qt_window.size()
        except AttributeError:  # a viewer without a Qt window
            self._window_size = None

        # --- buttons
        self.save_button = QPushButton("Save session...")
        self.save_button.setToolTip("Save the whole review (images by checksum, lesions, masks, reviews) to a folder.")
        self.restore_button = QPushButton("Restore session...")
        self.restore_button.setToolTip("Open a saved review (its scans and lesions replace the ones shown).")
        self.copy_button = QPushButton("Copy CSV")
        self.copy_button.setToolTip("Copy the lesion table with sizes and provenance to the clipboard (CSV).")
        self.report_button = QPushButton("Report...")
        self.report_button.setToolTip("Write the response report (a self-contained HTML page: dates, lesion table, "
                                      "response per follow-up with reasons, plot, key slices with the RECIST axes).")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Accept the selected lesion where it is unverified (tracked, not yet checked).")
        self.size_mode = QComboBox()
        self.size_mode.addItems(["long axis (mm)", "volume (mL)"])
        self.size_mode.setToolTip("What the plot shows for each lesion.")
        top = QHBoxLayout()
        for w in (self.save_button, self.restore_button, self.report_button, self.copy_button, self.accept_button):
            top.addWidget(w)
        top.addStretch(1)
        top.addWidget(QLabel("plot:"))
        top.addWidget(self.size_mode)

        # --- recovery offer (hidden unless a recovery exists)
        self.recovery_bar = QFrame()
        self.recovery_bar.setFrameShape(QFrame.Shape.StyledPanel)
        self.recovery_label = QLabel("")
        self.recovery_label.setWordWrap(True)
        self.recover_button = QPushButton("Restore it")
        self.discard_button = QPushButton("Discard")
        bar = QHBoxLayout(self.recovery_bar)
        bar.setContentsMargins(4, 2, 4, 2)
        bar.addWidget(self.recovery_label, 1)
        bar.addWidget(self.recover_button)
        bar.addWidget(self.discard_button)
        self.recovery_bar.setVisible(False)
        self.recovery = None

        # --- lesion table
        self.table = QTableWidget()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.SelectedClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        # header (~26 px) + at least 6 lesion rows + a horizontal scroll bar (many timepoints) + frame
        self.table.setMinimumHeight(28 + 6 * 22 + 18 + 6)
        self.table.setSortingEnabled(True)
        self.table.setItemDelegateForColumn(0, LesionColourDelegate(self.table))  # colour kept when selected
        self.table.setItemDelegateForColumn(2, _PickList(SITES, self.table))
        self.table.setItemDelegateForColumn(3, _PickList(ROLES, self.table))

        # --- response table
        self.response = QTableWidget(0, len(RESPONSE_COLUMNS))
        self.response.setHorizontalHeaderLabels(list(RESPONSE_COLUMNS))
        self.response.verticalHeader().setVisible(False)
        self.response.verticalHeader().setDefaultSectionSize(22)
        self.response.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.response.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(RESPONSE_COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)  # reason: elided
        self.response.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.response.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.response.setMinimumHeight(28 + 3 * 22 + 4)  # baseline + two follow-ups
        self.response.setWordWrap(False)

        # --- plots
        import pyqtgraph as pg

        self._pg = pg
        self.plot = pg.PlotWidget()
        self.plot.setMinimumSize(200, 90)
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.sum_plot = pg.PlotWidget()
        self.sum_plot.setMinimumSize(200, 90)
        self.sum_plot.showGrid(x=True, y=True, alpha=0.25)
        self.sum_plot.setLabel("left", "target sum (mm)")
        self.sum_plot.setTitle("<span style='color:#ffffff'>&#9632; sum</span>&nbsp; "
                               "<span style='color:#50c878'>- - PR</span>&nbsp; "
                               "<span style='color:#e65050'>- - PD</span>", size="8pt")
        self.sum_plot.setToolTip("Sum of the target diameters; PR line: 30 % below the baseline sum; PD line: "
                                 "20 % (and at least 5 mm) above the nadir before each follow-up.")
        self.plots = plots = QSplitter(Qt.Orientation.Vertical)
        plots.addWidget(self.plot)
        plots.addWidget(self.sum_plot)

        tables = QSplitter(Qt.Orientation.Vertical)
        tables.addWidget(self.table)
        tables.addWidget(self.response)
        tables.setStretchFactor(0, 3)
        tables.setStretchFactor(1, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(tables)
        self.splitter.addWidget(plots)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addLayout(top)
        layout.addWidget(self.recovery_bar)
        layout.addWidget(self.splitter, 1)
        layout.addWidget(self.status)

        # --- wiring
        self.save_button.clicked.connect(self._ask_save)
        self.restore_button.clicked.connect(self._ask_restore)
        self.report_button.clicked.connect(self._ask_report)
        self.copy_button.clicked.connect(self.copy_csv)
        self.accept_button.clicked.connect(self.accept_selected)
        self.size_mode.currentIndexChanged.connect(lambda _i: self._update_plot())
        self.recover_button.clicked.connect(self.restore_recovery)
        self.discard_button.clicked.connect(self.discard_recovery)
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.cellClicked.connect(self._on_cell_clicked)
        self.runner.succeeded.connect(self._on_job_done)
        self.runner.failed.connect(self._on_job_failed)
        self.runner.done.connect(self._after_job)
        self.model.changed.connect(self.refresh)
        self.session.results_changed.connect(self._on_engine_result)
        self.autosave_timer = QTimer(self)
        self.autosave_timer.setInterval(AUTOSAVE_MS)
        self.autosave_timer.timeout.connect(self.autosave)
        self.autosave_timer.start()
        self.refresh(None)
        if offer_recovery:
            QTimer.singleShot(0, self.check_recovery)

    # ------------------------------------------------------------------ layout
    def showEvent(self, event) -> None:  # noqa: N802 - Qt naming
        super().showEvent(event)
        if not self._placed:
            self._placed = True
            QTimer.singleShot(0, self.dock_below_canvas)

    def dock_below_canvas(self, height: int = 360) -> bool:
        """Move this widget's dock under the canvas (a wide table does not fit the right column
        beside the other docks at 1600x1000); the right docks keep the full height. Returns
        whether it moved."""
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        dock = self.parentWidget()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        main = dock.parentWidget() if dock is not None else None
        if not isinstance(main, QMainWindow) or dock.isFloating():
            return False
        bottom = Qt.DockWidgetArea.BottomDockWidgetArea
        main.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        main.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
        self._set_wide(True)  # laid out for the bottom's width before Qt sizes the window around it
        moved = main.dockWidgetArea(dock) != bottom
        if moved:
            main.removeDockWidget(dock)
            main.addDockWidget(bottom, dock)
            dock.show()
        if self._window_size is not None and main is self.viewer.window._qt_window and not main.isMaximized():
            size = self._window_size

            def restore() -> None:  # back to the size it had (Qt keeps it >= the docks' minimum)
                main.resize(size)
                main.resizeDocks([dock], [height], Qt.Orientation.Vertical)

            restore()
            QTimer.singleShot(100, restore)  # again once Qt has handled the layout request of the move
        else:
            main.resizeDocks([dock], [height], Qt.Orientation.Vertical)
        return moved

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        # Wide (a bottom dock): plot beside the tables; narrow (a side dock): below them.
        self._set_wide(self.width() >= 560)
        if not self._sized and self.width() >= 560:
            self._sized = True
            self.splitter.setSizes([int(self.width() * 0.66), int(self.width() * 0.34)])  # the tables get most
        super().resizeEvent(event)

    def _set_wide(self, wide: bool) -> None:
        orient = Qt.Orientation.Horizontal if wide else Qt.Orientation.Vertical
        if self.splitter.orientation() != orient:
            self.splitter.setOrientation(orient)
            total = max(self.width(), 600) if wide else max(self.height(), 400)
            self.splitter.setSizes([int(total * 0.66), int(total * 0.34)])  # the tables get most
            # beside the tables: the two plots one above the other; below them (narrow): side by side
            self.plots.setOrientation(Qt.Orientation.Vertical if wide else Qt.Orientation.Horizontal)

    @property
    def study(self) -> Study | None:
        return self.model.study

    # ------------------------------------------------------------------ table
    def refresh(self, ids=None) -> None:
        """Refill the tables and the plot from the study (measured lesions are cached per mask)."""
        from ..core.recist import recist_for_study

        study = self.study
        if study is None:
            self.table.setRowCount(0)
            self.response.setRowCount(0)
            self.summary = None
            self._update_plot()
            self.status.setText("No CT volumes in the viewer.")
            return
        rows = study.measurements()
        self.summary = None
        if any(r.timepoint == 0 for r in rows):  # RECIST needs the baseline measured
            try:
                self.summary = recist_for_study(study, rows=rows)
            except (LesionLocatorError, ValueError) as exc:
                self.status.setText(f"RECIST not evaluated: {exc}")
        by_key = {(r.lesion_id, r.timepoint): r for r in rows}
        names = study.names
        lids = study.lesion_ids
        rebuild = names != self._names or set(lids) != set(self._rows) or ids is None
        self._filling = True
        self.table.setSortingEnabled(False)
        try:
            if rebuild:
                self._names = list(names)
                headers = list(FIXED_COLUMNS) + [f"T{k} {w}" for k in range(len(names)) for w in PER_TIMEPOINT]
                self.table.clearContents()
                self.table.setColumnCount(len(headers))
                self.table.setHorizontalHeaderLabels(headers)
                for k, name in enumerate(names):
                    date = study[name].acquisition_date
                    for j in range(len(PER_TIMEPOINT)):
                        hitem = self.table.horizontalHeaderItem(len(FIXED_COLUMNS) + k * len(PER_TIMEPOINT) + j)
                        hitem.setToolTip(f"{name}" + (f" ({date})" if date else "") + ("; baseline" if k == 0 else ""))
                self.table.setRowCount(len(lids))
                self._rows = {lid: r for r, lid in enumerate(lids)}
                todo = lids
            else:
                self._rows = {int(self.table.item(r, 0).data(_ID)): r for r in range(self.table.rowCount())}
                todo = [lid for lid in lids if lid in ids] if ids else []
            auto = set(self.summary.targets) if self.summary is not None and not study.targets() else set()
            for lid in todo:
                self._fill_row(study, self._rows[lid], lid, by_key, auto)
        finally:
            self.table.setSortingEnabled(True)
            self._filling = False
        self._fill_response(study)
        self._update_plot()
        n_unver = len(study.unverified())
        self.status.setText(f"{len(lids)} lesion(s) at {len(names)} timepoint(s)"
                            + (f"; {n_unver} unverified" if n_unver else "")
                            + (f"; targets chosen by the RECIST rules: {sorted(auto)}" if auto else ""))
        self.table_updated.emit(ids)

    def _cell(self, row: int, col: int, text: str, sort=None, *, editable: bool = False, tip: str = "") -> _Item:
        item = self.table.item(row, col)
        if not isinstance(item, _Item):
            item = _Item()
            self.table.setItem(row, col, item)
        item.setText(text)
        item.setData(_SORT, sort if sort is not None else (text or None))
        flags = Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled
        if editable:
            flags |= Qt.ItemFlag.ItemIsEditable
        item.setFlags(flags)
        if tip:
            item.setToolTip(tip)
        return item

    def _fill_row(self, study: Study, row: int, lid: int, by_key, auto: set[int]) -> None:
        idc = self._cell(row, 0, str(lid), lid, tip="lesion id (its colour in the labels layers)")
        idc.setData(_ID, lid)
        paint_lesion_item(idc, lid)
        self._cell(row, 1, study.lesion_name(lid), editable=True).setData(_ID, lid)
        self._cell(row, 2, study.site(lid), editable=True, tip="double-click to pick the site").setData(_ID, lid)
        role = study.role(lid)
        shown = f"{role} (auto)" if lid in auto else role
        self._cell(row, 3, shown, editable=True,
                   tip="double-click: target / non-target / not assessed (RECIST 1.1 rules checked)").setData(_ID, lid)
        node = study.site(lid) == "lymph node"
        seen = False
        for k, name in enumerate(self._names):
            col = len(FIXED_COLUMNS) + k * len(PER_TIMEPOINT)
            m = by_key.get((lid, k))
            measured = m is not None and m.present
            seen = seen or measured  # 0 once it was there (disappeared); blank before it first appears
            zero = 0.0 if m is not None and seen else None
            vol = m.volume_ml if measured else zero
            la = m.long_axis_mm if measured else zero
            sa = m.short_axis_mm if measured else zero
            self._cell(row, col, _fmt(vol, 2), vol)
            self._cell(row, col + 1, _fmt(la), la, tip="RECIST long axis (mm)" + ("" if node else "; used for RECIST"))
            self._cell(row, col + 2, _fmt(sa), sa, tip="short axis (mm)" + ("; used for RECIST (node)" if node else ""))
            self._cell(row, col + 3, study.table_status(lid, name))

    def _fill_response(self, study: Study) -> None:
        summary = self.summary
        self.response.setRowCount(len(study.names))
        for k, name in enumerate(study.names):
            t = summary.timepoints[k] if summary is not None and k < len(summary.timepoints) else None
            date = study[name].acquisition_date or ""
            if t is None:
                vals = [f"T{k}", "", "", "", "", ""]
            elif k == 0:
                vals = [f"T{k}", _fmt(t.sum_mm), "", "", "baseline",
                        f"targets {', '.join(map(str, summary.targets)) or 'none'}"]
            else:
                nadir = t.change_vs_nadir_pct
                vals = [f"T{k}", _fmt(t.sum_mm),
                        "" if t.change_vs_baseline_pct is None else f"{t.change_vs_baseline_pct:+.1f} %",
                        "" if nadir is None else f"{nadir:+.1f} %, {t.change_vs_nadir_mm:+.1f} mm",
                        t.label, t.reason]
            for c, v in enumerate(vals):
                item = self.response.item(k, c)
                if item is None:
                    item = QTableWidgetItem()
                    self.response.setItem(k, c, item)
                item.setText(v)
                item.setToolTip(v if c == len(vals) - 1 else (f"{name} ({date})" if date else name) if c == 0 else "")

    # ------------------------------------------------------------------ plot
    def _update_plot(self) -> None:
        pg = self._pg
        self.plot.clear()
        self.sum_plot.clear()
        study = self.study
        volume = self.size_mode.currentIndex() == 1
        self.plot.setLabel("left", "volume (mL)" if volume else "long axis (mm)")
        if study is None:
            return
        rows = study.measurements()
        n = len(study.names)
        xs = np.arange(n, dtype=float)
        for lid in study.lesion_ids:
            ys = np.full(n, np.nan)
            seen = False
            for r in sorted((r for r in rows if r.lesion_id == lid), key=lambda r: r.timepoint):
                seen = seen or r.present  # not drawn before it first appears; 0 once it disappeared
                if seen:
                    ys[r.timepoint] = (r.volume_ml if volume else r.long_axis_mm) if r.present else 0.0
            if np.all(np.isnan(ys)):
                continue
            colour = tuple(int(255 * c) for c in lesion_colour(lid)[:3])
            self.plot.plot(xs, ys, pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=6,
                           symbolBrush=colour, name=f"{lid}", connect="finite")
        for plot in (self.plot, self.sum_plot):
            plot.getAxis("bottom").setTicks([[(float(k), f"T{k}") for k in range(n)]])
            plot.setXRange(-0.15, n - 0.85, padding=0)
            plot.enableAutoRange(axis="y")
        summary = self.summary
        if summary is None or not summary.targets:
            return
        sums = np.array([np.nan if t.sum_mm is None else t.sum_mm for t in summary.timepoints], dtype=float)
        self.sum_plot.plot(xs, sums, pen=pg.mkPen("w", width=3), symbol="s", symbolSize=7, name="target sum",
                           connect="finite")
        base = sums[0]
        if np.isfinite(base):
            pr = base * 0.7
            self.sum_plot.plot([xs[0], xs[-1]], [pr, pr], pen=pg.mkPen((80, 200, 120), width=1.5,
                                                                       style=Qt.PenStyle.DashLine),
                               name="-30 % (PR)")
            nadir = np.fmin.accumulate(np.where(np.isfinite(sums), sums, np.inf))
            pd = np.where(np.isfinite(nadir), np.maximum(nadir * 1.2, nadir + 5.0), np.nan)
            # the PD line of follow-up k is 20 % (and 5 mm) above the nadir before it
            pd_line = np.concatenate([[pd[0]], pd[:-1]]) if n > 1 else pd
            self.sum_plot.plot(xs, pd_line, pen=pg.mkPen((230, 80, 80), width=1.5, style=Qt.PenStyle.DashLine),
                               name="+20 % nadir (PD)", stepMode=None)

    # ------------------------------------------------------------------ edits
    def _on_item_changed(self, item) -> None:
        if self._filling:
            return
        col = item.column()
        if col not in (1, 2, 3):
            return
        lid = item.data(_ID)
        study = self.study
        if lid is None or study is None:
            return
        value = item.text().replace(" (auto)", "")
        try:
            if col == 1:
                study.set_lesion_info(int(lid), name=value)
            elif col == 2:
                study.set_lesion_info(int(lid), site=value)
            else:
                self.set_role(int(lid), value)
                return
        except LesionLocatorError as exc:
            self._refuse(str(exc))
        self.model._schedule({int(lid)})

    def set_role(self, lesion_id: int, role: str) -> bool:
        """Make a lesion target / non-target / not assessed; a refusal by the RECIST rules is shown
        as a napari notification (and in the status line) and changes nothing."""
        study = self.study
        try:  # until the reader picks a target, the rules' choice is shown as "target (auto)"
            study.set_lesion_info(int(lesion_id), role=role)
        except LesionLocatorError as exc:
            self._refuse(str(exc))
            self.model._schedule(None)
            return False
        self.model._schedule(None)  # the response depends on every target
        return True

    def _refuse(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        self.last_error = message
        self.status.setText(message)
        show_warning(message)
        self.model._schedule(None)

    def selected_lesion(self) -> int | None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if not rows:
            return None
        item = self.table.item(min(rows), 0)
        return None if item is None else int(item.data(_ID))

    def accept_selected(self) -> None:
        lid = self.selected_lesion()
        study = self.study
        if lid is None or study is None:
            self.status.setText("Select a lesion row first.")
            return
        done = [name for l2, name in study.unverified() if l2 == lid]
        for name in done:
            self.model.set_review(lid, name, "accepted")
        self.status.setText(f"Lesion {lid} accepted at {', '.join(done)}." if done
                            else f"Lesion {lid} has nothing unverified.")
        self.model._schedule({lid})

    def copy_csv(self) -> str:
        """Copy :meth:`Study.review_csv` to the clipboard; returns the text."""
        study = self.study
        text = study.review_csv() if study is not None else ""
        QApplication.clipboard().setText(text)
        self.status.setText(f"Copied {max(0, text.count(chr(10)) - 1)} row(s) as CSV.")
        return text

    # ------------------------------------------------------------------ centring
    def _on_cell_clicked(self, row: int, col: int) -> None:
        item = self.table.item(row, 0)
        if item is not None:
            self.centre_on(int(item.data(_ID)))

    def lesion_centroid(self, lesion_id: int, name: str):
        mask = self.study.mask(lesion_id, name)
        if mask is None or mask.is_empty:
            return None
        return mask.geometry.index_to_world(mask.centroid_index())

    def centre_on(self, lesion_id: int) -> str | None:
        """Centre the view on a lesion: at the scan in view when it is there, else at the first
        timepoint holding it (made the active one). With the review grid open, every timepoint."""
        from .review_widget import ReviewWidget

        study = self.study
        if study is None:
            return None
        for rw in self.viewer.window._qt_window.findChildren(ReviewWidget):
            if rw.reviewing:
                rw.select_lesion(lesion_id)
                return None
        active = self.session.active_image()
        order = list(study.names)
        if active is not None and active.name in order:
            order.remove(active.name)
            order.insert(0, active.name)
        for name in order:
            world = self.lesion_centroid(lesion_id, name)
            if world is None:
                continue
            layer = self.model.image_layer(name)
            if layer is not self.session.active_image():
                self.session.set_active(layer)
            centre_view(self.viewer, world)
            self.status.setText(f"Lesion {lesion_id} at {name}.")
            return name
        self.status.setText(f"Lesion {lesion_id} has no voxels at any timepoint.")
        return None

    # ------------------------------------------------------------------ session
    def _ask_save(self) -> None:
        start = str(self.study.session_folder) if self.study is not None and self.study.session_folder else ""
        folder = QFileDialog.getExistingDirectory(self, "Save the review to a session folder", start)
        if folder:
            self.save_session(folder)

    def _ask_restore(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Restore a saved review (session folder)")
        if not folder:
            return
        if self.session.image_layers():
            from qtpy.QtWidgets import QMessageBox

            answer = QMessageBox.question(
                self, "Restore session", "The scans and lesions shown now are closed and replaced by the saved "
                "review (save them first if you need them). Continue?")
            if answer != QMessageBox.StandardButton.Yes:
                return
        self.restore_session(folder)

    def _start(self, kind: str, payload, target=None) -> bool:
        if self.runner.running:
            if kind == "autosave":
                self._autosave_pending = True
            else:
                self.status.setText("A save or restore is still running.")
            return False
        self._busy(True)
        self._job_kind = kind
        self.runner.start(lambda token, cb: _session_job(kind, payload, target), desc=kind, total=1)
        return True

    def save_session(self, folder) -> bool:
        """Save the review to ``folder`` in a worker (the GUI only copies the state, ~1 ms)."""
        study = self.study
        if study is None:
            self.status.setText("Nothing to save: no CT volumes in the viewer.")
            return False
        self.model.flush()
        self.status.setText(f"Saving to {folder}...")
        return self._start("save", study.snapshot_state(), Path(folder))

    def autosave(self) -> bool:
        """Autosave into the recovery folder (worker) when the study changed since the last one."""
        study = self.study
        if study is None or study.revision == self._autosaved_revision or not study.lesion_ids:
            return False
        self._autosaved_revision = study.revision
        return self._start("autosave", study.snapshot_state(), self.recovery_root)

    def _on_engine_result(self) -> None:
        QTimer.singleShot(200, self.autosave)  # after the model took the result in

    def restore_session(self, folder, *, relocate=None, search=(), repoint: bool = False) -> bool:
        """Restore a saved review (read in a worker; its scans replace the ones in the viewer).

        ``relocate`` (timepoint -> new image path) and ``search`` (folders) find images that moved;
        ``repoint`` also writes their new locations into the session. A session whose images moved or
        changed opens the relocate dialog (:attr:`relocate_dialog`)."""
        self.status.setText(f"Restoring {folder}...")
        self._restoring = Path(folder)
        return self._start("restore", Path(folder), (dict(relocate or {}), [str(x) for x in search], bool(repoint)))

    def _ask_report(self) -> None:
        study = self.study
        if study is None:
            self.status.setText("Nothing to report: no CT volumes in the viewer.")
            return
        start = str(Path(study.session_folder) / "report.html") if study.session_folder else "report.html"
        path, _ = QFileDialog.getSaveFileName(self, "Write the response report", start, "HTML page (*.html)")
        if path:
            self.write_report(path)

    def write_report(self, path) -> bool:
        """Write the response report (HTML) of the study as it is now, in a worker."""
        study = self.study
        if study is None:
            self.status.setText("Nothing to report: no CT volumes in the viewer.")
            return False
        self.model.flush()
        state = study.snapshot_state()
        state["session_folder"] = str(study.session_folder) if study.session_folder else None
        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            path = path.with_suffix(".html") if path.suffix else path / "report.html"
        self.status.setText(f"Writing the report to {path}...")
        return self._start("report", state, path)

    def _busy(self, on: bool) -> None:
        for b in (self.save_button, self.restore_button, self.recover_button, self.report_button):
            b.setEnabled(not on)

    def _on_job_done(self, result) -> None:
        kind, out = result
        if kind == "save":
            if self.study is not None:
                self.study.session_folder = out
            self.status.setText(f"Saved to {out}.")
        elif kind == "autosave":
            self.status.setText(f"Autosaved ({Path(out).name}).")
        elif kind == "report":
            self.last_report = Path(out)
            self.status.setText(f"Report written to {out}.")
        else:
            self._show_restored(out)

    def _on_job_failed(self, exc) -> None:
        from ..io.session import SessionImageError

        self.last_error = str(exc)
        self.status.setText(f"Session: {exc}")
        folder = self._restoring if getattr(self, "_job_kind", None) == "restore" else None
        if isinstance(exc, SessionImageError) and folder is not None:
            self.status.setText(f"Session: {len(exc.problems)} image(s) moved or changed; point to where they are now.")
            self.ask_relocate(folder, exc)

    def ask_relocate(self, folder, exc=None):
        """Open the relocate dialog for a session whose images moved (non-blocking; returns it)."""
        from ._relocate import RelocateDialog

        dialog = self.relocate_dialog = RelocateDialog(Path(folder), exc, parent=self)
        dialog.accepted.connect(lambda: self.restore_session(folder, relocate=dialog.relocate,
                                                             search=dialog.search, repoint=dialog.repoint))
        dialog.open()
        return dialog

    def _after_job(self) -> None:
        self._busy(False)
        if self._autosave_pending:
            self._autosave_pending = False
            QTimer.singleShot(0, self.autosave)

    def _show_restored(self, study: Study) -> None:
        """Put a restored study into the viewer: its scans and lesion layers replace the current ones."""
        session, viewer = self.session, self.viewer
        self.model._adopting = True
        try:
            for tp in session.image_layers():
                for helper in session.layers_of(tp):
                    viewer.layers.remove(helper)
                viewer.layers.remove(tp)
            layers = {}
            first = None
            for k, tp in enumerate(study.timepoints):
                data, kwargs, _ = image_layer_data(tp.image, name=tp.name)
                kwargs["visible"] = k == 0
                img = viewer.add_image(data, **kwargs)
                first = first or img
                lab = session.labels_layer_for(img)
                if tp.labels is not None:  # the layer gets its own array; the study keeps its copy
                    lab.data = tp.labels.array.copy()
                layers[tp.name] = (img, lab)
            session.order = list(study.names)
            session.note_ids(range(1, study.id_counter))
        finally:
            self.model._adopting = False
        self.model.adopt(study, layers)
        self.model.push_reviews()  # the verification panel reads the reviews from the session
        if first is not None:
            session.set_active(first)
        self._autosaved_revision = study.revision
        self.last_restored = study
        self.status.setText(f"Restored {len(study.names)} timepoint(s), {len(study.lesion_ids)} lesion(s).")

    # ------------------------------------------------------------------ recovery
    def check_recovery(self):
        """Show the restore offer when an autosave of another session exists (returns it or None)."""
        from ..io.session import latest_recovery

        if self.runner.running:  # a restore (of that recovery) is under way
            return None
        exclude = [self.study.session_id] if self.study is not None else []
        try:
            rec = latest_recovery(self.recovery_root, exclude=exclude)
        except OSError:
            rec = None
        self.recovery = rec
        if rec is not None:
            self.recovery_label.setText(f"An autosaved review was found ({rec.describe()}). Restore it?")
        self.recovery_bar.setVisible(rec is not None)
        return rec

    def restore_recovery(self) -> bool:
        rec = self.recovery
        if rec is None:
            return False
        self.recovery_bar.setVisible(False)
        return self.restore_session(rec.folder)

    def discard_recovery(self) -> None:
        from ..io.session import discard_recovery

        if self.recovery is not None:
            discard_recovery(self.recovery.session_id, self.recovery_root)
        self.recovery = None
        self.recovery_bar.setVisible(False)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.autosave_timer.stop()
        super().closeEvent(event)

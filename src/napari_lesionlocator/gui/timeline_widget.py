"""TimelineWidget ("Timeline"): the study's timepoints, which lesion exists when, and Propagate.

Timepoints are the viewer's 3D image layers ordered by acquisition date (layer metadata); drag
rows to reorder. The presence table has one row per lesion id and one column per timepoint.
"Propagate" tracks all (or the selected) lesions from the chosen timepoint to every later one,
autoregressively (``api.iter_track_series``: the mask found at follow-up k prompts k+1), and writes
them into each follow-up's Labels layer with the same ids and colours (one undo step per layer).
The Labels layers are the state: manual corrections at the start timepoint are what is propagated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .. import api
from ..core.errors import LesionLocatorError
from ._gc import freeze_long_lived_objects
from ._layers import apply_lesion_labels, label_map_from_layer, lesion_colour, lesion_ids_in
from ._layers import geometry_from_layer as labels_layer_geometry
from ._panels import ProgressRow, paint_lesion_item, show_end_state
from ._process import helper_available, run_in_helper
from ._session import preload_engine_modules, session_for
from ._workers import JobRunner


def _same_mask(a, b) -> bool:
    """Two lesion masks on one grid hold exactly the same voxels."""
    if a.is_empty or b.is_empty:
        return a.is_empty and b.is_empty
    return a.voxels == b.voxels and a.overlap_voxels(b) == a.voxels

if TYPE_CHECKING:
    import napari

__all__ = ["TimelineWidget"]

# Delay between two GUI-thread steps of a propagation (ms). Not 0: zero-timers can run back to back
# in one pass of the event loop, so input, paint and other timers would wait for the whole chain.
_STEP_MS = 5


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning,
     "error": notifications.show_error}[kind](message)


_DONE = object()

# What a cell of the lesion table shows for each state, and its tooltip.
_STATE_TEXT = {
    "present": ("\u25cf", "present"),
    "check": ("\u25cf?", "present; check it: the engine doubts this mask"),
    "lost": ("\u2715", "lost: tracked to this timepoint and not found (disappeared)"),
    "empty": ("\u2205", "prompted here, nothing found"),
    "not tracked": ("\u00b7", "not tracked yet: propagate to look for it here"),
}

# How a reader's verdict (Verify panel) shows in a cell, over the state above.
_REVIEW_TEXT = {
    "unverified": ("?", "unverified: tracked here, not checked by the reader yet"),
    "accepted": ("\u2713", "accepted by the reader"),
    "disappeared": ("\u2715\u2713", "disappeared (the reader confirmed it is gone)"),
    "merged": ("\u2192", "merged into another lesion"),
    "new": ("+", "new lesion at this follow-up (confirmed by the reader)"),
}


class TimelineWidget(QWidget):
    """Timepoints, lesion presence per timepoint, and propagation of lesions to later timepoints."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session_for(napari_viewer)
        self.viewer = napari_viewer = self.session.viewer  # the real viewer: its layers compare with ``is``
        self.runner = JobRunner(self)
        freeze_long_lived_objects(napari_viewer)  # short full GCs: see _gc
        preload_engine_modules()  # engine imports off the first run: see _session
        self._job = None
        self._to_write: list = []
        self._to_create: Iterator[None] = iter(())  # steps making the follow-ups' missing Labels layers
        self._pending_start = None  # (job, total) until the missing Labels layers exist
        self._lost_notes: list[str] = []
        self._closed_during_run: list[str] = []
        self._undo_entry: dict = {"layers": [], "history": {}}
        self._engine_notes: list[str] = []
        self._written_ids: list[int] = []
        self._watched: set[int] = set()
        self._table_refresh_pending = False
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(0)
        self._refresh_timer.timeout.connect(self.refresh)

        self.timepoint_list = QListWidget()
        self.timepoint_list.setFlow(QListView.Flow.LeftToRight)  # one row: the timepoints read left to right
        self.timepoint_list.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        self.timepoint_list.setToolTip("Timepoints ordered by acquisition date; drag to reorder; "
                                       "click one to look at it.")
        self.timepoint_list.setFixedHeight(34)
        self.table = QTableWidget()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setMinimumHeight(24 + 6 * 22)  # header + at least 6 lesion rows
        self.table.setToolTip("\u25cf present, \u25cf? check (the engine doubts the mask), \u2715 lost (tracked "
                              "there, not found: disappeared), \u2205 nothing found from the prompt, "
                              "\u00b7 not tracked yet. Click a cell to look at that lesion there.")
        self.source_combo = QComboBox()
        self.source_combo.setToolTip("Propagate from this timepoint to every later one.")
        self.engine_label = QLabel("")
        self.engine_label.setToolTip("The engine is chosen once, in the Lesion prompts dock.")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Re-read the timepoints and lesions (this happens on its own after changes).")
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.setToolTip("Track all lesions (or the selected rows) from the chosen timepoint "
                                         "to every later one.")
        self.progress = ProgressRow()

        layout = QVBoxLayout(self)
        layout.setSpacing(4)
        layout.addWidget(self.timepoint_list)  # its tooltip: drag to reorder, click to view
        # The presence table and the Verify panel share one place (all docks fit 1600x1000).
        from ._verify_panel import VerifyPanel

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.table, "Lesions over time")
        self.verify = VerifyPanel(self)
        self.tabs.addTab(self.verify, "Verify")
        layout.addWidget(self.tabs, 1)
        row = QHBoxLayout()
        row.addWidget(QLabel("From"))
        row.addWidget(self.source_combo, 1)
        row.addWidget(self.propagate_button)
        row.addWidget(self.refresh_button)
        layout.addLayout(row)
        layout.addWidget(self.engine_label)
        panel = self.session.shared_engine_panel()
        if panel.parent() is None:  # the Lesion prompts dock is not open: the engine block shows here
            layout.addWidget(panel)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress.status)
        self.verify.refresh()

        self.refresh_button.clicked.connect(self.refresh)
        self.propagate_button.clicked.connect(lambda: self.propagate())
        self.progress.cancel.clicked.connect(self.cancel)
        self.timepoint_list.model().rowsMoved.connect(self._on_reordered)
        self.timepoint_list.itemClicked.connect(self._on_timepoint_clicked)
        self.table.cellClicked.connect(self._on_cell_clicked)
        self.runner.progressed.connect(self.progress.show_event)
        self.runner.detail.connect(self.progress.show_detail)
        self.runner.succeeded.connect(self._apply_result)
        self.runner.done.connect(self._on_done)
        self.session.results_changed.connect(self._schedule_table_refresh)
        self.session.active_changed.connect(self._show_active)
        # The engine label follows the one engine choice (made in the Lesion prompts dock).
        self._engine_combo = panel.engine
        self._engine_combo.currentIndexChanged.connect(self._show_engine)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._on_layers_changed)
        self.refresh()

    @property
    def engine_panel(self):
        """The study's one engine block (in the Lesion prompts dock, or here when that dock is not open)."""
        return self.session.shared_engine_panel()

    def _on_timepoint_clicked(self, item) -> None:
        tp = next((t for t in self.timepoints() if t.name == item.text()), None)
        if tp is not None:
            self.session.set_active(tp)

    def _on_cell_clicked(self, row: int, col: int) -> None:
        tps = self.timepoints()
        header = self.table.verticalHeaderItem(row)
        if header is None or not 0 <= col < len(tps):
            return
        lid = int(header.data(Qt.ItemDataRole.UserRole))
        self.session.set_active(tps[col])
        layer = self.session.labels_layer_for(tps[col], create=False)
        if layer is not None and lid in lesion_ids_in(layer):
            import numpy as np

            from ._view import centre_view

            layer.selected_label = lid
            idx = np.argwhere(np.asarray(layer.data) == lid).mean(axis=0)
            centre_view(self.viewer, np.asarray(layer.data_to_world(idx), dtype=float))

    def _show_active(self, *_) -> None:
        active = self.session.active_image()
        for i in range(self.timepoint_list.count()):
            item = self.timepoint_list.item(i)
            font = item.font()
            font.setBold(active is not None and item.text() == active.name)
            item.setFont(font)

    # ------------------------------------------------------------------ model
    @property
    def _order(self) -> list[str]:
        return self.session.order

    @_order.setter
    def _order(self, value: list[str]) -> None:
        self.session.order = list(value)

    def timepoints(self) -> list:
        """Image layers in timeline order (acquisition date, or the user's drag order)."""
        return self.session.timepoints(self._order or None)

    def presence(self) -> dict[int, list[bool]]:
        """lesion id -> present at each timepoint (in timeline order)."""
        tps = self.timepoints()
        per_tp = []
        for tp in tps:
            layer = self.session.labels_layer_for(tp, create=False)
            per_tp.append(set(lesion_ids_in(layer)) if layer is not None else set())
        ids = sorted(set().union(*per_tp)) if per_tp else []
        return {lid: [lid in s for s in per_tp] for lid in ids}

    # ------------------------------------------------------------------ view
    def _on_layers_changed(self, event=None) -> None:
        # Deferred and coalesced: layers are often added several at a time (a study, the follow-up
        # Labels layers), and each refresh scans every lesion layer. The timer is the widget's
        # child, so it never fires after the widget is gone.
        self._refresh_timer.start()

    def _watch_lesion_layers(self) -> None:
        """Refresh the table whenever a lesion layer is painted or written (model results included)."""
        for layer in self.session.lesion_layers():
            if id(layer) not in self._watched:
                self._watched.add(id(layer))
                layer.events.paint.connect(self._schedule_table_refresh)

    def _on_reordered(self, *_) -> None:
        self._order = [self.timepoint_list.item(i).text() for i in range(self.timepoint_list.count())]
        self.refresh()

    def refresh(self, *_) -> None:
        tps = self.timepoints()
        self._order = [tp.name for tp in tps]
        self.timepoint_list.blockSignals(True)
        self.timepoint_list.clear()
        for tp in tps:
            date = tp.metadata.get("acquisition_date") if isinstance(tp.metadata, dict) else None
            item = QListWidgetItem(tp.name)
            item.setToolTip(f"acquired {date}" if date else "no acquisition date")
            self.timepoint_list.addItem(item)
        self.timepoint_list.blockSignals(False)
        current = self.source_combo.currentText()
        self.source_combo.blockSignals(True)
        self.source_combo.clear()
        self.source_combo.addItems([tp.name for tp in tps[:-1]] or [tp.name for tp in tps])
        if current:
            self.source_combo.setCurrentText(current)
        self.source_combo.blockSignals(False)
        self._refresh_table()

    def _schedule_table_refresh(self, *_) -> None:
        """Coalesce bursts of paint events (one per layer written) into one table refresh."""
        if not self._table_refresh_pending:
            self._table_refresh_pending = True
            QTimer.singleShot(0, self._refresh_table)

    def states(self) -> dict[int, list[str]]:
        """lesion id -> its state at each timepoint (see :meth:`StudySession.lesion_state`)."""
        tps = self.timepoints()
        presence = self.presence()
        ids = sorted(set(presence) | self.session.known_lesion_ids())
        return {lid: [self.session.lesion_state(tp, lid, presence.get(lid, [False] * len(tps))[t])
                      for t, tp in enumerate(tps)] for lid in ids}

    def _refresh_table(self, *_) -> None:
        self._table_refresh_pending = False
        self._watch_lesion_layers()
        tps = self.timepoints()
        states = self.states()
        selected = set(self.selected_lesions())
        self.table.clear()
        self.table.setColumnCount(len(tps))
        self.table.setRowCount(len(states))
        self.table.setHorizontalHeaderLabels([tp.name for tp in tps])
        self.table.setVerticalHeaderLabels([f"lesion {lid}" for lid in states])
        for row, (lid, flags) in enumerate(states.items()):
            colour = QColor.fromRgbF(*[float(c) for c in lesion_colour(lid)[:3]])
            header = self.table.verticalHeaderItem(row)
            header.setData(Qt.ItemDataRole.UserRole, lid)
            paint_lesion_item(header, lid)
            for col, state in enumerate(flags):
                text, tip = _STATE_TEXT[state]
                review = self.session.review(tps[col], lid)
                if review is not None:
                    mark, why = _REVIEW_TEXT[review[0]]
                    if review[0] in ("disappeared", "merged"):
                        text = mark + (str(review[1]) if review[1] is not None else "")
                    elif state in ("present", "check"):  # not found there: the symbol stays, the tip says it
                        text = "\u25cf" + mark
                    tip = why + (f" {review[1]}" if review[1] is not None else "") + "\n" + tip
                res = self.session.result(tps[col], lid)
                if res is not None and res.messages:
                    tip += "\n" + "\n".join(res.messages[-3:])
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                item.setToolTip(tip)
                item.setData(Qt.ItemDataRole.UserRole, state)
                if state in ("present", "check"):
                    item.setForeground(colour)
                self.table.setItem(row, col, item)
            if lid in selected:
                self.table.selectRow(row)
        overlaps = self.session.overlaps(tps)
        if overlaps and not self.busy:
            self.progress.status.setText("Overlapping lesions: " + "; ".join(
                f"{name}: {a}/{b} ({n} voxels)" for name, a, b, n in overlaps))
        self._show_engine()
        self._show_active()

    def _show_engine(self, *_) -> None:
        """The engine label: the current engine choice (hidden when the engine block is shown here)."""
        shown_here = self.engine_panel.parent() is self
        self.engine_label.setVisible(not shown_here)
        self.engine_label.setText(f"Engine: {self.session.engine_label()} (chosen in Lesion prompts)")

    def selected_lesions(self) -> list[int]:
        rows = sorted({index.row() for index in self.table.selectedIndexes()})
        out = []
        for row in rows:
            header = self.table.verticalHeaderItem(row)
            if header is not None and header.data(Qt.ItemDataRole.UserRole) is not None:
                out.append(int(header.data(Qt.ItemDataRole.UserRole)))
        return out

    # ------------------------------------------------------------------ propagation
    def propagate(self, source: str | None = None, lesion_ids: list[int] | None = None) -> bool:
        """Track lesions from ``source`` (default: the chosen timepoint) to all later timepoints.

        ``lesion_ids`` defaults to the selected rows, or every lesion at the source. Returns
        whether a run started.
        """
        if self.busy or (hasattr(self, "verify") and self.verify.busy):
            _notify("info", "A propagation or segmentation is already running; cancel it or wait.")
            return False
        tps = self.timepoints()
        names = [tp.name for tp in tps]
        source = source or self.source_combo.currentText()
        if source not in names or names.index(source) == len(names) - 1:
            _notify("warning", "Choose a timepoint that has later timepoints to propagate to.")
            return False
        k = names.index(source)
        src_layer = self.session.labels_layer_for(tps[k], create=False)
        if src_layer is None or not lesion_ids_in(src_layer):
            _notify("warning", f"{source} has no lesions yet: segment some with the Lesion prompts widget first.")
            return False
        present = lesion_ids_in(src_layer)
        wanted = lesion_ids if lesion_ids is not None else (self.selected_lesions() or present)
        ids = [lid for lid in wanted if lid in present]
        if not ids:
            _notify("warning", f"None of the lesions {wanted} exists at {source}.")
            return False
        try:
            engine_name, settings = self.session.engine_choice()
            baseline = self.session.image(tps[k])
            # each lesion's own whole mask (two lesions' masks may overlap), or the reader's edit of it
            baseline_labels = self.session.own_masks(tps[k], label_map_from_layer(src_layer, baseline.geometry), ids)
            followups = [self.session.image(tp) for tp in tps[k + 1:]]
        except LesionLocatorError as exc:
            _notify("error", str(exc))
            return False
        # Missing follow-up Labels layers are made before the worker starts (so no worker competes
        # with them for the GIL), in small steps, one per event-loop turn: napari needs ~100-200 ms
        # (more under load) to build a layer and its visuals, and making them all inside this
        # handler froze the GUI for their sum (~0.5-0.9 s for two follow-ups).
        self._to_create = self._layer_steps(tps[k + 1:])
        self._job = (tps[k + 1:], ids)
        self._undo_entry = {"what": f"propagation of lesion(s) {ids} from {source}", "layers": [], "history": {}}
        self.progress.set_running(True)
        self.propagate_button.setEnabled(False)
        self.progress.status.setText(f"Tracking {len(ids)} lesion(s) from {source} to {len(followups)} timepoint(s)...")
        session = self.session

        use_helper = engine_name == "classical" and helper_available()

        def job(token, callback):
            # Worker thread. The classical engine runs in the helper process (its SimpleITK calls
            # hold the GIL, which froze the GUI for up to 1.7 s); other engines here, created once
            # (imports, weights) off the GUI thread.
            if use_helper:
                return (yield from run_in_helper("track", [baseline, *followups],
                                                 {"baseline_labels": baseline_labels, "lesion_ids": ids},
                                                 token, callback))
            engine = session.engine(engine_name, settings)
            return (yield from api.iter_track_series(engine, baseline, baseline_labels, followups, lesion_ids=ids,
                                                     cancel=token, on_progress=callback))

        self._pending_start = (job, len(followups) + 1)
        QTimer.singleShot(_STEP_MS, self._prepare_next)
        return True

    def _prepare_next(self) -> None:
        """GUI thread: one small step of making the missing Labels layers; after the last, start the job."""
        if self._pending_start is None:  # cancelled before the worker started
            return
        try:
            step = next(self._to_create, _DONE)
        except Exception as exc:  # noqa: BLE001 - any failure must leave the widget usable
            self._abort_preparation(f"Failed: could not create a Labels layer: {exc}")
            _notify("error", f"Propagation not started: could not create a Labels layer: {exc}")
            return
        if step is not _DONE:
            QTimer.singleShot(_STEP_MS, self._prepare_next)
            return
        job, total = self._pending_start
        self._pending_start = None
        self.runner.start(job, desc="Propagating lesions", total=total)

    def _layer_steps(self, images: list) -> Iterator[None]:
        """Make the missing Labels layers of ``images``, yielding between steps of ~10-100 ms.

        Per layer: build it; add it to the viewer (napari then builds its visuals and controls,
        ~100 ms, the longest step). A timepoint closed meanwhile gets no layer.
        """
        def missing(tp) -> bool:
            return tp in self.viewer.layers and self.session.labels_layer_for(tp, create=False) is None

        for tp in images:
            if not missing(tp):
                continue
            layer = self.session.new_labels_layer(tp)
            yield
            if not missing(tp):
                continue
            self.session.add_layer_quietly(layer)
            yield

    def cancel(self) -> None:
        """Cancel the propagation: before the worker started (nothing runs) or the running job."""
        if self._pending_start is not None:
            self._abort_preparation("Cancelled: nothing was changed.")
            return
        self.runner.cancel()

    def _abort_preparation(self, message: str) -> None:
        """End a propagation whose worker never started (cancelled or failed while making layers)."""
        self._pending_start = None
        self._to_create = iter(())
        self.progress.set_running(False)
        self.progress.status.setText(message)
        self.propagate_button.setEnabled(True)

    @property
    def busy(self) -> bool:
        """A propagation is preparing its Labels layers, running, or writing its results."""
        return self.runner.running or self._pending_start is not None or bool(self._to_write)

    def _apply_result(self, series) -> None:
        """GUI thread: write each follow-up's tracked masks into its Labels layer (one undo step each).

        One layer per event-loop turn, so the GUI repaints and answers in between.
        """
        followup_layers, ids = self._job
        self._to_write = list(zip(followup_layers, series.results, strict=True))
        self._lost_notes = []
        self._engine_notes = []
        self._closed_during_run = []
        self._written_ids = ids
        QTimer.singleShot(_STEP_MS, self._write_next)

    def _write_next(self) -> None:
        if not self._to_write:
            return
        tp, result = self._to_write.pop(0)
        if tp in self.viewer.layers:  # a timepoint closed during the run gets nothing
            labels_layer = self.session.labels_layer_for(tp)
            lesions = dict(result.lesions) if result.lesions else {}
            for lid in self._written_ids:  # every lesion sent was looked for here (or lost before)
                if lid not in lesions:
                    from ..core.results import LesionMask, LesionResult

                    lesions[lid] = LesionResult(lid, LesionMask.empty(labels_layer_geometry(labels_layer)), "lost")
            # A verdict stands where re-tracking gave the very mask the reader judged; changed ones
            # are unverified again (and a hidden disappeared/merged lesion stays hidden).
            kept = self._verdicts_kept(tp, labels_layer, lesions)
            hidden = [lid for lid, (state, _) in kept.items() if state in ("disappeared", "merged")]
            write = [lid for lid in self._written_ids if lid not in hidden]
            before = self.session.history_length(labels_layer)
            if write and apply_lesion_labels(labels_layer, result.labels.array, write):
                self._undo_entry["layers"].append(labels_layer)
                self._undo_entry["history"][id(labels_layer)] = before + 1
            self.session.record_results(tp, {lid: r for lid, r in lesions.items() if lid in self._written_ids},
                                        tracked=True)
            for lid, (state, into) in kept.items():
                self.session.set_review(tp, lid, state, merged_into=into)
            if getattr(result, "new_candidates", None) is not None:
                self.session.set_candidates(tp, result.new_candidates)
        else:
            self._closed_during_run.append(tp.name)
        if result.lost_ids:
            self._lost_notes.append(f"{tp.name}: lesion(s) {sorted(result.lost_ids)} not found")
        # The engine's reasons (why a lesion was lost, what it skipped) are notified, not dropped.
        self._engine_notes.extend(f"{tp.name}: {m}" for m in dict.fromkeys(result.messages))
        if self._to_write:
            QTimer.singleShot(_STEP_MS, self._write_next)
            return
        for note in self._lost_notes + self._engine_notes:
            _notify("info", note)
        n_layers = len(self._job[0]) - len(self._closed_during_run)
        if self._undo_entry["layers"]:
            self.session.push_undo(self._undo_entry)
        self.progress.finish()
        self.progress.status.setText(
            f"Propagated {len(self._written_ids)} lesion(s) to {n_layers} timepoint(s)."
            + (f" {', '.join(self._closed_during_run)} closed during the run: nothing written there."
               if self._closed_during_run else "")
            + (" " + "; ".join(self._lost_notes) if self._lost_notes else "")
        )
        self.propagate_button.setEnabled(True)
        # The writes' paint events already scheduled a table refresh; coalesce with it (one scan
        # of every lesion layer, in its own event-loop turn) instead of refreshing again here.
        self._schedule_table_refresh()

    def _verdicts_kept(self, tp, labels_layer, lesions) -> dict[int, tuple[str, int | None]]:
        """The reader's verdicts at ``tp`` on lesions whose new tracked mask equals the one judged
        (the engine's last mask there, or the layer's voxels once the reader edited it)."""
        out = {}
        session = self.session
        for lid in self._written_ids:
            review = session.review(tp, lid)
            new = lesions.get(lid)
            if review is None or review[0] == "unverified" or new is None:
                continue
            old = session.result(tp, lid)
            hidden = review[0] in ("disappeared", "merged")
            if old is None or (session.edited(tp, lid) and not hidden):
                old_mask = np.asarray(labels_layer.data) == int(lid)
                same = np.array_equal(old_mask, new.mask.to_full())
            else:
                same = _same_mask(old.mask, new.mask)
            if same:
                out[int(lid)] = review
        return out

    def _on_done(self) -> None:
        self.progress.set_running(False)
        show_end_state(self.runner, self.progress)
        self.propagate_button.setEnabled(not self._to_write)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt naming
        self.cancel()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.disconnect(self._on_layers_changed)
        # the engine block outlives this dock (it belongs to the viewer's session)
        with contextlib.suppress(RuntimeError, TypeError):
            self._engine_combo.currentIndexChanged.disconnect(self._show_engine)
        super().closeEvent(event)


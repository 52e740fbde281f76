"""VerifyPanel (in the Timeline dock): the reader's checkpoint on tracked lesions and new-lesion candidates.

After a propagation every tracked lesion at every follow-up is *unverified* (the session's review
state). For the follow-up in view the panel

* shows each tracked lesion's proposed position (the centroid of its tracked mask) as a point in a
  ``"<scan> proposed"`` Points layer, and lists the lesions with their state;
* lets the reader **Accept** a lesion, mark it **Disappeared** (its voxels are erased there, one
  undo step) or **Merged** into another lesion, or **move its point** (select the Points layer and
  drag the point): the lesion is re-segmented from the moved point at that follow-up with the same
  id (accepted: the reader placed it);
* **Re-propagate from here** re-tracks only the later timepoints from this follow-up (the
  Timeline's own propagation worker), whose lesions become unverified again;
* lists the engine's **new-lesion candidates** there (points in a ``"<scan> candidates"`` layer):
  **Accept** segments the candidate's box as a new lesion with the next never-used id (state
  "new"), **Dismiss** drops it.

Segmentations run in a worker (the classical engine in the helper process), one at a time, never
while a propagation runs. Thread: GUI thread.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import api
from ..core.errors import LesionLocatorError
from ..core.prompts import BoxPrompt, PointPrompt
from ._layers import META_KEY, apply_lesion_labels, layer_role, lesion_colour, lesion_ids_in, remove_lesions
from ._process import helper_available, run_in_helper
from ._workers import JobRunner

if TYPE_CHECKING:
    from .timeline_widget import TimelineWidget

__all__ = ["VerifyPanel"]


@contextlib.contextmanager
def _nothing():
    yield

_POINT_SIZE_MM = 7.0


def _swatch(lesion_id: int):
    from qtpy.QtGui import QColor, QIcon, QPixmap

    pix = QPixmap(12, 12)
    pix.fill(QColor.fromRgbF(*[float(c) for c in lesion_colour(lesion_id)[:3]]))
    return QIcon(pix)


class VerifyPanel(QWidget):
    """Verify tracked lesions and new-lesion candidates at the follow-up in view (see the module docstring)."""

    def __init__(self, timeline: TimelineWidget) -> None:
        super().__init__()
        self.timeline = timeline
        self.session = timeline.session
        self.viewer = timeline.viewer
        self.runner = JobRunner(self)
        self._job = None
        self._setting = False  # True while the panel itself sets a Points layer's data
        self._positions: dict[str, list[tuple[int, np.ndarray]]] = {}  # image uid -> (lesion id, world point)
        self._connected: set[int] = set()
        self._refresh_timer = QTimer(self)  # a child: never fires after the panel is gone
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(0)
        self._refresh_timer.timeout.connect(self.refresh)
        self._move_timer = QTimer(self)
        self._move_timer.setSingleShot(True)
        self._move_timer.setInterval(250)  # a drag sends many moves: act once it has ended
        self._move_timer.timeout.connect(self._check_moved)
        self._moved_layer = None
        self._shown = None  # the follow-up the lists show

        self.title = QLabel("")
        self.title.setToolTip("Tracked lesions (left) and the engine's new-lesion candidates (right) at the "
                              "follow-up in view.")
        self.lesion_list = QListWidget()
        self.lesion_list.setMaximumHeight(62)
        self.lesion_list.setToolTip("Tracked lesions at this follow-up. Drag a lesion's point (layer "
                                    "'... proposed', select mode) to re-segment it from there.")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("The tracked mask of the selected lesion is right here.")
        self.gone_button = QPushButton("Disappeared")
        self.gone_button.setToolTip("The lesion is gone at this follow-up (its tracked voxels are erased here).")
        self.merge_combo = QComboBox()
        self.merge_combo.setToolTip("The lesion the selected one merged into.")
        self.merge_button = QPushButton("Merged into")
        self.merge_button.setToolTip("The selected lesion merged into the lesion chosen beside (it counts 0 mm).")
        self.repropagate_button = QPushButton("Re-propagate from here")
        self.repropagate_button.setMinimumWidth(10)
        self.repropagate_button.setToolTip("Track this follow-up's lesions again to the later timepoints only "
                                           "(after a correction here).")
        self.candidate_list = QListWidget()
        self.candidate_list.setMaximumHeight(62)
        self.candidate_list.setToolTip("New-lesion candidates the engine proposes at this follow-up (best first).")
        self.accept_candidate_button = QPushButton("Accept as new")
        self.accept_candidate_button.setToolTip("Segment the selected candidate's box as a new lesion "
                                                "(the next id never used in this study, state 'new').")
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.setToolTip("The selected candidate is not a lesion (it is not offered again).")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setSpacing(2)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.title)
        grid = QGridLayout()
        grid.setSpacing(2)
        grid.addWidget(self.lesion_list, 0, 0)
        grid.addWidget(self.candidate_list, 0, 1)
        row = QHBoxLayout()
        for w in (self.accept_button, self.gone_button):
            row.addWidget(w)
        grid.addLayout(row, 1, 0)
        row = QHBoxLayout()
        row.addWidget(self.accept_candidate_button)
        row.addWidget(self.dismiss_button)
        grid.addLayout(row, 1, 1)
        row = QHBoxLayout()
        row.addWidget(self.merge_button)
        row.addWidget(self.merge_combo, 1)
        grid.addLayout(row, 2, 0)
        grid.addWidget(self.repropagate_button, 2, 1)
        layout.addLayout(grid)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.accept_button.clicked.connect(lambda: self.set_state("accepted"))
        self.gone_button.clicked.connect(lambda: self.set_state("disappeared"))
        self.merge_button.clicked.connect(self._merge_clicked)
        self.repropagate_button.clicked.connect(lambda: self.repropagate())
        self.accept_candidate_button.clicked.connect(lambda: self.accept_candidate())
        self.dismiss_button.clicked.connect(lambda: self.dismiss_candidate())
        self.lesion_list.currentRowChanged.connect(self._fill_merge_combo)
        self.runner.succeeded.connect(self._apply_result)
        self.runner.done.connect(self._on_done)
        self.session.results_changed.connect(self._schedule_refresh)
        self.session.active_changed.connect(self._schedule_refresh)
        self.refresh()

    # ------------------------------------------------------------------ model
    def followup(self):
        """The timepoint in view when it is a follow-up (not the first timepoint), else None."""
        tps = self.timeline.timepoints()
        active = self.session.active_image()
        return active if active is not None and active in tps[1:] else None

    def tracked(self, tp) -> dict[int, tuple[str, int | None]]:
        return dict(sorted(self.session.reviews(tp).items()))

    def selected_lesion(self) -> int | None:
        item = self.lesion_list.currentItem()
        return int(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    def select_lesion(self, lesion_id: int) -> None:
        for i in range(self.lesion_list.count()):
            if int(self.lesion_list.item(i).data(Qt.ItemDataRole.UserRole)) == int(lesion_id):
                self.lesion_list.setCurrentRow(i)
                return
        raise KeyError(f"lesion {lesion_id} is not listed at this follow-up")

    @property
    def busy(self) -> bool:
        return self.runner.running

    # ------------------------------------------------------------------ view
    def _schedule_refresh(self, *_) -> None:
        self._refresh_timer.start()

    def refresh(self, *_) -> None:
        tabs = getattr(self.timeline, "tabs", None)
        if tabs is not None:
            n = sum(1 for t in self.timeline.timepoints()[1:] for s, _ in self.session.reviews(t).values()
                    if s == "unverified")
            tabs.setTabText(tabs.indexOf(self), f"Verify ({n} unverified)" if n else "Verify")
        tp = self.followup()
        if tp is not self._shown:  # a status line is about the follow-up it was written for
            self._shown = tp
            self.status.setText("")
        selected = self.selected_lesion()
        self.lesion_list.clear()
        self.candidate_list.clear()
        self.merge_combo.clear()
        if tp is None:
            self.title.setText("Look at a follow-up (click it in the timepoints row) to verify its lesions.")
            self._enable(False)
            return
        labels = self.session.labels_layer_for(tp, create=False)
        present = set(lesion_ids_in(labels)) if labels is not None else set()
        reviews = self.tracked(tp)
        n_open = sum(1 for s, _ in reviews.values() if s == "unverified")
        self.title.setText(f"{tp.name}: {n_open} of {len(reviews)} lesion(s) unverified; "
                           f"{len(self.session.candidates(tp))} candidate(s)")
        for lid, (state, into) in reviews.items():
            text = f"lesion {lid}: {state}" + (f" into {into}" if into is not None else "")
            if lid not in present and state not in ("disappeared", "merged"):
                text += " (not found)"
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, lid)
            item.setIcon(_swatch(lid))  # the lesion's colour; the selection stays visible
            self.lesion_list.addItem(item)
        if selected is not None and selected in reviews:
            self.select_lesion(selected)
        elif self.lesion_list.count():
            self.lesion_list.setCurrentRow(0)
        self._merge_ids = sorted(present | set(self.session.all_lesion_ids()))
        self._fill_merge_combo()
        for cand in self.session.candidates(tp):
            item = QListWidgetItem(f"candidate {cand['index'] + 1}: score {float(cand.get('score', 0)):.2f}")
            item.setData(Qt.ItemDataRole.UserRole, cand["index"])
            self.candidate_list.addItem(item)
        if self.candidate_list.count():
            self.candidate_list.setCurrentRow(0)
        self._enable(not self.busy)
        self._show_points(tp, labels, reviews, present)

    def _fill_merge_combo(self, *_) -> None:
        """The lesions the selected one can have merged into (not itself)."""
        lid = self.selected_lesion()
        self.merge_combo.clear()
        for other in getattr(self, "_merge_ids", []):
            if other != lid:
                self.merge_combo.addItem(f"lesion {other}", other)

    def _enable(self, on: bool) -> None:
        has_lesion = on and self.lesion_list.count() > 0
        for w in (self.accept_button, self.gone_button, self.merge_button, self.merge_combo):
            w.setEnabled(has_lesion)
        self.repropagate_button.setEnabled(on and self.followup() is not None
                                           and self.followup() is not self.timeline.timepoints()[-1])
        for w in (self.accept_candidate_button, self.dismiss_button):
            w.setEnabled(on and self.candidate_list.count() > 0)

    def points_layer(self, tp, role: str, *, create: bool = True):
        """The follow-up's Points layer of ``role`` ("proposed" or "candidates")."""
        uid = str(tp.unique_id)
        for layer in self.viewer.layers:
            meta = layer.metadata.get(META_KEY) if isinstance(layer.metadata, dict) else None
            if layer_role(layer) == role and isinstance(meta, dict) and meta.get("image_id") == uid:
                return layer
        if not create:
            return None
        from napari.layers import Points

        colour = "magenta" if role == "proposed" else "cyan"
        layer = Points(np.zeros((0, 3)), ndim=3, name=f"{tp.name} {role}", size=_POINT_SIZE_MM,
                       face_color="transparent", border_color=colour, border_width=0.2, symbol="disc"
                       if role == "proposed" else "square",
                       metadata={META_KEY: {"role": role, "image": tp.name, "image_id": uid}},
                       visible=tp is self.session.active_image())
        return self.session.add_layer_quietly(layer)

    def _show_points(self, tp, labels, reviews, present) -> None:
        pos = []
        if labels is not None:
            data = np.asarray(labels.data)
            for lid, (state, _) in reviews.items():
                if lid in present and state not in ("disappeared", "merged"):
                    idx = np.argwhere(data == lid).mean(axis=0)
                    pos.append((lid, np.asarray(labels.data_to_world(idx), dtype=float)))
        cands = self.session.candidates(tp)
        if not pos and not cands and self.points_layer(tp, "proposed", create=False) is None:
            return
        layer = self.points_layer(tp, "proposed")
        self._positions[str(tp.unique_id)] = pos
        self._setting = True
        try:
            layer.data = np.array([p for _, p in pos]).reshape(-1, 3)
            layer.features = {"lesion": np.array([lid for lid, _ in pos], dtype=int)}
            cl = self.points_layer(tp, "candidates")
            cl.data = np.array([c["centroid_mm"] for c in cands], dtype=float).reshape(-1, 3)
        finally:
            self._setting = False
        if id(layer) not in self._connected:
            self._connected.add(id(layer))
            layer.events.data.connect(lambda event, layer=layer: self._on_points(layer, event))

    # ------------------------------------------------------------------ moving a point
    def _on_points(self, layer, event) -> None:
        if self._setting or str(getattr(event, "action", "")) != "changed":
            return
        self._moved_layer = layer
        self._move_timer.start()

    def _check_moved(self) -> None:
        layer = self._moved_layer
        if layer is None or layer not in self.viewer.layers:
            return
        uid = layer.metadata[META_KEY]["image_id"]
        tp = next((t for t in self.session.image_layers() if str(t.unique_id) == uid), None)
        old = self._positions.get(uid, [])
        data = np.asarray(layer.data, dtype=float)
        if tp is None or len(data) != len(old):
            self._schedule_refresh()
            return
        for (lid, was), now in zip(old, data, strict=True):
            if np.linalg.norm(now - was) > 0.5:
                self.move_point(tp, lid, now)
                return

    def move_point(self, tp, lesion_id: int, world_zyx) -> bool:
        """Re-segment a lesion at a follow-up from a point (world mm), keeping its id."""
        labels = self.session.labels_layer_for(tp)
        idx = np.rint(np.asarray(labels.world_to_data(np.asarray(world_zyx, dtype=float)), dtype=float)).astype(int)
        if np.any(idx < 0) or np.any(idx >= np.asarray(labels.data.shape)):
            self.status.setText("The moved point is outside the scan: nothing changed.")
            self._schedule_refresh()
            return False
        return self._segment(tp, PointPrompt(int(lesion_id), tuple(int(v) for v in idx)), "accepted",
                             f"lesion {lesion_id} re-segmented from the moved point")

    # ------------------------------------------------------------------ verdicts
    def set_state(self, state: str, merged_into: int | None = None, lesion_id: int | None = None) -> bool:
        """The reader's verdict on a lesion at the follow-up in view.

        Disappeared / merged hide the lesion there (erased from the Labels layer, one undo step)
        but keep its tracked mask in the session and the study: Ctrl+Z (or Undo) shows it again
        and puts the earlier verdict back.
        """
        tp = self.followup()
        lid = lesion_id if lesion_id is not None else self.selected_lesion()
        if tp is None or lid is None:
            return False
        if (state == "merged") != (merged_into is not None) or merged_into == lid:
            self.status.setText("a merged lesion needs the (other) lesion it merged into, and only it")
            return False
        previous = self.session.review(tp, lid) or ("accepted", None)
        model = self._model()
        undo = None
        if state in ("disappeared", "merged"):
            labels = self.session.labels_layer_for(tp, create=False)
            if labels is not None and lid in lesion_ids_in(labels):
                before = self.session.history_length(labels)
                with model.rendering() if model is not None else _nothing():
                    erased = remove_lesions(labels, [lid])  # the verdict's rendering, not an edit of the mask
                if erased:
                    undo = {"what": f"lesion {lid} {state} at {tp.name}", "layers": [labels],
                            "history": {id(labels): before + 1}, "restore_with_layers": True,
                            "restore": lambda: self._put_review(tp, lid, *previous)}
        try:
            self._put_review(tp, lid, state, merged_into)  # before anyone compares the layer with the study
        except (ValueError, LesionLocatorError) as exc:
            self.status.setText(str(exc))
            return False
        if undo is not None:
            self.session.push_undo(undo)
        self.status.setText(f"lesion {lid} at {tp.name}: {state}" + (f" into {merged_into}" if merged_into else ""))
        return True

    def _model(self):
        """The viewer's review study when one is kept (the Lesion table's), else None."""
        from ._table_study import _MODELS

        model = _MODELS.get(id(self.session))
        return model if model is not None and model.session is self.session else None

    def _put_review(self, tp, lesion_id: int, state: str, merged_into: int | None = None) -> None:
        """A verdict into the review study first (its display then hides or shows the kept mask,
        matching the layer), then into the session."""
        model = self._model()
        if tp not in self.viewer.layers:
            return
        if model is not None and model.study is not None and tp.name in model.study.names \
                and int(lesion_id) in model.study.lesion_ids:
            model.set_review(int(lesion_id), tp.name, state, merged_into=merged_into)
        else:
            self.session.set_review(tp, lesion_id, state, merged_into=merged_into)

    def _merge_clicked(self) -> None:
        into = self.merge_combo.currentData()
        if into is not None:
            self.set_state("merged", merged_into=int(into))

    def repropagate(self) -> bool:
        """Track this follow-up's lesions (not disappeared or merged) to the later timepoints only."""
        tp = self.followup()
        if tp is None or self.busy:
            return False
        labels = self.session.labels_layer_for(tp, create=False)
        gone = {lid for lid, (s, _) in self.tracked(tp).items() if s in ("disappeared", "merged")}
        ids = [lid for lid in (lesion_ids_in(labels) if labels is not None else []) if lid not in gone]
        return self.timeline.propagate(source=tp.name, lesion_ids=ids)

    # ------------------------------------------------------------------ candidates
    def _candidate_index(self, index: int | None) -> int | None:
        if index is not None:
            return int(index)
        item = self.candidate_list.currentItem()
        return int(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    def accept_candidate(self, index: int | None = None) -> bool:
        """Segment a candidate's box as a new lesion (next never-used id, state "new")."""
        tp, index = self.followup(), self._candidate_index(index)
        if tp is None or index is None:
            return False
        cand = next((c for c in self.session.candidates(tp) if c["index"] == index), None)
        if cand is None:
            return False
        lid = self.session.next_lesion_id()
        return self._segment(tp, BoxPrompt(lid, tuple(int(v) for v in cand["box"])), "new",
                             f"candidate {index + 1} accepted as new lesion {lid}", candidate=index)

    def dismiss_candidate(self, index: int | None = None) -> bool:
        tp, index = self.followup(), self._candidate_index(index)
        if tp is None or index is None:
            return False
        self.session.set_candidate_state(tp, index, "dismissed")
        self.status.setText(f"candidate {index + 1} dismissed")
        return True

    # ------------------------------------------------------------------ segmentation worker
    def _segment(self, tp, prompt, state: str, what: str, candidate: int | None = None) -> bool:
        if self.busy or self.timeline.busy:
            self.status.setText("Wait for the running job to finish.")
            self._schedule_refresh()
            return False
        try:
            engine_name, settings = self.session.engine_choice()
            image = self.session.image(tp)
            prompt.validate(image.geometry.shape)
        except LesionLocatorError as exc:
            self.status.setText(str(exc))
            return False
        self.session.labels_layer_for(tp)
        self._job = (tp, prompt.lesion_id, state, what, candidate)
        self._enable(False)
        self.status.setText(f"Segmenting lesion {prompt.lesion_id} at {tp.name}...")
        session = self.session
        use_helper = engine_name == "classical" and helper_available()

        def job(token, callback):
            if use_helper:
                return (yield from run_in_helper("segment", [image], {"prompts": [prompt]}, token, callback))
            engine = session.engine(engine_name, settings)
            return (yield from api.iter_segment(engine, image, [prompt], cancel=token, on_progress=callback))

        self.runner.start(job, desc="Segmenting", total=2)
        return True

    def _apply_result(self, result) -> None:
        tp, lid, state, what, candidate = self._job
        if tp not in self.viewer.layers:
            return
        res = (result.lesions or {}).get(lid)
        if res is None or res.status == "empty":
            self.status.setText(f"Nothing found there for lesion {lid}: nothing changed.")
            self._schedule_refresh()
            return
        labels = self.session.labels_layer_for(tp)
        before = self.session.history_length(labels)
        if apply_lesion_labels(labels, result.labels.array, [lid]):
            self.session.push_undo({"what": what, "layers": [labels], "history": {id(labels): before + 1}})
        self.session.record_results(tp, {lid: res})
        if candidate is not None:
            self.session.set_candidate_state(tp, candidate, "accepted", lid)
        self.session.set_review(tp, lid, state)
        self.status.setText(what + (" (check it: the engine doubts the mask)" if res.status == "check" else ""))

    def _on_done(self) -> None:
        if self.runner.last_state != "succeeded":
            self.status.setText(f"Segmentation {self.runner.last_state}: nothing changed.")
        self._schedule_refresh()

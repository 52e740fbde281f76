"""The viewer's review study: a core :class:`~..core.study.Study` kept in step with the napari layers.

:meth:`StudySession.study` gives a fresh Study over the layers each call (no names, sites, RECIST
roles or review states survive). The lesion table needs one that lasts, so :func:`review_study_for`
keeps one per session:

* built from the session's timepoints (image views; each timepoint's display map is a **copy** of
  its Labels layer, so a stroke can be compared with what was there before);
* a napari paint/fill/erase stroke goes in through :meth:`Study.apply_napari_paint` (only the
  painted voxels; only the lesions they touch change, so only those are measured again);
* an engine result the session records (``results_changed``) is taken as that lesion's own mask
  (tracked ones ``unverified``); any other change of a layer (undo, a script) is found by
  comparing the layer with the copy (:meth:`Study.apply_label_edit`);
* names, sites, roles, reviews and the id counter are carried over when timepoints are added or
  removed (the study is rebuilt then).

``changed`` is emitted (coalesced, ~50 ms after the last change) with the lesion ids that changed
(None: everything). Thread: GUI thread.
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..core.image import LabelMap
from ..core.study import Study, Timepoint
from ._layers import image_from_layer, is_lesion_layer, is_timepoint_layer, label_map_from_layer

__all__ = ["ReviewStudy", "review_study_for"]


class ReviewStudy(QObject):
    """One viewer's lasting review study (see the module docstring)."""

    changed = Signal(object)  # set of lesion ids, or None for "everything"

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        self.viewer = session.viewer
        self._study: Study | None = None
        self._stale = True
        self._layers: dict[str, tuple] = {}  # timepoint name -> (image layer, labels layer or None)
        self._taken: dict[tuple[str, int], object] = {}  # (image uid, lesion id) -> result object taken
        self._connected: list = []  # (labels layer, callback)
        self._pending: set[int] | None = set()
        self._adopting = False
        self._quiet = 0  # > 0 while a layer write only renders the study (a verdict), not an edit
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._emit)
        session.results_changed.connect(self._on_results)
        self.viewer.layers.events.inserted.connect(self._on_layers)
        self.viewer.layers.events.removed.connect(self._on_layers)

    # ------------------------------------------------------------------ the study
    @property
    def study(self) -> Study | None:
        """The study (built or rebuilt on demand); None while the viewer holds no CT volume."""
        if self._stale:
            self._rebuild()
        return self._study

    def layers_of(self, name: str) -> tuple:
        """(image layer, labels layer or None) of a timepoint of the study."""
        self.study  # noqa: B018 - make sure the mapping is current
        return self._layers[name]

    def image_layer(self, name: str):
        return self.layers_of(name)[0]

    def _rebuild(self) -> None:
        self._stale = False
        self._disconnect()
        old = self._study
        tps, layers = [], {}
        for tp in self.session.timepoints(self.session.order or None):
            image = image_from_layer(tp)
            lab = self.session.labels_layer_for(tp, create=False)
            labels = label_map_from_layer(lab, image.geometry, copy=True) if lab is not None else None
            tps.append(Timepoint(image, labels))
            layers[image.name] = (tp, lab)
        if not tps:
            self._study, self._layers = None, {}
            self._schedule(None)
            return
        study = Study(tps, sort_by_date=False)
        self._layers = layers
        self._taken = {}
        if old is not None:
            study.session_id, study.engine, study.notes = old.session_id, dict(old.engine), dict(old.notes)
            study.session_folder = old.session_folder
            study.reserve_ids(old.id_counter)
        self._study = study
        self._take_results(carry=old)
        for name, (_, lab) in layers.items():
            if lab is not None:
                self._connect(name, lab)
        self._schedule(None)

    def _carry(self, old: Study, study: Study) -> None:
        for lid in study.lesion_ids:
            if lid not in old.lesion_ids:
                continue
            own_name = old.lesion_name(lid)
            study.set_lesion_info(lid, name="" if own_name == f"Lesion {lid}" else own_name, site=old.site(lid),
                                  role=old.role(lid), check_rules=False)
            for name in study.names:
                if name not in old.names:
                    continue
                was, now = old.observation(lid, name), study.observation(lid, name)
                if was is not None and now is not None and now.present:
                    now.provenance = was.provenance
                    if was.review != now.review:
                        study.set_review(lid, name, was.review if was.review != "merged" else "accepted")

    def adopt(self, study: Study, layers: dict[str, tuple]) -> None:
        """Take a restored study whose timepoints are shown by ``layers`` (name -> (image, labels))."""
        self._disconnect()
        self._study, self._layers, self._stale, self._taken = study, dict(layers), False, {}
        for name, (_, lab) in layers.items():
            if lab is not None:
                self._connect(name, lab)
        self._schedule(None)

    @contextlib.contextmanager
    def rendering(self):
        """Layer writes inside this block show the study (a lesion hidden by a verdict), they are
        not the reader's edits: their paint events are not taken in."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    # ------------------------------------------------------------------ layer events
    def _connect(self, name: str, layer) -> None:
        ref = weakref.ref(layer)

        def on_paint(event, name=name) -> None:
            lyr = ref()
            if lyr is not None:
                self._on_paint(name, lyr, event.value)

        def on_data(event, name=name) -> None:  # the array replaced (``layer.data = ...``)
            lyr = ref()
            if lyr is not None:
                self._sync_layer(name, lyr)

        layer.events.paint.connect(on_paint)
        layer.events.data.connect(on_data)
        self._connected.append((layer, on_paint, on_data))

    def _disconnect(self) -> None:
        for layer, on_paint, on_data in self._connected:
            for emitter, callback in ((layer.events.paint, on_paint), (layer.events.data, on_data)):
                with contextlib.suppress(RuntimeError, TypeError, ValueError):
                    emitter.disconnect(callback)
        self._connected = []

    def _sync_layer(self, name: str, layer) -> None:
        """Take whatever differs between a layer and the study's copy as the reader's edit."""
        study = self._study
        if study is None or self._stale or self._adopting or self._quiet or name not in study.names:
            return
        data = np.asarray(layer.data)
        labels = study[name].labels
        if labels is None or labels.array.shape != data.shape:
            self._stale = True
            self._schedule(None)
            return
        if np.array_equal(labels.array, data):
            return
        res = study.apply_label_edit(name, data)
        if res.region is not None:
            labels.array[res.region] = data[res.region]
        self._schedule(set(res.changed) | set(res.added))

    def _on_layers(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if self._adopting or layer is None:
            return
        if is_timepoint_layer(layer) or is_lesion_layer(layer):
            self._stale = True
            self._schedule(None)

    def _on_paint(self, name: str, layer, atoms) -> None:
        study = self._study
        if study is None or self._stale or self._quiet or name not in study.names:
            return
        res = study.apply_napari_paint(name, atoms)
        if res.region is not None:
            # napari sends the event of a single paint()/fill() call BEFORE it writes the voxels (a
            # mouse stroke's after): touch the layer's array only once this event is over.
            QTimer.singleShot(0, lambda: self._after_paint(name, layer, res.region, bool(res.remapped)))
        for msg in res.messages:
            from napari.utils.notifications import show_info

            show_info(msg)
        self._schedule(set(res.changed) | set(res.added))

    def _after_paint(self, name: str, layer, region, remapped: bool) -> None:
        study = self._study
        if study is None or name not in study.names or layer not in self.viewer.layers:
            return
        display = study[name].labels.array
        if remapped:  # a deleted id painted: the study gave it a fresh id, show that
            layer.data[region] = display[region]
            layer.refresh()
        else:  # keep the copy equal to the layer (hidden overlaps stay in the own masks)
            display[region] = np.asarray(layer.data[region])

    def _on_results(self) -> None:
        if self._stale or self._study is None:
            self._stale = True
            self._schedule(None)
            return
        changed = self._take_results()
        self._schedule(changed)

    def _take_results(self, carry: Study | None = None) -> set[int]:
        """Engine results the session recorded since, then any other difference layer vs copy."""
        study = self._study
        changed: set[int] = set()
        names = study.names
        ids = sorted(self.session.known_lesion_ids())
        for k, name in enumerate(names):
            tp_layer, lab = self._layers[name]
            if lab is None:
                lab = self.session.labels_layer_for(tp_layer, create=False)
                if lab is None:
                    continue
                self._layers[name] = (tp_layer, lab)
                self._connect(name, lab)
            took = False
            uid = str(tp_layer.unique_id)
            for lid in ids:
                res = self.session.result(tp_layer, lid)
                if res is None or self._taken.get((uid, lid)) is res:
                    continue
                self._taken[(uid, lid)] = res
                review = self.session.review(tp_layer, lid) if hasattr(self.session, "review") else None
                hidden = review is not None and review[0] in ("disappeared", "merged")  # erased by the verdict
                if self.session.edited(tp_layer, lid) and not res.mask.is_empty and not hidden:
                    continue  # the reader changed it since: the layer's voxels are the truth (below)
                if not res.mask.geometry.same_grid(study[name].geometry):
                    continue
                earlier = any((o := study.observation(lid, n)) is not None and o.present for n in names[:k])
                study.set_result(lid, name, res, tracked_from=names[k - 1] if k and earlier else None)
                changed.add(lid)
                took = True
            data = np.asarray(lab.data)
            labels = study[name].labels
            if labels is None:
                study.set_labels(name, LabelMap(data.copy(), study[name].geometry, name=f"{name} lesions"))
                changed.update(int(i) for i in np.unique(data) if i)
            elif took:
                labels.array[...] = data  # the layer shows the engine's composition; masks are the truth
            elif labels.array.shape == data.shape and not np.array_equal(labels.array, data):
                res = study.apply_label_edit(name, data)  # undo (no paint event), a script
                if res.region is not None:
                    labels.array[res.region] = data[res.region]
                changed.update(res.changed)
                changed.update(res.added)
            changed |= self._take_reviews(k, name, tp_layer)
        if carry is not None:
            self._carry(carry, study)
        return changed

    def _take_reviews(self, k: int, name: str, tp_layer) -> set[int]:
        """The reader's verdicts the session keeps (the verification panel sets them there)."""
        from ..core.errors import LesionLocatorError

        reviews = getattr(self.session, "reviews", None)
        study = self._study
        changed: set[int] = set()
        if reviews is None:
            return changed
        for lid, (state, into) in sorted(reviews(tp_layer).items()):
            obs = study.observation(lid, name)
            if obs is None or (obs.review, obs.merged_into) == (state, into) or (state == "new" and k == 0):
                continue
            if into is not None and into not in study.lesion_ids:
                continue
            try:
                study.set_review(lid, name, state, merged_into=into)
            except LesionLocatorError:
                continue
            changed.add(lid)
        return changed

    def set_review(self, lesion_id: int, name: str, state: str, *, merged_into: int | None = None) -> None:
        """The reader's verdict, in the study and in the session (which the other docks read)."""
        self.study.set_review(lesion_id, name, state, merged_into=merged_into)
        setter = getattr(self.session, "set_review", None)
        if setter is not None:
            setter(self.image_layer(name), lesion_id, state, merged_into=merged_into)
        self._schedule({int(lesion_id)})

    def push_reviews(self) -> None:
        """Hand every review of the study to the session (after a restore)."""
        setter = getattr(self.session, "set_review", None)
        if setter is None or self._study is None:
            return
        blocked = self.session.blockSignals(True)  # one results_changed at the end, not one per lesion
        try:
            for name in self._study.names:
                layer = self.image_layer(name)
                for lid, obs in self._study.observations(name).items():
                    try:
                        setter(layer, lid, obs.review, merged_into=obs.merged_into)
                    except ValueError:
                        continue
        finally:
            self.session.blockSignals(blocked)
        self.session.results_changed.emit()

    # ------------------------------------------------------------------ change notice
    def _schedule(self, ids: set[int] | None) -> None:
        if ids is None or self._pending is None:
            self._pending = None
        else:
            self._pending |= set(ids)
        self._timer.start()

    def flush(self) -> None:
        """Emit a pending change now (tests, and before a save)."""
        if self._timer.isActive():
            self._timer.stop()
            self._emit()

    def _emit(self) -> None:
        ids, self._pending = self._pending, set()
        self.changed.emit(ids)


_MODELS: dict[int, ReviewStudy] = {}


def review_study_for(session) -> ReviewStudy:
    """The session's one review study (created on first use)."""
    key = id(session)
    model = _MODELS.get(key)
    if model is None or model.session is not session:
        model = ReviewStudy(session)
        _MODELS[key] = model
        weakref.finalize(session, _MODELS.pop, key, None)
    return model

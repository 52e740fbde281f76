"""The one study session per viewer: what every LesionLocator widget of that viewer reads and changes.

``session_for(viewer)`` returns the viewer's :class:`StudySession` (created on first use, one per
viewer, never a process-wide singleton). It owns

* the engines (built once, reused for every run, so weights load and images are prepared once) and
  the one engine choice (set by the engine block of the "Lesion prompts" dock);
* the **active timepoint**: the CT image the reader is looking at. Clicks and boxes go to its
  prompt layers only; selecting a timepoint (or one of its layers), or making it visible, makes it
  active, shows its lesions and prompts and hides the other timepoints' (they are compared in the
  review grid);
* the prompt layers of every timepoint (:class:`PromptLayers`);
* the lesion ids: never reused, also after a lesion was deleted;
* each lesion's result per timepoint (its own whole mask, status ok/check/empty/lost and messages),
  and which lesions were tracked to which timepoint ("not tracked yet" is not "disappeared");
* an undo stack of model results and deletions, so Ctrl+Z undoes the last result whatever layer is
  active.

napari layers are views of the session: the Labels layers are the editable display (a manual edit
there is what the next run starts from), :meth:`StudySession.study` gives a core
:class:`~napari_lesionlocator.core.study.Study` over them (views, no copies).

Thread: GUI thread, except :meth:`StudySession.engine`, which workers call (so engines are imported
and loaded off the GUI thread; each widget runs one job at a time and the engine table is locked).
"""

from __future__ import annotations

import importlib
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..core.errors import EngineError, LesionLocatorError
from ..core.geometry import Geometry
from ..core.image import LabelMap
from ..core.results import LesionMask, LesionResult
from ..core.study import Study, Timepoint
from ..engines.base import Engine, EngineSettings, create_engine
from ._layers import (
    LESION_OPACITY,
    META_KEY,
    geometry_from_layer,
    image_from_layer,
    is_lesion_layer,
    is_timepoint_layer,
    label_map_from_layer,
    layer_role,
    lesion_colormap,
    lesion_ids_in,
)

if TYPE_CHECKING:
    import napari

    from ._prompt_layers import PromptLayers

__all__ = ["StudySession", "AnnotationSession", "session_for", "settings_key", "preload_engine_modules"]

# Modules the default (classical) engine imports on its first run: ~0.3 s of imports that hold the
# GIL, so even inside the worker they froze the GUI in chunks of 100-200 ms at the first Segment or
# Propagate. The torch-based engine is not preloaded (seconds of imports for an optional engine).
_PRELOAD_MODULES = ("napari_lesionlocator.engines.classical", "SimpleITK", "skimage.morphology",
                    "skimage.segmentation")
_preload: dict[str, threading.Thread] = {}


_PREPARE_MS = 30  # delay before a new scan's lesion layer is made (after napari drew the scan)


def preload_engine_modules() -> threading.Thread:
    """Import the classical engine's modules in a background thread, once per process.

    Called when a widget opens, so the imports happen while the user is still placing prompts.
    Import errors are ignored here: creating the engine reports them with a clear message.
    Returns the (possibly finished) thread.
    """
    if "thread" not in _preload:
        def run() -> None:
            for name in _PRELOAD_MODULES:
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: BLE001, S112 - reported later by create_engine
                    continue

        thread = threading.Thread(target=run, name="lesionlocator-preload", daemon=True)
        _preload["thread"] = thread
        thread.start()
        from ._process import start_helper

        start_helper()  # the classical engine's helper process starts (and imports) in the background
    return _preload["thread"]


def settings_key(name: str, settings: EngineSettings) -> tuple:
    folds = tuple(settings.folds) if settings.folds is not None else None
    return (name, settings.checkpoint, folds, bool(settings.tta), settings.device, settings.threads)


class StudySession(QObject):
    """Engines, timepoints, prompts, lesion ids and results of one viewer's study.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers this session reads and writes.

    Signals
    -------
    active_changed(object)
        The active timepoint's image layer (or None).
    results_changed()
        Lesion statuses, ids or the undo stack changed.
    """

    activating = Signal(object)  # before the scans are shown/hidden for a new active timepoint
    active_changed = Signal(object)
    results_changed = Signal()
    note = Signal(str)  # a short explanation of what a click did (shown in the prompt dock's status line)

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = viewer = unwrap(viewer)
        self._engines: dict[tuple, Engine] = {}
        self._engine_lock = threading.Lock()
        self.engine_panel = None  # the one engine block (in the prompt dock), when open
        self._active = None
        self._applying = False  # True while the session itself changes visibility/selection
        self._prompt_layers: dict[str, PromptLayers] = {}
        self._highest_id = 0
        # (image layer unique id, lesion id) -> LesionResult of the last model run there
        self._results: dict[tuple[str, int], LesionResult] = {}
        self._written: dict[tuple[str, int], int] = {}  # hash of the voxels written for that result
        self._tracked: dict[str, set[int]] = {}  # image uid -> lesion ids tracked (or prompted) there
        self._undo: list[dict] = []
        self._watched: set[int] = set()
        # Verified tracking: (image uid, lesion id) -> (review state, merged into) and, per image uid,
        # the engine's new-lesion candidates there (each with its "state": proposed/accepted/dismissed).
        self._reviews: dict[tuple[str, int], tuple[str, int | None]] = {}
        self._candidates: dict[str, list[dict]] = {}
        # What the next click means (set by the prompt dock's toggles; Shift/Ctrl do the same per click).
        self.order: list[str] = []  # the timeline's order of the timepoints (names), shared by the docks
        self.force_new = False
        self.exclude = False
        self.current_lesion = 0
        viewer.layers.selection.events.active.connect(self._on_selection)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        for layer in list(viewer.layers):
            self._watch(layer)
            self._prepare_lesion_layer(layer)

    # ------------------------------------------------------------------ engines
    def engine(self, name: str, settings: EngineSettings | None = None) -> Engine:
        """The engine for these settings, created on first use and then reused (any thread)."""
        settings = settings or EngineSettings()
        key = settings_key(name, settings)
        with self._engine_lock:
            if key not in self._engines:
                try:
                    self._engines[key] = create_engine(name, settings)
                except LesionLocatorError:
                    raise
                except Exception as exc:  # noqa: BLE001 - turn any construction failure into a clear message
                    raise EngineError(f"could not start the {name} engine: {exc}") from exc
            return self._engines[key]

    @property
    def engines_created(self) -> int:
        return len(self._engines)

    def shared_engine_panel(self):
        """The study's one engine block (created once; the prompt dock shows it, or the timeline
        when the prompt dock is not open)."""
        panel = self.engine_panel
        if panel is not None:
            try:
                panel.objectName()  # still alive (its dock may have been deleted)
            except RuntimeError:
                panel = None
        if panel is None:
            from ._panels import EnginePanel

            panel = self.engine_panel = EnginePanel()
        return panel

    def engine_choice(self) -> tuple[str, EngineSettings]:
        """The engine chosen in the one engine block (EngineError for unreadable options)."""
        panel = self.shared_engine_panel()
        return panel.engine_name, panel.settings()

    def engine_label(self) -> str:
        return self.shared_engine_panel().engine.currentText()

    # ------------------------------------------------------------------ layers
    def image_layers(self) -> list:
        """3D image layers (CT volumes), in layer-list order; the review grid's view-only copies excluded."""
        return [layer for layer in self.viewer.layers if is_timepoint_layer(layer)]

    def timepoints(self, order: list[str] | None = None) -> list:
        """Image layers ordered as timepoints: by acquisition date (metadata), undated ones last by name.

        ``order`` (layer names) overrides the automatic order for the names it lists.
        """
        layers = self.image_layers()
        if order:
            by_name = {layer.name: layer for layer in layers}
            ranked = [by_name[n] for n in order if n in by_name]
            rest = [layer for layer in layers if layer.name not in order]
            return ranked + sorted(rest, key=_date_key)
        return sorted(layers, key=_date_key)

    def labels_layer_for(self, image_layer, *, create: bool = True):
        """The lesion Labels layer tied to ``image_layer`` (created empty on its grid if missing)."""
        uid = str(image_layer.unique_id)
        by_name = None
        for layer in self.viewer.layers:
            if not is_lesion_layer(layer):
                continue
            meta = layer.metadata[META_KEY]
            if meta.get("image_id") == uid:
                return layer
            if by_name is None and meta.get("image") == image_layer.name:
                by_name = layer
        if by_name is not None and tuple(by_name.data.shape) == tuple(image_layer.data.shape):
            by_name.metadata[META_KEY]["image_id"] = uid
            return by_name
        if not create:
            return None
        return self.add_layer_quietly(self.new_labels_layer(image_layer))

    def add_layer_quietly(self, layer):
        """Add a layer we made without it becoming the selected layer (napari selects what it adds),
        so the reader's tool and the active timepoint stay as they were."""
        selected = self.viewer.layers.selection.active
        self._applying = True
        try:
            added = self.viewer.add_layer(layer)
            if selected is not None and selected in self.viewer.layers:
                self.viewer.layers.selection.active = selected
        finally:
            self._applying = False
        return added

    def new_labels_layer(self, image_layer):
        """An empty lesion Labels layer tied to ``image_layer``, not yet added to the viewer.

        Building the layer and adding it (napari then builds its visuals and controls) each take
        tens of ms, so a widget can run the two steps in separate event-loop turns.
        """
        from napari.layers import Labels

        geometry = geometry_from_layer(image_layer)
        return Labels(
            np.zeros(geometry.shape, dtype=np.uint16),
            name=f"{image_layer.name} lesions",
            metadata={"geometry": geometry.to_metadata(),
                      META_KEY: {"role": "lesions", "image": image_layer.name,
                                 "image_id": str(image_layer.unique_id)}},
            colormap=lesion_colormap(),
            opacity=LESION_OPACITY,
            visible=image_layer is self.active_image(),  # only the scan in view shows its lesions
            **geometry.napari_transform(),
        )

    def lesion_layers(self) -> list:
        return [layer for layer in self.viewer.layers if is_lesion_layer(layer)]

    def all_lesion_ids(self) -> list[int]:
        ids: set[int] = set()
        for layer in self.lesion_layers():
            ids.update(lesion_ids_in(layer))
        return sorted(ids)

    def geometry(self, image_layer) -> Geometry:
        return geometry_from_layer(image_layer)

    def image_of(self, layer):
        """The timepoint image layer that ``layer`` belongs to (itself for a timepoint), or None."""
        if layer is None:
            return None
        if is_timepoint_layer(layer):
            return layer
        meta = layer.metadata.get(META_KEY) if isinstance(layer.metadata, Mapping) else None
        if not isinstance(meta, Mapping) or meta.get("role") == "review":
            return None
        uid, name = meta.get("image_id"), meta.get("image")
        for tp in self.image_layers():
            if uid is not None and str(tp.unique_id) == uid:
                return tp
        for tp in self.image_layers():
            if name is not None and tp.name == name:
                return tp
        return None

    def layers_of(self, image_layer) -> list:
        """The layers that belong to a timepoint: its lesions and its prompt layers."""
        uid = str(image_layer.unique_id)
        out = []
        for layer in self.viewer.layers:
            meta = layer.metadata.get(META_KEY) if isinstance(layer.metadata, Mapping) else None
            if isinstance(meta, Mapping) and meta.get("role") in _OWN_ROLES and (
                    meta.get("image_id") == uid
                    or (meta.get("image_id") is None and meta.get("image") == image_layer.name)):
                out.append(layer)
        return out

    # ------------------------------------------------------------------ active timepoint
    def active_image(self):
        """The timepoint the reader is looking at: the one made active, else the top visible one."""
        if self._active is not None and self._active in self.viewer.layers:
            return self._active
        visible = [layer for layer in self.image_layers() if layer.visible]
        if visible:
            return visible[-1]  # the top of the layer list is drawn over the others
        tps = self.image_layers()
        return tps[-1] if tps else None

    def set_active(self, image_layer, *, show: bool = True) -> None:
        """Make ``image_layer`` the active timepoint: show it with its lesions and prompts, hide the others.

        While the review grid shows (its own view layers) nothing is shown or hidden.
        """
        if image_layer is None or image_layer not in self.viewer.layers:
            return
        changed = image_layer is not self._active
        if changed:
            self.activating.emit(image_layer)
        self._active = image_layer
        if show and not self.reviewing:
            self._applying = True
            try:
                for tp in self.image_layers():
                    mine = tp is image_layer
                    if tp.visible != mine:
                        tp.visible = mine
                    for layer in self.layers_of(tp):
                        role = layer_role(layer)
                        want = mine and (role != "box_wireframe" or bool(len(layer.data)))
                        if layer.visible != want:
                            layer.visible = want
            finally:
                self._applying = False
        if changed:
            self.active_changed.emit(image_layer)

    @property
    def reviewing(self) -> bool:
        return any(layer_role(layer) == "review" for layer in self.viewer.layers)

    def _on_selection(self, event=None) -> None:
        if self._applying:
            return
        tp = self.image_of(self.viewer.layers.selection.active)
        if tp is not None and tp is not self._active:
            self.set_active(tp)

    def _watch(self, layer) -> None:
        if id(layer) in self._watched or not is_timepoint_layer(layer):
            return
        self._watched.add(id(layer))
        ref = weakref.ref(layer)
        layer.events.visible.connect(lambda event: self._on_visible(ref()))

    def _on_inserted(self, event) -> None:
        layer = event.value
        self._watch(layer)
        self._prepare_lesion_layer(layer)
        self._replace_prepared(layer)
        if is_timepoint_layer(layer) and self._active is None and layer.visible:
            self._active = layer

    def _prepare_lesion_layer(self, layer) -> None:
        """Make a scan's lesion Labels layer soon after the scan is opened, in an idle turn of its own.

        napari takes 100-300 ms (software OpenGL, loaded CPU) to add a Labels layer: its visual and
        its controls. Done while the reader opens a scan, that cost is not paid again inside the
        first segmentation or a propagation. Only scans whose voxel size and position are known (read
        by this plugin, or given a transform) get one; the others get theirs once their geometry is
        checked (see :meth:`ensure_geometry`).
        """
        if not is_timepoint_layer(layer) or not self._geometry_known(layer):
            return
        ref = weakref.ref(layer)

        def make() -> None:
            lyr = ref()
            if lyr is None or lyr not in self.viewer.layers or self.reviewing:
                return
            if self.labels_layer_for(lyr, create=False) is None:
                self.labels_layer_for(lyr).metadata[META_KEY]["prepared"] = True

        QTimer.singleShot(_PREPARE_MS, make)

    def _replace_prepared(self, layer) -> None:
        """A lesion map opened later for a scan (a DICOM-SEG, a saved map) takes the place of the empty
        layer made in advance for it, so prompts and tracking write into the reader's map."""
        if not is_lesion_layer(layer) or layer.metadata[META_KEY].get("prepared"):
            return
        image_name = layer.metadata[META_KEY].get("image")
        stale = [other for other in self.viewer.layers
                 if other is not layer and is_lesion_layer(other) and other.metadata[META_KEY].get("prepared")
                 and other.metadata[META_KEY].get("image") == image_name
                 and tuple(other.data.shape) == tuple(layer.data.shape) and not np.asarray(other.data).any()]
        if stale:
            refs = [weakref.ref(other) for other in stale]
            QTimer.singleShot(0, lambda: [self.viewer.layers.remove(r()) for r in refs
                                          if r() is not None and r() in self.viewer.layers])

    @staticmethod
    def _geometry_known(layer) -> bool:
        meta = layer.metadata if isinstance(layer.metadata, Mapping) else {}
        if meta.get("geometry"):
            return True
        matrix = np.asarray(layer.affine.affine_matrix, dtype=float)
        return not (np.allclose(layer.scale, 1.0) and np.allclose(layer.translate, 0.0)
                    and np.allclose(matrix, np.eye(matrix.shape[0])))

    def _on_visible(self, layer) -> None:
        # The reader ticked a timepoint's eye: that is the scan they want to look at.
        if self._applying or layer is None or layer not in self.viewer.layers or self.reviewing:
            return
        if layer.visible and layer is not self._active:
            self.set_active(layer)

    def _on_removed(self, event) -> None:
        layer = event.value
        self._watched.discard(id(layer))
        if not is_timepoint_layer(layer):
            return
        uid = str(layer.unique_id)
        pl = self._prompt_layers.pop(uid, None)
        if pl is not None:
            pl.disconnect()
        # Helper layers of a closed scan go with it (an empty lesions layer too; one holding
        # lesions stays, it is the reader's work and can still be saved).
        for helper in self.layers_of(layer):
            if layer_role(helper) != "lesions" or not np.asarray(helper.data).any():
                self.viewer.layers.remove(helper)
        self._results = {k: v for k, v in self._results.items() if k[0] != uid}
        self._reviews = {k: v for k, v in self._reviews.items() if k[0] != uid}
        self._candidates.pop(uid, None)
        self._tracked.pop(uid, None)
        if layer is self._active:
            self._active = None
            nxt = self.active_image()
            if nxt is not None:
                self.set_active(nxt)
            else:
                self.active_changed.emit(None)

    # ------------------------------------------------------------------ prompts
    def prompt_layers(self, image_layer=None, *, create: bool = True):
        """The prompt layers of a timepoint (default: the active one), created on first use."""
        image_layer = image_layer or self.active_image()
        if image_layer is None:
            return None
        key = str(image_layer.unique_id)
        if key not in self._prompt_layers:
            if not create:
                return None
            from ._prompt_layers import PromptLayers

            self.ensure_geometry(image_layer)  # prompts map to voxels through the file's geometry
            self._applying = True  # adding layers selects them: not a change of timepoint
            try:
                self._prompt_layers[key] = PromptLayers(self.viewer, image_layer, self)
                self.labels_layer_for(image_layer)
            finally:
                self._applying = False
        return self._prompt_layers[key]

    def all_prompt_layers(self) -> list:
        return list(self._prompt_layers.values())

    def lesion_at(self, image_layer, world_zyx) -> int:
        """The lesion id drawn at a world point of a timepoint (0 for none or outside)."""
        layer = self.labels_layer_for(image_layer, create=False)
        if layer is None:
            return 0
        idx = np.rint(np.asarray(layer.world_to_data(np.asarray(world_zyx, dtype=float)), dtype=float)).astype(int)
        shape = np.asarray(layer.data.shape)
        if idx.shape != shape.shape or np.any(idx < 0) or np.any(idx >= shape):
            return 0
        return int(np.asarray(layer.data)[tuple(idx)])

    # ------------------------------------------------------------------ ids
    def note_ids(self, ids) -> None:
        for lid in ids:
            self._highest_id = max(self._highest_id, int(lid))

    def next_lesion_id(self) -> int:
        """A fresh lesion id: never one in use at any timepoint or prompt, nor one deleted before."""
        used = set(self.all_lesion_ids())
        for pl in self._prompt_layers.values():
            used |= pl.ids()
        from ._prompt_layers import prompt_layer_ids

        used |= prompt_layer_ids(self.viewer)
        from ._table_study import _MODELS

        model = _MODELS.get(id(self))  # the review study also counts ids only it saw (painted, restored)
        if model is not None and model.session is self and model._study is not None:
            used.add(model._study.id_counter - 1)
        self.note_ids(used)
        return self._highest_id + 1

    # ------------------------------------------------------------------ results
    def record_results(self, image_layer, lesions: Mapping[int, LesionResult], *, tracked: bool = False) -> None:
        """Keep each lesion's own result at a timepoint (status, messages, own whole mask)."""
        uid = str(image_layer.unique_id)
        layer = self.labels_layer_for(image_layer, create=False)
        for lid, res in lesions.items():
            self._results[(uid, int(lid))] = res
            if layer is not None:
                self._written[(uid, int(lid))] = _mask_hash(np.asarray(layer.data) == int(lid))
        self._tracked.setdefault(uid, set()).update(int(i) for i in lesions)
        if tracked:  # a tracked result is a proposal: unverified until the reader says otherwise
            for lid in lesions:
                self._reviews[(uid, int(lid))] = ("unverified", None)
        else:
            self._mark_new(image_layer, lesions)
        self.note_ids(lesions)
        self.results_changed.emit()

    def _mark_new(self, image_layer, lesions: Mapping[int, LesionResult]) -> None:
        """A lesion the reader prompted at a follow-up that no earlier timepoint holds is a NEW
        lesion there (review "new": the reader placed it, so it is confirmed; RECIST: PD)."""
        order = self.timepoints(self.order or None)
        if image_layer not in order[1:]:
            return
        earlier = order[:order.index(image_layer)]
        uid = str(image_layer.unique_id)
        for lid, res in lesions.items():
            key = (uid, int(lid))
            if res.status == "empty" or key in self._reviews:
                continue  # nothing found, or a verdict there already (a re-segmented new lesion stays new)
            if not any(self._holds(tp, int(lid)) for tp in earlier):
                self._reviews[key] = ("new", None)

    def _holds(self, image_layer, lesion_id: int) -> bool:
        res = self._results.get((str(image_layer.unique_id), lesion_id))
        if res is not None and not res.mask.is_empty:
            return True
        layer = self.labels_layer_for(image_layer, create=False)
        return layer is not None and lesion_id in lesion_ids_in(layer)

    # ------------------------------------------------------------------ verification
    def review(self, image_layer, lesion_id: int) -> tuple[str, int | None] | None:
        """The reader's verdict on a lesion at a timepoint: (state, merged into), or None (never
        tracked there, e.g. a lesion segmented from a prompt). States: core.study.REVIEW_STATES."""
        return self._reviews.get((str(image_layer.unique_id), int(lesion_id)))

    def set_review(self, image_layer, lesion_id: int, state: str, *, merged_into: int | None = None) -> None:
        from ..core.study import REVIEW_STATES

        if state not in REVIEW_STATES:
            raise ValueError(f"unknown review state {state!r}; one of {', '.join(REVIEW_STATES)}")
        if (state == "merged") != (merged_into is not None) or merged_into == int(lesion_id):
            raise ValueError("a merged lesion needs the (other) lesion it merged into, and only it")
        self._reviews[(str(image_layer.unique_id), int(lesion_id))] = (
            state, int(merged_into) if merged_into is not None else None)
        self.results_changed.emit()

    def reviews(self, image_layer) -> dict[int, tuple[str, int | None]]:
        uid = str(image_layer.unique_id)
        return {lid: v for (u, lid), v in self._reviews.items() if u == uid}

    def set_candidates(self, image_layer, candidates) -> None:
        """The engine's new-lesion candidates at a follow-up ({"centroid_mm", "box", "score"}),
        each proposed; replaces earlier proposals there (accepted ones stay recorded)."""
        uid = str(image_layer.unique_id)
        kept = [c for c in self._candidates.get(uid, []) if c.get("state") == "accepted"]
        self._candidates[uid] = kept + [{**dict(c), "state": "proposed", "lesion_id": None} for c in candidates]
        self.results_changed.emit()

    def candidates(self, image_layer, state: str | None = "proposed") -> list[dict]:
        """The candidates at a timepoint (the dicts themselves, with "index"), by state (None: all)."""
        items = self._candidates.get(str(image_layer.unique_id), [])
        return [c | {"index": i} for i, c in enumerate(items) if state is None or c.get("state") == state]

    def set_candidate_state(self, image_layer, index: int, state: str, lesion_id: int | None = None) -> None:
        cand = self._candidates[str(image_layer.unique_id)][int(index)]
        cand["state"], cand["lesion_id"] = state, lesion_id
        self.results_changed.emit()

    def result(self, image_layer, lesion_id: int) -> LesionResult | None:
        return self._results.get((str(image_layer.unique_id), int(lesion_id)))

    def lesion_state(self, image_layer, lesion_id: int, present: bool | None = None) -> str:
        """What the timeline shows for a lesion at a timepoint.

        ``present``/``check`` (the engine doubts the mask), ``lost`` (tracked there and not found:
        disappeared), ``empty`` (prompted, nothing found), ``not tracked`` (never propagated or
        prompted there yet).
        """
        uid = str(image_layer.unique_id)
        if present is None:
            layer = self.labels_layer_for(image_layer, create=False)
            present = layer is not None and int(lesion_id) in lesion_ids_in(layer)
        res = self._results.get((uid, int(lesion_id)))
        if present:
            return "check" if res is not None and res.status == "check" and not self.edited(image_layer, lesion_id) \
                else "present"
        if res is not None and res.status in ("lost", "empty"):
            return res.status
        if int(lesion_id) in self._tracked.get(uid, set()):
            return "lost"
        return "not tracked"

    def edited(self, image_layer, lesion_id: int) -> bool:
        """Whether the lesion's voxels at a timepoint differ from what the last run wrote there."""
        key = (str(image_layer.unique_id), int(lesion_id))
        layer = self.labels_layer_for(image_layer, create=False)
        if key not in self._written or layer is None:
            return True
        return _mask_hash(np.asarray(layer.data) == int(lesion_id)) != self._written[key]

    def own_masks(self, image_layer, labels: LabelMap, lesion_ids) -> dict[int, LesionMask]:
        """Each lesion's own whole mask at a timepoint, for tracking.

        The mask the engine gave (it may overlap another lesion's) while the Labels layer still
        shows what that run wrote; the layer's voxels once the reader edited the lesion.
        """
        out: dict[int, LesionMask] = {}
        for lid in lesion_ids:
            res = self.result(image_layer, lid)
            if res is not None and not res.mask.is_empty and not self.edited(image_layer, lid) \
                    and res.mask.geometry.same_grid(labels.geometry):
                out[int(lid)] = res.mask
            else:
                mask = labels.array == int(lid)
                if mask.any():
                    out[int(lid)] = LesionMask.from_full(labels.geometry, mask)
        return out

    def known_lesion_ids(self) -> set[int]:
        """Ids the session has results for (a lesion lost everywhere after the baseline stays listed)."""
        return {lid for (uid, lid) in self._results}

    def overlaps(self, image_layers) -> list[tuple[str, int, int, int]]:
        """(timepoint, id_a, id_b, shared voxels) for lesions whose own masks overlap (last results)."""
        from ..core.results import overlaps

        out = []
        for tp in image_layers:
            uid = str(tp.unique_id)
            mine = {lid: r for (u, lid), r in self._results.items() if u == uid and not self.edited(tp, lid)}
            out.extend((tp.name, a, b, n) for a, b, n in overlaps(mine))
        return out

    def forget_lesion(self, lesion_id: int) -> None:
        self.note_ids([lesion_id])
        self._results = {k: v for k, v in self._results.items() if k[1] != int(lesion_id)}
        self._reviews = {k: v for k, v in self._reviews.items() if k[1] != int(lesion_id)}
        for ids in self._tracked.values():
            ids.discard(int(lesion_id))
        self.results_changed.emit()

    # ------------------------------------------------------------------ undo
    @staticmethod
    def history_length(layer) -> int:
        """How many undo steps a Labels layer holds (napari keeps them in ``_undo_history``)."""
        return len(getattr(layer, "_undo_history", ()))

    def push_undo(self, entry: dict) -> None:
        """Remember an undoable action: ``{"what": text, "layers": [Labels layers, one history step
        each], "history": {id(layer): history length right after the step}, "restore": callable or
        None (runs after the layers are undone)}``."""
        self._undo.append(entry)
        del self._undo[:-20]
        self.results_changed.emit()

    def undo_last(self) -> str | None:
        """Undo the last model result or deletion (whatever layer is active); returns what was undone.

        A layer edited by hand since (its own undo history grew) is not rolled back through the
        reader's edits: it is left as it is and the status says so.
        """
        while self._undo:
            entry = self._undo.pop()
            layers = [layer for layer in entry.get("layers", []) if layer in self.viewer.layers]
            if not layers and entry.get("restore") is None:
                continue
            skipped = []
            for layer in layers:
                expected = entry.get("history", {}).get(id(layer))
                if expected is not None and self.history_length(layer) != expected:
                    skipped.append(layer.name)
                    continue
                layer.undo()
            if entry.get("restore") is not None:
                entry["restore"]()
            self.results_changed.emit()
            what = str(entry.get("what", "last action"))
            if skipped:
                what += f" (not in {', '.join(skipped)}: edited since; use Ctrl+Z in that layer)"
            return what
        return None

    def undo_in_layer(self, layer) -> None:
        """Ctrl+Z in a lesion layer: napari's undo of that layer; a session step it undoes is dropped."""
        n = self.history_length(layer)
        restore = None
        for entry in reversed(self._undo):
            hist = entry.get("history", {})
            if id(layer) in hist and hist[id(layer)] == n:
                entry["layers"] = [lyr for lyr in entry["layers"] if lyr is not layer]
                hist.pop(id(layer))
                if not entry["layers"] and entry.get("restore_with_layers"):
                    restore = entry.get("restore")  # e.g. a verdict's review state goes with its voxels
                    self._undo.remove(entry)
                elif not entry["layers"] and entry.get("restore") is None:
                    self._undo.remove(entry)
                break
        layer.undo()
        if restore is not None:
            restore()
        self.results_changed.emit()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def results_of(self, lesion_id: int) -> dict:
        lid = int(lesion_id)
        return {"lid": lid, "results": {k: v for k, v in self._results.items() if k[1] == lid},
                "written": {k: v for k, v in self._written.items() if k[1] == lid},
                "tracked": [uid for uid, ids in self._tracked.items() if lid in ids]}

    def restore_results(self, saved: dict) -> None:
        self._results.update(saved.get("results", {}))
        self._written.update(saved.get("written", {}))
        for uid in saved.get("tracked", []):
            self._tracked.setdefault(uid, set()).add(int(saved["lid"]))
        self.results_changed.emit()

    # ------------------------------------------------------------------ geometry guard
    def ensure_geometry(self, image_layer) -> bool:
        """Make sure a scan's voxel size and position come from its file, never from a guess.

        A layer read by this plugin carries the file's geometry in its metadata; one given a
        transform by its maker (scale, translate or affine) is taken as it is. A layer with
        napari's defaults (1 mm voxels at the origin, what another reader gives an NRRD or NIfTI
        file) is re-read through this plugin from the same path, in place. Without a file to
        re-read it is refused: InputImageError, with what to do. Returns True when it was re-read.
        """
        from ..core.errors import InputImageError

        meta = image_layer.metadata if isinstance(image_layer.metadata, Mapping) else {}
        if self._geometry_known(image_layer):
            return False
        path = getattr(getattr(image_layer, "source", None), "path", None)
        from ._reader import get_reader, read_paths

        if path and get_reader(str(path)) is not None:
            data, kwargs, _ = read_paths(str(path))[0]
            self._applying = True
            try:
                image_layer.data = data
                for key in ("scale", "translate", "affine"):
                    if key in kwargs:
                        setattr(image_layer, key, kwargs[key])
                image_layer.metadata = {**meta, **kwargs["metadata"]}
                if "contrast_limits" in kwargs:
                    image_layer.contrast_limits = kwargs["contrast_limits"]
            finally:
                self._applying = False
            from napari.utils.notifications import show_info

            show_info(f"{image_layer.name} was opened by another reader (1 mm voxels at the origin); it was re-read "
                      f"through the LesionLocator reader from {path} to get its real voxel size and position. "
                      "To open such files with it directly: Preferences > Plugins > File extension readers.")
            return True
        raise InputImageError(
            f"{image_layer.name} has napari's default geometry (1 mm voxels at the origin) and no file this "
            "plugin can re-read: its real voxel size is unknown, so nothing is segmented or measured in mm or mL. "
            "Open the file with File > Open (LesionLocator reader), or give the layer its scale and translate.")

    def image(self, image_layer):
        """The scan as an :class:`Image` (a view of the layer's array), its geometry checked first."""
        self.ensure_geometry(image_layer)
        return image_from_layer(image_layer)

    # ------------------------------------------------------------------ study model
    def study(self, order: list[str] | None = None) -> Study:
        """A core Study over the viewer's timepoints (image and labels as views of the layers' arrays).

        A lesion the reader marked disappeared (or merged) at a timepoint is erased from the Labels
        layer there, but its tracked mask is kept in the session: the study carries that mask with
        the verdict (not drawn, not measured), as the Lesion table's study and the saves do.
        """
        tps = []
        for tp in self.timepoints(order):
            image = image_from_layer(tp)
            layer = self.labels_layer_for(tp, create=False)
            labels = label_map_from_layer(layer, image.geometry, copy=False) if layer is not None else None
            tps.append(Timepoint(image, labels))
        study = Study(tps, sort_by_date=False)
        names = study.names
        for tp, layer in zip(study.timepoints, self.timepoints(order), strict=True):
            k = study.index_of(tp.name)
            for lid, (state, into) in sorted(self.reviews(layer).items()):
                if (into is not None and into not in study.lesion_ids) or (state == "new" and k == 0):
                    continue
                res = self.result(layer, lid)
                obs = study.observation(lid, tp.name) if lid in study.lesion_ids else None
                if state in ("disappeared", "merged") and (obs is None or obs.mask.is_empty) \
                        and res is not None and not res.mask.is_empty \
                        and res.mask.geometry.same_grid(tp.geometry):
                    # hidden by the verdict: the kept mask goes in with it (the layer is left as it is)
                    earlier = any((o := study.observation(lid, n)) is not None and o.present for n in names[:k])
                    study.set_result(lid, tp.name, res, review=state, merged_into=into,
                                     tracked_from=names[k - 1] if k and earlier else None)
                elif lid in study.lesion_ids:
                    study.set_review(lid, tp.name, state, merged_into=into)
            uid = str(layer.unique_id)
            if study.index_of(tp.name) and self._candidates.get(uid):
                study.set_candidates(tp.name, [c for c in self._candidates[uid] if c["state"] == "proposed"])
        return study


# Roles of the layers that belong to one timepoint (shown and hidden with it).
_OWN_ROLES = ("lesions", "point_prompts", "box_prompts", "box_wireframe", "proposed", "candidates")

# The per-viewer sessions (keyed by id: napari viewers are not hashable); dropped when the viewer goes.
_SESSIONS: dict[int, StudySession] = {}


def unwrap(obj):
    """The object behind napari's plugin proxy (widgets get a ``PublicOnlyProxy`` of the viewer, and
    layers reached through it are proxies too, so ``is`` would never match the real layers)."""
    return getattr(obj, "__wrapped__", obj)


def session_for(viewer: napari.Viewer) -> StudySession:
    """The viewer's one study session (every LesionLocator widget of the viewer shares it)."""
    viewer = unwrap(viewer)
    key = id(viewer)
    session = _SESSIONS.get(key)
    if session is None or session.viewer is not viewer:
        session = StudySession(viewer)
        _SESSIONS[key] = session
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
        from ._recovery import offer_recovery_soon

        offer_recovery_soon(session)  # the first widget of this viewer: offer an autosave left by a crash
    return session


# Old name, kept for code that built a session per widget.
AnnotationSession = StudySession


def _mask_hash(mask: np.ndarray) -> int:
    idx = np.flatnonzero(mask)
    return hash((idx.size, idx.tobytes()))


def _date_key(layer) -> tuple:
    meta = layer.metadata if isinstance(layer.metadata, Mapping) else {}
    date = meta.get("acquisition_date")
    return (date is None, str(date or ""), str(layer.name))

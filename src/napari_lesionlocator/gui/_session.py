"""AnnotationSession: the per-widget state that ties napari layers to the headless pipeline.

One session per widget (never a process-wide singleton): it holds the engines the widget created
(built once, reused for every run, so model weights load once) and finds or creates the lesion
Labels layer tied to each CT image layer. The layers themselves are the state: a manual edit in a
Labels layer is what the next run starts from.

Thread: GUI thread, except :meth:`AnnotationSession.engine`, which the widget's worker calls (so
engines are imported and loaded off the GUI thread; a widget runs one job at a time, so the engine
table is never used by two threads at once).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import EngineError, LesionLocatorError
from ..core.geometry import Geometry
from ..engines.base import Engine, EngineSettings, create_engine
from ._layers import (
    META_KEY,
    geometry_from_layer,
    is_lesion_layer,
    is_timepoint_layer,
    lesion_colormap,
    lesion_ids_in,
)

if TYPE_CHECKING:
    import napari

__all__ = ["AnnotationSession", "settings_key", "preload_engine_modules"]

# Modules the default (classical) engine imports on its first run: ~0.3 s of imports that hold the
# GIL, so even inside the worker they froze the GUI in chunks of 100-200 ms at the first Segment or
# Propagate. The torch-based engine is not preloaded (seconds of imports for an optional engine).
_PRELOAD_MODULES = ("napari_lesionlocator.engines.classical", "SimpleITK", "skimage.morphology",
                    "skimage.segmentation")
_preload: dict[str, threading.Thread] = {}


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
    return _preload["thread"]


def settings_key(name: str, settings: EngineSettings) -> tuple:
    folds = tuple(settings.folds) if settings.folds is not None else None
    return (name, settings.checkpoint, folds, bool(settings.tta), settings.device, settings.threads)


class AnnotationSession:
    """Engines and layer bookkeeping for one widget on one viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers this session reads and writes.
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        self.viewer = viewer
        self._engines: dict[tuple, Engine] = {}

    # ------------------------------------------------------------------ engines
    def engine(self, name: str, settings: EngineSettings | None = None) -> Engine:
        """The engine for these settings, created on first use and then reused."""
        settings = settings or EngineSettings()
        key = settings_key(name, settings)
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
        return self.viewer.add_layer(self.new_labels_layer(image_layer))

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
            opacity=0.6,
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


def _date_key(layer) -> tuple:
    meta = layer.metadata if isinstance(layer.metadata, Mapping) else {}
    date = meta.get("acquisition_date")
    return (date is None, str(date or ""), str(layer.name))

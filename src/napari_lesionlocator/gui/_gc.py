"""Keep Python's full garbage collections short while napari runs (GUI responsiveness).

Why: a full (generation 2) collection walks every tracked object of the process. With napari,
Qt, numpy/scipy and an engine loaded that is ~170-220 ms, spent holding the GIL, so whichever
thread triggers it (the GUI thread building a layer, or a worker), the GUI freezes that long:
it was the largest single stall left when propagating (``benchmarks/ui_responsiveness.py``).

What: once per process, when the first LesionLocator widget opens, collect once and then
``gc.freeze()`` the survivors: modules, classes, napari's and Qt's long-lived state. Later
collections skip them, so they only walk objects made afterwards (tens of ms at most).

Trade-off: cyclic garbage among the frozen objects is not reclaimed. The only big such objects
are layers that already existed at that moment (their arrays can be large), so when one of them
is removed from the viewer the freeze is lifted and redone in a later event-loop turn (one full
collection then, right after the user closed a layer). Set ``LESIONLOCATOR_NO_GC_FREEZE=1`` to
turn all of this off.
"""

from __future__ import annotations

import gc
import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

__all__ = ["freeze_long_lived_objects", "is_frozen", "lift_freeze"]

_state = {"frozen": False}
# Layers alive when the heap was frozen (only these can leak while frozen).
_frozen_layers: weakref.WeakSet = weakref.WeakSet()
_watched_viewers: weakref.WeakSet = weakref.WeakSet()


def is_frozen() -> bool:
    """Whether this module froze the heap (and has not lifted the freeze since)."""
    return _state["frozen"]


def lift_freeze() -> None:
    """Undo the freeze: every object is subject to cycle collection again (the next full GC is slow)."""
    if _state["frozen"]:
        gc.unfreeze()
        _state["frozen"] = False
        _frozen_layers.clear()


def _freeze() -> None:
    gc.collect()
    gc.freeze()
    _state["frozen"] = True
    _frozen_layers.clear()
    for viewer in list(_watched_viewers):
        for layer in list(viewer.layers):
            _frozen_layers.add(layer)


def freeze_long_lived_objects(viewer: napari.Viewer) -> None:
    """Freeze the process's long-lived objects once (see the module docstring); GUI thread."""
    if os.environ.get("LESIONLOCATOR_NO_GC_FREEZE"):
        return
    if viewer not in _watched_viewers:
        _watched_viewers.add(viewer)
        viewer_ref = weakref.ref(viewer)
        viewer.layers.events.removed.connect(lambda event: _on_layer_removed(viewer_ref, event))
    if not _state["frozen"]:
        _freeze()


def _on_layer_removed(viewer_ref, event) -> None:
    layer = getattr(event, "value", None)
    if not _state["frozen"] or layer is None or layer not in _frozen_layers:
        return
    # Let the removed layer (and anything it keeps in cycles) be collected, then freeze again
    # once the removal's own work is done.
    from qtpy.QtCore import QTimer

    lift_freeze()

    def refreeze() -> None:
        # Not when the viewer closed meanwhile (or a widget already froze the heap again).
        if viewer_ref() is not None and not _state["frozen"]:
            _freeze()

    QTimer.singleShot(0, refreeze)

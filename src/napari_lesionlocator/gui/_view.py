"""Camera, slice and grid helpers that work across napari versions (0.9 moved them)."""

from __future__ import annotations

import numpy as np

__all__ = ["camera", "grid", "centre_view"]


def camera(viewer):
    """The viewer's camera model (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def grid(viewer):
    """The grid model (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def centre_view(viewer, world_zyx) -> None:
    """Move the slice position and the camera centre to a world point (mm, z y x)."""
    world = np.asarray(world_zyx, dtype=float)
    offset = viewer.dims.ndim - len(world)
    for axis in range(len(world)):
        if axis + offset >= 0:
            viewer.dims.set_point(axis + offset, world[axis])
    displayed = list(viewer.dims.displayed)
    camera(viewer).center = tuple(world[d - offset] for d in displayed if d - offset >= 0)

"""3D box prompts from a rectangle drawn on one slice plus a z-extent, and their 3D wireframe.

All conversions go through world coordinates: a vertex of the Shapes layer is mapped with the
layer's own ``data_to_world`` and then with :meth:`Geometry.world_to_index` of the image, so the
Shapes layer may carry any transform.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.errors import PromptError
from ..core.geometry import Geometry
from ..core.prompts import BoxPrompt

__all__ = ["rectangle_indices", "rectangle_slice", "default_z_range", "box_from_rectangle", "box_wireframe"]


def rectangle_indices(layer, vertices: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Continuous voxel indices (n, 3) of a shape's vertices (data coords of ``layer``)."""
    world = np.array([layer.data_to_world(v) for v in np.asarray(vertices, dtype=float)])
    return geometry.world_to_index(world)


def rectangle_slice(layer, vertices: np.ndarray, geometry: Geometry) -> int:
    """The image slice (z index) a rectangle was drawn on (its mean z, clipped into the volume)."""
    z = float(np.mean(rectangle_indices(layer, vertices, geometry)[:, 0]))
    return int(np.clip(np.floor(z + 0.5), 0, geometry.shape[0] - 1))


def default_z_range(layer, vertices: np.ndarray, geometry: Geometry) -> tuple[int, int]:
    """A first guess of the z-extent (inclusive slice indices): as deep in mm as the rectangle is wide.

    Lesions are roughly round, so the in-plane size is the best prior for the unknown depth.
    """
    idx = rectangle_indices(layer, vertices, geometry)
    z = rectangle_slice(layer, vertices, geometry)
    size_mm = max(np.ptp(idx[:, 1]) * geometry.spacing[1], np.ptp(idx[:, 2]) * geometry.spacing[2])
    half = int(np.ceil(size_mm / 2.0 / geometry.spacing[0]))
    return max(0, z - half), min(geometry.shape[0] - 1, z + half)


def box_from_rectangle(lesion_id: int, layer, vertices: np.ndarray, z_range: Sequence[int],
                       geometry: Geometry) -> BoxPrompt:
    """A half-open :class:`BoxPrompt` from a drawn rectangle and an inclusive slice range.

    Every voxel whose centre lies inside the rectangle (in y, x) is inside the box; the box is
    clipped to the volume and PromptError is raised when nothing of it is inside.
    """
    idx = rectangle_indices(layer, vertices, geometry)
    lo = np.ceil(idx[:, 1:].min(axis=0) - 1e-6).astype(int)
    hi = np.floor(idx[:, 1:].max(axis=0) + 1e-6).astype(int) + 1
    hi = np.maximum(hi, lo + 1)  # a degenerate click still covers the voxel under it
    z0, z1 = int(min(z_range)), int(max(z_range)) + 1
    box = BoxPrompt(lesion_id, (z0, z1, lo[0], hi[0], lo[1], hi[1]))
    clipped = box.clipped(geometry.shape)
    if np.any(clipped.stop <= clipped.start):
        raise PromptError(f"lesion {lesion_id}: the box lies outside the image")
    return clipped


def box_wireframe(box: BoxPrompt) -> list[tuple[np.ndarray, str]]:
    """Shapes (data in voxel indices of the image) outlining a box: two faces and four edges.

    The faces sit on the first and last slice of the box (so they show while scrolling in 2D),
    the edges join them (visible in the 3D view).
    """
    z0, z1 = box.start[0], box.stop[0] - 1
    y0, x0 = box.start[1] - 0.5, box.start[2] - 0.5
    y1, x1 = box.stop[1] - 0.5, box.stop[2] - 0.5
    corners = [(y0, x0), (y0, x1), (y1, x1), (y1, x0)]
    shapes: list[tuple[np.ndarray, str]] = []
    for z in (z0, z1) if z1 != z0 else (z0,):
        shapes.append((np.array([[z, y, x] for y, x in corners], dtype=float), "polygon"))
    if z1 != z0:
        for y, x in corners:
            shapes.append((np.array([[z0, y, x], [z1, y, x]], dtype=float), "line"))
    return shapes

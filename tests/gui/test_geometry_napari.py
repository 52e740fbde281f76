"""Geometry.napari_transform() places voxels where napari itself says they are (layer.data_to_world).

Needs napari importable, not a display: a layer object is enough.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesionlocator.core.geometry import Geometry

layers = pytest.importorskip("napari.layers")


def _rot(a: float, b: float, c: float) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


GEOMETRIES = [
    Geometry((5, 6, 7), (2.5, 0.7, 0.6), (-10.0, 20.0, 33.0)),
    Geometry((5, 6, 7), (2.5, 0.7, 0.6), (-10.0, 20.0, 33.0), tuple(_rot(0.3, -0.5, 1.2).reshape(-1))),
    Geometry((5, 6, 7), (3.0, 1.0, 0.5), (1.0, 2.0, 3.0), (1, 0, 0, 0, -1, 0, 0, 0, 1)),  # y flip
    Geometry((5, 6, 7), (3.0, 1.0, 0.5), (1.0, 2.0, 3.0),
             tuple((_rot(0.1, 0.2, -0.7) @ np.diag([-1, 1, -1])).reshape(-1))),
]


@pytest.mark.parametrize("geom", GEOMETRIES)
@pytest.mark.parametrize("kind", ["Image", "Labels"])
def test_napari_transform_matches_data_to_world(geom: Geometry, kind: str) -> None:
    data = np.zeros(geom.shape, dtype=np.float32 if kind == "Image" else np.uint8)
    layer = getattr(layers, kind)(data, **geom.napari_transform())
    rng = np.random.default_rng(0)
    idx = np.vstack([np.zeros(3), np.asarray(geom.shape) - 1, rng.uniform(-1, 8, size=(10, 3))])
    for point in idx:
        np.testing.assert_allclose(layer.data_to_world(point), geom.index_to_world(point), atol=1e-6)
        np.testing.assert_allclose(layer.world_to_data(geom.index_to_world(point)), point, atol=1e-6)

"""npe2 writer: a Labels layer -> NIfTI (or NRRD/MHA) label map in its source image's geometry.

The geometry comes from ``meta["metadata"]["geometry"]`` when it matches the layer's data shape and
current transform (exact values from the file), else from the layer's ``scale``/``translate``/
``rotate``/``shear``/``affine``. napari's save dialog already asks before replacing a file, so an
existing file is overwritten (atomically: temp file + rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputImageError
from ..core.geometry import Geometry
from ..core.image import LabelMap
from ._layers import prefer_stored_geometry

__all__ = ["write_labels", "geometry_from_layer_meta"]


def _geometry_from_matrix(shape: tuple[int, ...], matrix: np.ndarray, what: str) -> Geometry:
    linear = matrix[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise InputImageError(f"{what}: degenerate transform (zero scale)")
    direction = linear / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputImageError(f"{what}: the layer transform is sheared; NIfTI grids must be orthogonal")
    return Geometry(tuple(int(s) for s in shape), tuple(spacing), tuple(matrix[:3, 3]), tuple(direction.reshape(-1)))


def geometry_from_layer_meta(data: np.ndarray, meta: dict[str, Any]) -> Geometry:
    """Geometry of a layer from npe2 writer ``meta`` (layer attributes as a dict)."""
    from napari.utils.transforms import Affine

    what = f"layer {meta.get('name', '')!r}"
    if np.asarray(data).ndim != 3:
        raise InputImageError(f"{what} is {np.asarray(data).ndim}D; only 3D label maps can be written")
    data2physical = Affine(
        scale=meta.get("scale", (1.0, 1.0, 1.0)),
        translate=meta.get("translate", (0.0, 0.0, 0.0)),
        rotate=meta.get("rotate"),
        shear=meta.get("shear"),
        ndim=3,
    )
    affine = meta.get("affine")
    physical2world = Affine(affine_matrix=np.asarray(affine, dtype=float)) if affine is not None else Affine(ndim=3)
    matrix = physical2world.compose(data2physical).affine_matrix
    derived = _geometry_from_matrix(np.asarray(data).shape, matrix, what)
    return prefer_stored_geometry(derived, (meta.get("metadata") or {}).get("geometry"))


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers; returns the written path.

    A path without an image suffix gets ``.nii.gz``.
    """
    from ..io.images import is_image_path, write_label_map

    target = Path(path)
    if not is_image_path(target):
        target = target.with_name(target.name + ".nii.gz")
    array = np.asarray(data)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputImageError(f"layer {meta.get('name', '')!r}: label data must be integers, got {array.dtype}")
    geometry = geometry_from_layer_meta(array, meta)
    write_label_map(LabelMap(array, geometry, str(meta.get("name", "labels"))), target, overwrite=True)
    return [str(target)]

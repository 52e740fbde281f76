"""npe2 writers: a Labels layer -> NIfTI (or NRRD/MHA) label map in its source image's geometry
(*Save Selected Layer*), and a set of layers -> a folder of per-layer files (*Save All Layers*).

The geometry comes from ``meta["metadata"]["geometry"]`` when it matches the layer's data shape and
current transform (exact values from the file), else from the layer's ``scale``/``translate``/
``rotate``/``shear``/``affine``. napari's save dialog already asks before replacing a file, so an
existing file is overwritten (atomically: temp file + rename).

The folder writer (:func:`write_layers_folder`) writes each 3D image and labels layer as
``<layer name>.nii.gz`` on its exact source grid (the same rule), and each points/shapes layer
(the prompt layers) as ``<layer name>.csv`` with world coordinates in mm. Everything is planned
first: a layer whose grid is unknown (napari's default 1 mm voxels at the origin and no geometry
from this plugin's reader), a 2D/4D/RGB image, a sheared transform or a file already in the folder
stops the save with a clear error before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputImageError, OutputExistsError
from ..core.geometry import Geometry
from ..core.image import Image, LabelMap
from ._layers import prefer_stored_geometry

__all__ = ["write_labels", "write_layers_folder", "geometry_from_layer_meta"]


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


# ------------------------------------------------------------------ Save All Layers: a folder
def _world_matrix(meta: dict[str, Any], ndim: int) -> np.ndarray:
    """The layer's data -> world matrix ((ndim+1) x (ndim+1)) from writer ``meta``."""
    from napari.utils.transforms import Affine

    data2physical = Affine(scale=meta.get("scale", (1.0,) * ndim), translate=meta.get("translate", (0.0,) * ndim),
                           rotate=meta.get("rotate"), shear=meta.get("shear"), ndim=ndim)
    affine = meta.get("affine")
    physical2world = Affine(affine_matrix=np.asarray(affine, dtype=float)) if affine is not None else Affine(ndim=ndim)
    return physical2world.compose(data2physical).affine_matrix


def _has_known_grid(meta: dict[str, Any], ndim: int = 3) -> bool:
    """Geometry from this plugin's reader, or a transform its maker gave; not napari's 1 mm default."""
    if (meta.get("metadata") or {}).get("geometry"):
        return True
    return not np.allclose(_world_matrix(meta, ndim), np.eye(ndim + 1))


def _file_stem(name: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "layer"
    out, k = stem, 2
    while out.lower() in taken:
        out, k = f"{stem}_{k}", k + 1
    taken.add(out.lower())
    return out


def _csv_world(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _points_csv(data: Any, meta: dict[str, Any]) -> str:
    coords = np.asarray(data, dtype=float).reshape(-1, np.asarray(data).shape[-1] if np.asarray(data).size else 3)
    ndim = coords.shape[1]
    world = coords @ _world_matrix(meta, ndim)[:ndim, :ndim].T + _world_matrix(meta, ndim)[:ndim, ndim]
    props = {k: np.asarray(v) for k, v in (meta.get("properties") or {}).items() if len(v) == len(world)}
    axes = ["z_mm", "y_mm", "x_mm"][-ndim:] if ndim <= 3 else [f"axis{k}_mm" for k in range(ndim)]
    rows = [[i, *(f"{c:.6g}" for c in w), *(props[k][i] for k in props)] for i, w in enumerate(world)]
    return _csv_world(rows, ["index", *axes, *props])


def _shapes_csv(data: Any, meta: dict[str, Any]) -> str:
    shapes = [np.asarray(s, dtype=float) for s in data]
    ndim = shapes[0].shape[1] if shapes else 3
    m = _world_matrix(meta, ndim)
    types = list(meta.get("shape_type") or ["polygon"] * len(shapes))
    axes = ["z_mm", "y_mm", "x_mm"][-ndim:] if ndim <= 3 else [f"axis{k}_mm" for k in range(ndim)]
    rows = []
    for i, verts in enumerate(shapes):
        world = verts @ m[:ndim, :ndim].T + m[:ndim, ndim]
        rows += [[i, types[i] if i < len(types) else "", j, *(f"{c:.6g}" for c in w)] for j, w in enumerate(world)]
    return _csv_world(rows, ["shape", "shape_type", "vertex", *axes])


def write_layers_folder(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """npe2 multi-layer writer (*File > Save All Layers*, *Save Selected Layers*): one folder,
    one file per layer; images and labels in their exact source geometry.

    Every layer is checked and every file named before anything is written; what cannot be
    written faithfully raises :class:`InputImageError` (``OutputExistsError`` for a file already
    there) naming the layer, and the folder is left as it was.
    """
    from ..io.atomic import atomic_write_text
    from ..io.images import write_image, write_label_map

    folder = Path(path)
    if folder.suffix.lower() in {".gz", ".nii", ".nrrd", ".mha", ".tif", ".tiff", ".csv"}:
        raise InputImageError(f"{folder.name}: several layers are saved as a folder of files; give a folder name "
                              "without an extension (one layer: Save Selected Layer)")
    if folder.exists() and not folder.is_dir():
        raise InputImageError(f"{folder} is a file; give a folder name for the layers")
    plan, problems, taken = [], [], set()
    for data, meta, kind in layer_data:
        name = str(meta.get("name", kind))
        if kind in ("image", "labels"):
            array = np.asarray(data)
            if kind == "image" and meta.get("rgb"):
                problems.append(f"{name!r} is an RGB image, not a CT volume")
                continue
            if array.ndim != 3:
                problems.append(f"{name!r} is {array.ndim}D; only 3D volumes are written here")
                continue
            if kind == "labels" and not np.issubdtype(array.dtype, np.integer):
                problems.append(f"{name!r}: label data must be integers, got {array.dtype}")
                continue
            if not _has_known_grid(meta):
                problems.append(f"{name!r} has napari's default grid (1 mm voxels at the origin) and no geometry "
                                "from the LesionLocator reader, so its real voxel size is unknown")
                continue
            try:
                geometry = geometry_from_layer_meta(array, meta)
            except InputImageError as exc:
                problems.append(str(exc))
                continue
            plan.append((kind, folder / f"{_file_stem(name, taken)}.nii.gz", array, geometry, name))
        elif kind == "points":
            plan.append((kind, folder / f"{_file_stem(name, taken)}.csv", _points_csv(data, meta), None, name))
        elif kind == "shapes":
            plan.append((kind, folder / f"{_file_stem(name, taken)}.csv", _shapes_csv(data, meta), None, name))
        else:  # npe2 only offers this writer for image/labels/points/shapes; a direct call may pass others
            problems.append(f"{name!r} is a {kind} layer, which this writer does not save")
    if problems:
        raise InputImageError("cannot save these layers in their source geometry (nothing was written): "
                              + "; ".join(problems)
                              + ". Open scans with File > Open (LesionLocator reader), or save the other layers "
                                "with napari's own 'Save to Folder'.")
    existing = [p.name for _, p, *_ in plan if p.exists()]
    if existing:
        raise OutputExistsError(f"{folder} already holds {', '.join(existing)}; nothing was written (choose a new "
                                "folder name)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, target, payload, geometry, name in plan:
        if kind == "labels":
            write_label_map(LabelMap(payload, geometry, name), target)
        elif kind == "image":
            write_image(Image(payload, geometry, name), target)
        else:
            atomic_write_text(target, payload)
        written.append(str(target))
    return written

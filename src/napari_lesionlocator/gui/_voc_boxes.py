"""PASCAL VOC boxes (Lung-PET-CT-Dx) in napari: the per-slice annotation rectangles as a Shapes layer,
and each lesion's 3D box as a pending box prompt of the prompt widget, ready for *Segment new prompts*.

The XML files are matched to the slices of an open DICOM series by SOPInstanceUID
(:func:`~..io.voc.voc_box_prompts`); the image layer must come from this plugin's reader (its
metadata names the folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError
from ..core.image import Image
from ..io.voc import VocPrompts, voc_box_prompts
from ._layers import geometry_from_layer, is_volume_image_layer

__all__ = ["series_image_for_layer", "match_voc_to_layers", "voc_shapes_layer_data", "add_voc_boxes"]


def series_image_for_layer(layer) -> list[Image]:
    """Header-only Images (no pixels) for the DICOM series a layer may have been read from."""
    from ..io.dicom import list_dicom_series

    meta = layer.metadata if isinstance(layer.metadata, dict) else {}
    source = meta.get("source")
    if not source or not Path(source).is_dir():
        return []
    geometry = geometry_from_layer(layer)
    try:
        infos = list_dicom_series(source)
    except InputImageError:
        return []
    stub = np.broadcast_to(np.float32(0), geometry.shape)
    return [Image(stub, geometry, str(layer.name), source=source,
                  metadata={"folder": source, "series_instance_uid": info.uid})
            for info in infos if len(info.files) == geometry.shape[0]]


def match_voc_to_layers(xml_dir: str, layers: Sequence) -> tuple[object, VocPrompts]:
    """The image layer whose DICOM series the XML files match best, and the boxes on it."""
    best = None
    for layer in layers:
        if not is_volume_image_layer(layer):
            continue
        for image in series_image_for_layer(layer):
            try:
                res = voc_box_prompts(xml_dir, image)
            except InputImageError:
                continue
            if best is None or len(res.matched_files) > len(best[1].matched_files):
                best = (layer, res)
    if best is None or not best[1].matched_files:
        raise InputImageError(f"{xml_dir}: no open DICOM series has the slices these XML files name (matched by "
                              "SOPInstanceUID); open the series first (File > Open, its folder)")
    return best


def voc_shapes_layer_data(layer, res: VocPrompts, name: str) -> tuple:
    """Shapes LayerData: every per-slice annotation rectangle in world mm (z, y, x), with its lesion id."""
    geometry = geometry_from_layer(layer)
    shapes, ids, z0s, z1s, classes = [], [], [], [], []
    for les in res.lesions:
        for k, box, _path in les.slices:
            corners = [(box.ymin - 0.5, box.xmin - 0.5), (box.ymin - 0.5, box.xmax + 0.5),
                       (box.ymax + 0.5, box.xmax + 0.5), (box.ymax + 0.5, box.xmin - 0.5)]
            shapes.append(geometry.index_to_world(np.array([[k, y, x] for y, x in corners], dtype=float)))
            ids.append(les.prompt.lesion_id)
            z0s.append(les.prompt.box[0])
            z1s.append(les.prompt.box[1] - 1)
            classes.append(les.name)
    kwargs = {
        "name": name,
        "shape_type": "rectangle" if geometry.is_axis_aligned else "polygon",
        "edge_color": "yellow",
        "face_color": "transparent",
        "edge_width": 1.5,
        "features": {"lesion_id": ids, "z0": z0s, "z1": z1s, "class": classes},
        "metadata": {"voc_boxes": [list(p.box) for p in res.prompts], "unmatched": [p.name for p in res.unmatched],
                     "problems": list(res.problems), "image": str(layer.name)},
    }
    return (shapes, kwargs, "shapes")


def add_voc_boxes(viewer, xml_dir: str, image_layer=None) -> tuple[object, VocPrompts]:
    """Each lesion's 3D box as a new pending box prompt on the matching image layer (the prompt widget's
    box layer), ready to segment. Returns that layer and what was matched (unmatched files and problems
    included)."""
    from ._session import session_for

    layers = [image_layer] if image_layer is not None else list(viewer.layers)
    layer, res = match_voc_to_layers(xml_dir, layers)
    geometry = geometry_from_layer(layer)
    prompts = session_for(viewer).prompt_layers(layer)
    for p in res.prompts:
        z0, z1, y0, y1, x0, x1 = p.box
        # Corners a quarter voxel outside the first/last voxel centres: the box layer keeps float32
        # vertices, and a corner exactly on a centre can round to the neighbouring voxel.
        a = geometry.index_to_world(np.array([z0, y0 - 0.25, x0 - 0.25], dtype=float))
        b = geometry.index_to_world(np.array([z0, y1 - 0.75, x1 - 0.75], dtype=float))
        prompts.add_box_world(a, b, (z0, z1 - 1), new=True)
    return layer, res

"""Moving a label map onto another grid in physical space (nearest neighbour, ids unchanged)."""

from __future__ import annotations

import numpy as np

from ..core.geometry import Geometry
from ..core.image import LabelMap
from .images import to_sitk

__all__ = ["resample_label_map_to"]


def resample_label_map_to(labels: LabelMap, geometry: Geometry, *, name: str | None = None) -> LabelMap:
    """Resample ``labels`` onto ``geometry`` by nearest neighbour in world (mm) space.

    Every target voxel centre takes the id of the source voxel nearest to the same physical
    point (SimpleITK, identity transform); target voxels outside the source grid become 0.
    Ids are never mixed or renumbered. Small lesions can vanish when the target grid is coarser.

    Parameters
    ----------
    labels : LabelMap
        Source instance map with its own geometry.
    geometry : Geometry
        Target grid (e.g. the image the labels should sit on).
    name : str, optional
        Name of the result (defaults to the source name).
    """
    import SimpleITK as sitk

    src = np.asarray(labels.array)
    dtype = src.dtype
    # SimpleITK has no uint64 label resampling path we need; uint32 holds every id we write.
    work = src.astype(np.uint32) if dtype.itemsize > 4 or dtype.kind not in "u" else src
    moving = to_sitk(work, labels.geometry)
    itk = geometry.to_itk()
    ref = sitk.Image([int(v) for v in itk["size"]], moving.GetPixelID())
    ref.SetSpacing(itk["spacing"])
    ref.SetOrigin(itk["origin"])
    ref.SetDirection(itk["direction"])
    out = sitk.Resample(moving, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID())
    array = sitk.GetArrayFromImage(out).astype(work.dtype, copy=False)
    return LabelMap(array, geometry, name or labels.name)

"""Volumes with their geometry: CT images and instance label maps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .geometry import Geometry

__all__ = ["Image", "LabelMap"]


@dataclass(eq=False)
class Image:
    """A 3D scalar volume (CT in HU) with its geometry.

    Parameters
    ----------
    array : np.ndarray
        Voxel values indexed (z, y, x); shape must equal ``geometry.shape``.
    geometry : Geometry
        Grid in patient space (mm).
    name : str
        Case identifier (e.g. file name without extension), used in output names.
    acquisition_date : str or None
        ISO date (``YYYY-MM-DD``) when known; orders a study's timepoints.
    source : str or None
        Path the image was read from.
    modality : str or None
        DICOM modality when known (``"CT"``); ``None`` when the file does not say.
    """

    array: np.ndarray
    geometry: Geometry
    name: str = "image"
    acquisition_date: str | None = None
    source: str | None = None
    modality: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"an Image must be 3D (z, y, x), got shape {self.array.shape}")
        if tuple(self.array.shape) != self.geometry.shape:
            raise ValueError(f"array shape {self.array.shape} != geometry shape {self.geometry.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    def with_array(self, array: np.ndarray, **changes) -> Image:
        return replace(self, array=array, **changes)


@dataclass(eq=False)
class LabelMap:
    """An instance label map: 0 is background, every other value is one lesion id.

    Ids are stable lesion identities; they are never renumbered.
    """

    array: np.ndarray
    geometry: Geometry
    name: str = "labels"

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a LabelMap must be 3D (z, y, x), got shape {self.array.shape}")
        if tuple(self.array.shape) != self.geometry.shape:
            raise ValueError(f"label shape {self.array.shape} != geometry shape {self.geometry.shape}")
        if not np.issubdtype(self.array.dtype, np.integer):
            raise ValueError(f"label maps must hold integers, got {self.array.dtype}")

    @classmethod
    def empty(cls, geometry: Geometry, name: str = "labels", dtype=np.uint16) -> LabelMap:
        return cls(np.zeros(geometry.shape, dtype=dtype), geometry, name)

    @classmethod
    def empty_like(cls, image: Image, name: str | None = None) -> LabelMap:
        return cls.empty(image.geometry, name or f"{image.name}_lesions")

    @property
    def ids(self) -> list[int]:
        """Lesion ids with at least one voxel, ascending (0, the background, excluded)."""
        arr = self.array
        if arr.size == 0:
            return []
        top = int(arr.max())
        if top == 0:
            return []
        if arr.dtype.kind in "iu" and top < 1_000_000 and int(arr.min()) >= 0:
            # One linear pass in C, about 3x faster than np.unique's sort on CT-sized maps.
            from scipy import ndimage

            return [i + 1 for i, sl in enumerate(ndimage.find_objects(arr)) if sl is not None]
        vals = np.unique(arr)
        return [int(v) for v in vals if v != 0]

    def mask(self, lesion_id: int) -> np.ndarray:
        return self.array == lesion_id

    def paste(self, lesion_id: int, mask: np.ndarray) -> None:
        """Replace lesion ``lesion_id`` by ``mask`` (bool, same shape); other lesions keep their voxels
        except where the new mask overlaps them (the newest result wins)."""
        if mask.shape != self.array.shape:
            raise ValueError(f"mask shape {mask.shape} != label shape {self.array.shape}")
        if isinstance(lesion_id, bool) or int(lesion_id) != lesion_id or lesion_id < 1:
            # 0 would silently erase the mask's voxels from every other lesion.
            raise ValueError(f"lesion ids are positive integers, got {lesion_id!r}")
        lesion_id = int(lesion_id)
        if lesion_id > np.iinfo(self.array.dtype).max:
            self.array = self.array.astype(np.uint32)
        self.array[self.array == lesion_id] = 0
        self.array[mask.astype(bool)] = lesion_id

    def copy(self) -> LabelMap:
        return LabelMap(self.array.copy(), self.geometry, self.name)

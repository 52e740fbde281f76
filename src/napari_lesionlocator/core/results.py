"""Per-lesion results: every lesion keeps its own whole mask, with a quality status.

Pure (numpy only). Two lesions' masks may overlap (the LesionLocator model predicts every lesion
on its own, and two neighbouring predictions can share voxels), so a lesion's result is never
cut out of a combined instance map. The instance map (:func:`compose_label_map`, later lesion
wins where masks overlap) is a display product; :func:`overlaps` reports what it hides.

Status vocabulary (one per lesion per timepoint, from every engine):

* ``"ok"``: the engine has no doubt about the mask.
* ``"check"``: the engine doubts its mask; ``messages`` say why in words (leaked and bounded, weak
  edge, touches the search limit, very small for the contrast seen, ...).
* ``"empty"``: nothing was found; ``messages`` say why.
* ``"lost"``: tracking only: the lesion was not found at the follow-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .geometry import Geometry
from .image import LabelMap

__all__ = [
    "Status",
    "STATUSES",
    "LesionMask",
    "LesionResult",
    "compose_label_map",
    "overlaps",
    "results_from_label_map",
]

Status = Literal["ok", "check", "empty", "lost"]
STATUSES: tuple[str, ...] = ("ok", "check", "empty", "lost")


@dataclass(eq=False)
class LesionMask:
    """One lesion's whole mask on ``geometry``'s grid, stored as a crop.

    ``array`` is bool on the crop ``[start, start + array.shape)`` in full-grid voxel indices
    (z, y, x). An empty mask has a zero-size crop.
    """

    geometry: Geometry
    start: tuple[int, int, int]
    array: np.ndarray

    def __post_init__(self) -> None:
        self.start = tuple(int(v) for v in self.start)
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise ValueError(f"a lesion mask crop must be 3D, got shape {arr.shape}")
        self.array = arr.astype(bool, copy=False)
        stop = self.stop
        if min(self.start) < 0 or any(b > n for b, n in zip(stop, self.geometry.shape, strict=True)):
            raise ValueError(f"crop [{self.start}, {stop}) is outside the grid {self.geometry.shape}")

    # ------------------------------------------------------------ construction
    @classmethod
    def empty(cls, geometry: Geometry) -> LesionMask:
        return cls(geometry, (0, 0, 0), np.zeros((0, 0, 0), dtype=bool))

    @classmethod
    def from_full(cls, geometry: Geometry, mask: np.ndarray) -> LesionMask:
        """Crop a full-grid boolean mask to its bounding box."""
        mask = np.asarray(mask)
        if tuple(mask.shape) != geometry.shape:
            raise ValueError(f"mask shape {mask.shape} != grid shape {geometry.shape}")
        from scipy import ndimage

        found = ndimage.find_objects(mask.astype(np.uint8))
        if not found or found[0] is None:
            return cls.empty(geometry)
        sl = found[0]
        return cls(geometry, tuple(s.start for s in sl), mask[sl].astype(bool))

    @classmethod
    def from_crop(cls, geometry: Geometry, start: Sequence[int], crop: np.ndarray) -> LesionMask:
        """A crop that may have empty margins: shrink it to its own bounding box."""
        crop = np.asarray(crop, dtype=bool)
        if not crop.any():
            return cls.empty(geometry)
        idx = [np.flatnonzero(crop.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        lo = [int(i[0]) for i in idx]
        hi = [int(i[-1]) + 1 for i in idx]
        sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        return cls(geometry, tuple(int(s) + a for s, a in zip(start, lo, strict=True)), crop[sl])

    # ------------------------------------------------------------ views
    @property
    def stop(self) -> tuple[int, int, int]:
        return tuple(s + n for s, n in zip(self.start, self.array.shape, strict=True))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.array))

    @property
    def is_empty(self) -> bool:
        return self.array.size == 0 or not bool(self.array.any())

    @property
    def volume_ml(self) -> float:
        return self.voxels * self.geometry.voxel_volume_mm3 / 1000.0

    def to_full(self) -> np.ndarray:
        """The mask on the whole grid (bool)."""
        full = np.zeros(self.geometry.shape, dtype=bool)
        if self.array.size:
            full[self.slices] = self.array
        return full

    def paste_into(self, full: np.ndarray, value: int) -> None:
        """Write ``value`` into ``full`` (a full-grid array) where this mask is set."""
        if self.array.size:
            region = full[self.slices]
            region[self.array] = value

    def centroid_index(self) -> np.ndarray | None:
        if self.is_empty:
            return None
        return np.argwhere(self.array).mean(axis=0) + np.asarray(self.start, dtype=float)

    def overlap_voxels(self, other: LesionMask) -> int:
        """Voxels set in both masks (same grid)."""
        if self.is_empty or other.is_empty:
            return 0
        lo = np.maximum(self.start, other.start)
        hi = np.minimum(self.stop, other.stop)
        if np.any(hi <= lo):
            return 0
        a = self.array[tuple(slice(int(l_) - s, int(h) - s) for l_, h, s in zip(lo, hi, self.start, strict=True))]
        b = other.array[tuple(slice(int(l_) - s, int(h) - s) for l_, h, s in zip(lo, hi, other.start, strict=True))]
        return int(np.count_nonzero(a & b))


@dataclass
class LesionResult:
    """One lesion at one timepoint: its own whole mask, a status and the engine's notes."""

    lesion_id: int
    mask: LesionMask
    status: Status = "ok"
    messages: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown lesion status {self.status!r}; one of {', '.join(STATUSES)}")
        if self.status in ("ok", "check") and self.mask.is_empty:
            self.status = "empty"

    @property
    def voxels(self) -> int:
        return self.mask.voxels

    @property
    def volume_ml(self) -> float:
        return self.mask.volume_ml

    def summary(self) -> dict:
        """The entry ``<case>_summary.json`` holds for this lesion."""
        return {
            "id": int(self.lesion_id),
            "status": self.status,
            "voxels": self.voxels,
            "volume_ml": round(self.volume_ml, 4),
            "messages": list(self.messages),
        }


def compose_label_map(
    lesions: Iterable[LesionResult] | Mapping[int, LesionResult],
    geometry: Geometry,
    name: str = "labels",
    base: LabelMap | None = None,
) -> LabelMap:
    """The display instance map: lesions pasted in order, a later lesion wins where masks overlap.

    With ``base`` (a label map on the same grid), each lesion first clears its own id there and
    other lesions of ``base`` keep their voxels except where a new mask covers them.
    """
    items = list(lesions.values() if isinstance(lesions, Mapping) else lesions)
    top = max((int(r.lesion_id) for r in items), default=0)
    if base is not None:
        geometry.require_same_grid(base.geometry, what="the lesion masks and the label map")
        top = max(top, int(base.array.max()) if base.array.size else 0)
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    if base is not None:
        arr = base.array.astype(dtype, copy=True)
    else:
        arr = np.zeros(geometry.shape, dtype=dtype)
    for r in items:
        if base is not None:
            arr[arr == r.lesion_id] = 0
        r.mask.paste_into(arr, int(r.lesion_id))
    return LabelMap(arr, geometry, name)


def overlaps(lesions: Iterable[LesionResult] | Mapping[int, LesionResult]) -> list[tuple[int, int, int]]:
    """``(id_a, id_b, shared_voxels)`` for every pair of lesions whose masks share voxels."""
    items = [r for r in (lesions.values() if isinstance(lesions, Mapping) else lesions) if not r.mask.is_empty]
    out = []
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            n = a.mask.overlap_voxels(b.mask)
            if n:
                out.append((int(a.lesion_id), int(b.lesion_id), n))
    return out


def results_from_label_map(labels: LabelMap, ids: Iterable[int] | None = None) -> dict[int, LesionResult]:
    """One result per id of an instance map (status ``ok``): for prompts read from a label map."""
    from scipy import ndimage

    arr = labels.array
    wanted = None if ids is None else {int(i) for i in ids}
    out: dict[int, LesionResult] = {}
    if arr.size == 0 or int(arr.max()) == 0:
        return out
    if int(arr.min()) >= 0 and int(arr.max()) < 10_000_000:
        boxes = ndimage.find_objects(arr)
        for i, sl in enumerate(boxes):
            lid = i + 1
            if sl is None or (wanted is not None and lid not in wanted):
                continue
            out[lid] = LesionResult(lid, LesionMask(labels.geometry, tuple(s.start for s in sl), arr[sl] == lid))
        return out
    for lid in (int(v) for v in np.unique(arr) if v != 0):
        if wanted is None or lid in wanted:
            out[lid] = LesionResult(lid, LesionMask.from_full(labels.geometry, arr == lid))
    return out

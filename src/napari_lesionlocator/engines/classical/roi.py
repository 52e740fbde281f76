"""Regions of interest around a prompt, in index space with physical (mm) spacing.

The classical engine never touches more of a volume than a box around the prompt, sized in
millimetres so the cost does not grow with the scan and anisotropic grids behave like
isotropic ones. Large regions are resampled to a coarser *working grid* so that the voxel
count stays bounded (interactive speed); results are mapped back to the crop exactly.

All arrays are indexed (z, y, x); spacings are mm along (z, y, x). The direction matrix is
irrelevant here: every operation is local and only needs voxel sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Roi", "roi_bounds_mm", "ellipsoid_mask", "ball_mask"]

# Working grids above this many voxels are resampled to a coarser spacing (keeps a prompt
# well under half a second on 2 cores whatever the lesion size).
MAX_WORK_VOXELS = 600_000


def roi_bounds_mm(
    center_idx: np.ndarray, half_size_mm: np.ndarray | float, spacing: np.ndarray, shape: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Half-open index bounds of a box of ``half_size_mm`` around ``center_idx``, clipped to ``shape``."""
    half_vox = np.ceil(np.asarray(half_size_mm, dtype=float) / np.asarray(spacing, dtype=float)).astype(int)
    c = np.round(np.asarray(center_idx, dtype=float)).astype(int)
    lo = np.clip(c - half_vox, 0, np.asarray(shape))
    hi = np.clip(c + half_vox + 1, 0, np.asarray(shape))
    return lo, hi


@dataclass
class Roi:
    """A crop of a volume, possibly resampled to a coarser working grid.

    Attributes
    ----------
    start, stop : np.ndarray
        Half-open bounds of the crop in the full volume's voxel indices (z, y, x).
    step : np.ndarray
        Working voxel size in crop voxels along (z, y, x) (1 = native resolution).
    spacing : np.ndarray
        Working-grid voxel size in mm (z, y, x).
    work : np.ndarray
        float32 working-grid intensities.
    """

    start: np.ndarray
    stop: np.ndarray
    step: np.ndarray
    spacing: np.ndarray
    work: np.ndarray

    @classmethod
    def extract(
        cls, array: np.ndarray, spacing, start, stop, max_voxels: int = MAX_WORK_VOXELS
    ) -> Roi:
        start = np.asarray(start, dtype=int)
        stop = np.asarray(stop, dtype=int)
        spacing = np.asarray(spacing, dtype=float)
        crop = array[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
        shape = np.asarray(crop.shape)
        if crop.size <= max_voxels:
            step = np.ones(3)
            work = np.asarray(crop, dtype=np.float32)
        else:
            # Isotropic-ish working voxel so that the count fits the budget; never finer than native.
            w = (np.prod(shape * spacing) / max_voxels) ** (1 / 3)
            step = np.maximum(1.0, w / spacing)
            out_shape = np.maximum(1, np.floor(shape / step)).astype(int)
            step = shape / out_shape
            # Working voxel o is centred on crop coordinate step*o + (step-1)/2 (blocks aligned).
            work = ndimage.affine_transform(
                np.asarray(crop, dtype=np.float32),
                step,
                offset=(step - 1) / 2,
                output_shape=tuple(out_shape),
                order=1,
                mode="nearest",
            )
        return cls(start, stop, step, spacing * step, work)

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.stop - self.start)

    @property
    def resampled(self) -> bool:
        return bool(np.any(self.step != 1))

    def to_work(self, idx) -> np.ndarray:
        """Full-volume continuous index -> working-grid continuous index."""
        return (np.asarray(idx, dtype=float) - self.start - (self.step - 1) / 2) / self.step

    def to_work_voxel(self, idx) -> tuple[int, int, int]:
        w = np.round(self.to_work(idx)).astype(int)
        w = np.clip(w, 0, np.asarray(self.work.shape) - 1)
        return tuple(int(v) for v in w)

    def mask_to_crop(self, mask: np.ndarray) -> np.ndarray:
        """Working-grid bool mask -> bool mask on the native crop grid (linear interpolation, 0.5 level)."""
        if not self.resampled:
            return mask.astype(bool)
        inv = 1.0 / self.step
        up = ndimage.affine_transform(
            mask.astype(np.float32),
            inv,
            offset=-(self.step - 1) / 2 * inv,
            output_shape=self.crop_shape,
            order=1,
            mode="nearest",
        )
        return up >= 0.5

    def touches_inner_faces(self, mask: np.ndarray, full_shape) -> int:
        """Mask voxels lying on faces of the region that are not the volume's own border.

        A lesion cut by such a face is not enclosed by the region (grow it); a lesion cut by
        the volume border cannot be enclosed anyway.
        """
        count = 0
        full_shape = np.asarray(full_shape)
        for axis in range(3):
            if self.start[axis] > 0:
                count += int(np.take(mask, 0, axis=axis).sum())
            if self.stop[axis] < full_shape[axis]:
                count += int(np.take(mask, -1, axis=axis).sum())
        return count


def ellipsoid_mask(shape, center, radii) -> np.ndarray:
    """Bool mask of an axis-aligned ellipsoid; ``center`` and ``radii`` in voxels (z, y, x)."""
    radii = np.maximum(np.asarray(radii, dtype=float), 0.5)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    acc = 0.0
    for g, c, r in zip(grids, center, radii, strict=True):
        acc = acc + ((g - c) / r) ** 2
    return acc <= 1.0


def ball_mask(shape, center, radius_mm: float, spacing) -> np.ndarray:
    """Bool mask of a physical ball (radius in mm) on a grid of ``spacing`` mm."""
    spacing = np.asarray(spacing, dtype=float)
    return ellipsoid_mask(shape, center, np.maximum(radius_mm / spacing, 0.5))

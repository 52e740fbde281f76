"""Which patches to run for a prompt (reference 3.5 / 6.2), padding, and the Gaussian importance map.

Coordinates are (z, y, x) voxels of the preprocessed volume. "Padded" coordinates are those of
the volume padded (constant 0, ``diff // 2`` before) to at least the patch size.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

__all__ = ["padding_for", "select_tiles", "tile_union", "gaussian_map", "mirror_combinations"]


def padding_for(shape, patch) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(padded shape, pad before) for padding ``shape`` to at least ``patch`` (acvl_utils' ``pad_nd_image`` rule)."""
    shape = np.asarray(shape, dtype=np.int64)
    padded = np.maximum(shape, np.asarray(patch, dtype=np.int64))
    before = (padded - shape) // 2
    return tuple(int(v) for v in padded), tuple(int(v) for v in before)


def select_tiles(extent_lo, extent_hi, padded_shape, patch) -> list[tuple[int, int, int]]:
    """Patch starts (padded coords) for a prompt whose non-zero voxels span ``[extent_lo, extent_hi)``.

    One centred patch when ``max_inclusive - min < patch`` on every axis (start
    ``int((min + max_inclusive - patch) / 2)``, shifted inside the volume); otherwise every tile
    of nnU-Net's 0.5-step sliding-window grid that overlaps the prompt (a tile whose first index
    equals the prompt's last index is not counted, as in the official selection). On an axis where
    that rule leaves no tile at all (a prompt one voxel thick at index 0), the tiles that merely
    touch the prompt are used instead of running none.
    """
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    lo = np.asarray(extent_lo, dtype=np.int64)
    last = np.asarray(extent_hi, dtype=np.int64) - 1
    patch = np.asarray(patch, dtype=np.int64)
    padded = np.asarray(padded_shape, dtype=np.int64)
    if np.all(last - lo < patch):
        start = [int((int(a) + int(b) - int(p)) / 2) for a, b, p in zip(lo, last, patch)]
        start = np.clip(start, 0, padded - patch)
        return [tuple(int(v) for v in start)]
    steps = compute_steps_for_sliding_window(tuple(int(v) for v in padded), tuple(int(v) for v in patch), 0.5)
    per_axis = []
    for axis in range(3):
        per_axis.append(
            [s for s in steps[axis] if s < last[axis] and s + patch[axis] > lo[axis]]
            or [s for s in steps[axis] if s <= last[axis] and s + patch[axis] > lo[axis]]
        )
    return [tuple(int(v) for v in t) for t in itertools.product(*per_axis)]


def tile_union(starts, patch) -> tuple[np.ndarray, np.ndarray]:
    """Half-open bounding box of the union of tiles (a box: the selected grid is a product of contiguous runs)."""
    s = np.asarray(starts, dtype=np.int64)
    return s.min(axis=0), s.max(axis=0) + np.asarray(patch, dtype=np.int64)


@lru_cache(maxsize=4)
def _gaussian_np(patch: tuple[int, int, int]) -> np.ndarray:
    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    g = compute_gaussian(
        patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float16, device=torch.device("cpu")
    )
    return g.numpy()


def gaussian_map(patch, device=None):
    """nnU-Net's importance map for ``patch``: sigma 1/8 of the patch, scaled to max 10, zeros replaced
    by the minimum, float16 (as the official predictor), as a torch tensor on ``device``."""
    import torch

    g = torch.from_numpy(_gaussian_np(tuple(int(v) for v in patch)).copy())
    return g if device is None else g.to(device)


def mirror_combinations(axes) -> list[tuple[int, ...]]:
    """Every non-empty combination of the spatial mirror axes, as tensor dims of a (b, c, z, y, x) batch."""
    dims = [int(a) + 2 for a in axes]
    return [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]

"""Prompts in preprocessed voxels and the dense prompt channel (reference sections 3.3, 3.4 and 6.1).

All coordinates are (z, y, x) voxel indices; boxes are half-open ``[lo, hi)``. The mapping
uses signed integers throughout (the official code casts boxes to uint16 before subtracting 1,
so a minimum that maps to 0 wraps to 65535 and the lesion is silently skipped: not copied).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ...core.errors import PromptError
from ...core.prompts import BoxPrompt, PointPrompt, Prompt
from .preprocessing import Preprocessed

__all__ = [
    "PromptPP",
    "POINT_RADIUS",
    "point_ball",
    "map_box",
    "map_point",
    "map_prompt",
    "prompts_from_preprocessed_labels",
    "prompt_extent",
    "paint_prompt",
    "dense_prompt",
]

POINT_RADIUS = 5


@dataclass(frozen=True)
class PromptPP:
    """A prompt in preprocessed voxels. ``lo``/``hi``: half-open box (box) or the point and point + 1 (point)."""

    lesion_id: int
    kind: str  # "box" | "point"
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def point(self) -> tuple[int, int, int]:
        return self.lo


@lru_cache(maxsize=4)
def point_ball(radius: int = POINT_RADIUS) -> np.ndarray:
    """``skimage.morphology.ball(radius, strict_radius=False)`` as bool (radius 5: 11^3 voxels, 739 set)."""
    from skimage.morphology import ball

    b = ball(radius, strict_radius=False).astype(bool)
    b.setflags(write=False)
    return b


def _scale(pre: Preprocessed) -> np.ndarray:
    return np.asarray(pre.new_shape, dtype=float) / np.asarray(pre.shape_after_cropping, dtype=float)


def map_box(prompt: BoxPrompt, pre: Preprocessed) -> PromptPP:
    """Original half-open box -> preprocessed half-open box (offset once, clip, scale, floor/ceil, grow 1, clip)."""
    old = np.asarray(pre.shape_after_cropping, dtype=np.int64)
    new = np.asarray(pre.new_shape, dtype=np.int64)
    shape0 = np.asarray(pre.shape_before_cropping, dtype=np.int64)
    start = np.asarray(prompt.start, dtype=np.int64)
    stop = np.asarray(prompt.stop, dtype=np.int64)
    if np.any(stop <= 0) or np.any(start >= shape0):
        raise PromptError(
            f"lesion {prompt.lesion_id}: box {list(prompt.box)} lies outside the volume "
            f"of shape {tuple(shape0)} (z, y, x)"
        )
    lo = np.clip(start - pre.crop_offset, 0, old)
    hi = np.clip(stop - pre.crop_offset, 0, old)
    if np.any(hi <= lo):
        axis = "zyx"[int(np.argmax(hi <= lo))]
        raise PromptError(
            f"lesion {prompt.lesion_id}: box {list(prompt.box)} is empty along {axis} inside the image's "
            "non-zero region (nothing to segment)"
        )
    s = _scale(pre)
    lo = np.floor(lo * s).astype(np.int64) - 1
    hi = np.ceil(hi * s).astype(np.int64) + 1
    lo = np.clip(lo, 0, new)
    hi = np.clip(hi, 0, new)
    if np.any(hi <= lo):  # cannot happen after growing, kept as a guard with a clear message
        raise PromptError(f"lesion {prompt.lesion_id}: box {list(prompt.box)} maps to an empty box")
    return PromptPP(prompt.lesion_id, "box", tuple(int(v) for v in lo), tuple(int(v) for v in hi))


def map_point(prompt: PointPrompt, pre: Preprocessed) -> PromptPP:
    """Original point -> preprocessed voxel (offset once, clip to [0, shape - 1], scale, round half to even)."""
    prompt.validate(pre.shape_before_cropping)
    old = np.asarray(pre.shape_after_cropping, dtype=np.int64)
    p = np.clip(np.asarray(prompt.zyx, dtype=np.int64) - pre.crop_offset, 0, old - 1)
    # No clip after rounding (as the official tool): (shape - 1) * scale can round up to the new
    # shape; the ball is then clipped at the border when painted.
    q = np.round(p * _scale(pre)).astype(np.int64)
    return PromptPP(prompt.lesion_id, "point", tuple(int(v) for v in q), tuple(int(v) + 1 for v in q))


def map_prompt(prompt: Prompt, pre: Preprocessed) -> PromptPP:
    if isinstance(prompt, BoxPrompt):
        return map_box(prompt, pre)
    if isinstance(prompt, PointPrompt):
        return map_point(prompt, pre)
    raise PromptError(f"unsupported prompt type {type(prompt).__name__}")


def prompts_from_preprocessed_labels(labels_pp: np.ndarray, kind: str) -> list[PromptPP]:
    """One prompt per id of a label map already resampled to the preprocessed grid (6.1).

    Box: inclusive bounds grown to ``[min - 1, max + 2)``, clipped. Point: mean voxel index,
    rounded half to even. Ids are kept as they are (gaps and ids > 255 allowed). The binary /
    instance decision (26-connected components for a binary map) is made by the caller on the
    original map (``core.prompts.instance_map_from_labels``).
    """
    from scipy import ndimage

    if kind not in ("box", "point"):
        raise PromptError(f"unknown prompt kind {kind!r}: use 'point' or 'box'")
    shape = np.asarray(labels_pp.shape)
    ids = [int(v) for v in np.unique(labels_pp) if v > 0]
    out: list[PromptPP] = []
    for lid in ids:
        mask = labels_pp == lid
        if kind == "box":
            sl = ndimage.find_objects(mask.astype(np.uint8))[0]
            lo = np.clip([s.start - 1 for s in sl], 0, shape)
            hi = np.clip([s.stop + 1 for s in sl], 0, shape)  # (max + 1) + 1 = max + 2
            out.append(PromptPP(lid, "box", tuple(int(v) for v in lo), tuple(int(v) for v in hi)))
        else:
            c = np.round(np.argwhere(mask).mean(axis=0)).astype(np.int64)
            out.append(PromptPP(lid, "point", tuple(int(v) for v in c), tuple(int(v) + 1 for v in c)))
    return out


def prompt_extent(p: PromptPP, shape) -> tuple[np.ndarray, np.ndarray]:
    """Half-open bounding box of the prompt's non-zero voxels in the dense channel (ball clipped at borders)."""
    shape = np.asarray(shape)
    if p.kind == "box":
        return np.asarray(p.lo), np.asarray(p.hi)
    # Paint the ball into its own clipped box and take the non-zero bounds: exact at borders.
    r = point_ball().shape[0] // 2
    c = np.asarray(p.point)
    lo, hi = np.clip(c - r, 0, shape), np.clip(c + r + 1, 0, shape)
    if np.any(hi <= lo):
        raise PromptError(f"lesion {p.lesion_id}: the point prompt lies outside the preprocessed volume")
    small = np.zeros(tuple(int(v) for v in hi - lo), dtype=bool)
    paint_prompt(p, small, lo, True)
    nz = np.argwhere(small)
    return lo + nz.min(axis=0), lo + nz.max(axis=0) + 1


def paint_prompt(p: PromptPP, out: np.ndarray, origin, value: float = 1.0) -> None:
    """Paint the prompt into ``out`` (z, y, x), whose voxel (0, 0, 0) sits at ``origin`` in preprocessed
    (unpadded) coordinates; parts outside ``out`` are dropped (this is the clipping at borders)."""
    origin = np.asarray(origin, dtype=np.int64)
    size = np.asarray(out.shape)
    if p.kind == "box":
        lo = np.clip(np.asarray(p.lo) - origin, 0, size)
        hi = np.clip(np.asarray(p.hi) - origin, 0, size)
        if np.all(hi > lo):
            out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = value
        return
    ball = point_ball()
    r = ball.shape[0] // 2
    start = np.asarray(p.point) - r - origin  # ball's first voxel in ``out`` coordinates
    lo = np.clip(start, 0, size)
    hi = np.clip(start + ball.shape[0], 0, size)
    if np.any(hi <= lo):
        return
    b = ball[
        lo[0] - start[0] : hi[0] - start[0], lo[1] - start[1] : hi[1] - start[1], lo[2] - start[2] : hi[2] - start[2]
    ]
    view = out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    view[b] = value


def dense_prompt(p: PromptPP, shape, dtype=np.float32) -> np.ndarray:
    """The full dense prompt channel (0/1) of ``shape``."""
    out = np.zeros(tuple(int(s) for s in shape), dtype=dtype)
    paint_prompt(p, out, (0, 0, 0))
    return out

"""Several prompts for one lesion with an engine that takes one prompt per call (the classical engine).

The classical engine segments one point or one box per lesion and has no negative prompts. The
GUI lets a reader refine a lesion with more clicks, and exclude a region with a negative click, by
combining one engine call per prompt here:

* the lesion is the **union** of the masks its include prompts give (a box and/or points);
* an exclude click is segmented like an include click (the engine finds the region the click is
  on, e.g. the vessel or muscle the lesion leaked into); that region is taken out of the lesion,
  and any connected piece of the lesion that still holds the exclude click (and no include click)
  goes with it.

The combined result keeps the worst status of its parts (``check`` when any part is doubted) and
every part's messages. Pure numpy/scipy on crops: runs in the worker thread.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence

import numpy as np

from ..core.geometry import Geometry
from ..core.progress import ProgressEvent
from ..core.prompts import BoxPrompt, PointPrompt, Prompt
from ..core.results import LesionMask, LesionResult

__all__ = ["combine_lesion", "iter_segment_refined"]


def _union_box(masks: Sequence[LesionMask], geometry: Geometry) -> tuple[np.ndarray, np.ndarray] | None:
    live = [m for m in masks if not m.is_empty]
    if not live:
        return None
    lo = np.min([m.start for m in live], axis=0)
    hi = np.max([m.stop for m in live], axis=0)
    return lo.astype(int), np.minimum(hi, geometry.shape).astype(int)


def _paste(mask: LesionMask, out: np.ndarray, lo: np.ndarray) -> None:
    if mask.is_empty:
        return
    s = np.asarray(mask.start) - lo
    sl = tuple(slice(int(a), int(a) + n) for a, n in zip(s, mask.array.shape, strict=True))
    out[sl] |= mask.array


def combine_lesion(lesion_id: int, include: Sequence[tuple[Prompt, LesionResult]],
                   exclude: Sequence[tuple[PointPrompt, LesionResult]], geometry: Geometry) -> LesionResult:
    """One lesion's result from its include prompts' masks minus its exclude clicks' regions."""
    from scipy import ndimage

    messages: list[str] = []
    statuses = [r.status for _, r in include]
    for _, r in list(include) + list(exclude):
        messages.extend(m for m in r.messages if m not in messages)
    box = _union_box([r.mask for _, r in include], geometry)
    if box is None:
        return LesionResult(lesion_id, LesionMask.empty(geometry), "empty", messages,
                            {"prompts": len(include), "excluded": len(exclude)})
    lo, hi = box
    crop = np.zeros(tuple(hi - lo), dtype=bool)
    for _, r in include:
        _paste(r.mask, crop, lo)
    if exclude:
        neg = np.zeros_like(crop)
        for _, r in exclude:
            _paste(r.mask, neg, lo)
        keep_pts = [np.asarray(p.zyx) - lo for p, _ in include if isinstance(p, PointPrompt)]
        keep_pts += [np.asarray(p.center) - lo for p, _ in include if isinstance(p, BoxPrompt)]
        drop_pts = [np.asarray(p.zyx) - lo for p, _ in exclude]
        # The excluded region is taken out only where it is nearer (in mm) to an exclude click than
        # to every include prompt: a region that also holds an include prompt (the exclude click
        # was on the lesion itself) loses the side of the click, not the whole lesion.
        cut = neg & crop
        if cut.any() and keep_pts:
            idx = np.argwhere(cut).astype(float)
            spacing = np.asarray(geometry.spacing, dtype=float)

            def nearest(points) -> np.ndarray:
                return np.min([np.linalg.norm((idx - p) * spacing, axis=1) for p in points], axis=0)

            nearer_exclude = nearest(drop_pts) < nearest(keep_pts)
            cut[tuple(idx[~nearer_exclude].astype(int).T)] = False
        before = int(crop.sum())
        crop &= ~cut
        comps, _ = ndimage.label(crop)

        def comp_at(pt) -> int:
            pt = np.rint(pt).astype(int)
            if np.all(pt >= 0) and np.all(pt < crop.shape):
                return int(comps[tuple(pt)])
            return 0

        keep = {comp_at(p) for p in keep_pts} - {0}
        for p in drop_pts:  # a piece cut off that still holds the exclude click goes too
            c = comp_at(p)
            if c and c not in keep:
                crop[comps == c] = False
        messages.append(f"lesion {lesion_id}: {len(exclude)} exclude click(s) took out {before - int(crop.sum())} "
                        "voxels")
    status = "check" if "check" in statuses else "ok"
    mask = LesionMask.from_crop(geometry, tuple(int(v) for v in lo), crop)
    return LesionResult(lesion_id, mask, status if not mask.is_empty else "empty", messages,
                        {"prompts": len(include), "excluded": len(exclude)})


def iter_segment_refined(segment_generator, image, jobs) -> Generator[ProgressEvent, None, dict[int, LesionResult]]:
    """Segment every prompt of every pending lesion (one engine call each), then combine per lesion.

    ``segment_generator(prompts)`` is ``api.iter_segment`` bound to the engine and image; prompts
    get temporary ids 1..n so each is its own call. Returns lesion id -> combined LesionResult.
    """
    flat: list[tuple[int, bool, Prompt]] = []
    for job in jobs:
        for p in job.prompts:
            flat.append((job.lesion_id, True, p))
        for p in job.negatives:
            flat.append((job.lesion_id, False, p))
    temp = []
    for k, (_, _, p) in enumerate(flat, start=1):
        temp.append(PointPrompt(k, p.zyx) if isinstance(p, PointPrompt) else BoxPrompt(k, p.box))
    result = yield from segment_generator(temp)
    out: dict[int, LesionResult] = {}
    for job in jobs:
        inc, exc = [], []
        for k, (lid, positive, p) in enumerate(flat, start=1):
            if lid != job.lesion_id:
                continue
            part = result.lesions.get(k) or LesionResult(k, LesionMask.empty(image.geometry), "empty")
            part.messages = [re.sub(rf"\blesion {k}\b", f"lesion {lid}", m) for m in part.messages]
            (inc if positive else exc).append((p, part))
        out[job.lesion_id] = combine_lesion(job.lesion_id, inc, exc, image.geometry)
    return out

"""LesionLocator tracking: baseline lesion masks -> follow-up masks with the same ids.

One step (reference sections 4 and 6.4), for every fold and every mirroring of the three axes:

1. baseline ``x0``, follow-up ``x1`` (nnU-Net preprocessed) and each lesion's baseline mask are
   rounded to float16 (as the official tracker does) and computed in float32 on the CPU
   (autocast on CUDA); the mirroring flips all three;
2. z-search when the z-sizes differ by more than 20 slices (:func:`registration.z_search`);
3. ``x0``, ``x1`` resized to the registration grid (trilinear), uniGradICON's A-to-B field
   computed once per (pair, flip, fold) and cached; every lesion's mask is resized (nearest-exact),
   warped with it (order 0, zero boundary) and resized back to the follow-up (nearest-exact);
4. a patch of ``unet_patch_size`` centred on the warped mask's centre of mass (shifted inside the
   volume, zero-padded where the volume is smaller), UNet on concat(follow-up, warped mask),
   logits (background 1, lesion 0) outside the patch;
5. logits flipped back and averaged over flips and folds in float32, exported into the
   follow-up's geometry. Ids are kept; a lesion whose warped mask is empty in every pass, or whose
   exported mask is empty, is reported lost (never a random centre).

The networks live in :class:`TrackNet` (state-dict prefixes ``reg_net.`` and ``unet.``, buffer
``unet_patch_size``); see :mod:`.registration` for the registration grid.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...core.errors import EngineError
from ...core.image import Image, LabelMap
from ...core.progress import CancelToken, ProgressCallback, report
from ...core.results import LesionMask, LesionResult, compose_label_map
from ..base import TrackingResult, as_lesion_masks
from . import registration as reg
from .registration import (
    CONFIGURATION,
    REG_GRID_PLANS_KEY,
    TrackNet,
    _load_plans,
    build_track_network,
    load_track_model,
)

__all__ = [
    "CONFIGURATION",
    "REG_GRID_PLANS_KEY",
    "TrackNet",
    "TrackModel",
    "build_track_network",
    "patch_box",
    "track_lesions",
    "track_preprocessed",
    "load_track_model",
    "benchmark_tracking_step",
]

#: every mirroring of the three spatial axes (the official tracker always uses all of them)
ALL_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    c for n in range(4) for c in itertools.combinations((0, 1, 2), n)
)


@dataclass
class TrackModel:
    """Tracking networks per fold plus the plans (what :func:`track_lesions` needs).

    ``networks[i]`` holds fold ``folds[i]``'s weights. The engine's loaded model (one network,
    weights swapped per fold) is accepted as well, see :func:`_fold_runner`.
    """

    plans: dict
    networks: Sequence[TrackNet]
    folds: Sequence[int] = ()
    dataset_json: dict | None = None

    def __post_init__(self) -> None:
        if not self.folds:
            self.folds = list(range(len(self.networks)))


def _fold_runner(model) -> tuple[dict, list, Callable[[int], TrackNet]]:
    """(plans, folds, activate) for our TrackModel or the engine's LoadedModel (duck-typed)."""
    if isinstance(model, TrackModel):
        nets = dict(zip(model.folds, model.networks))
        return model.plans, list(model.folds), nets.__getitem__
    if hasattr(model, "use_fold") and hasattr(model, "network"):
        plans = model.folder.plans if hasattr(model, "folder") else model.plans

        def activate(fold: int) -> TrackNet:
            model.use_fold(fold)
            return model.network

        return plans, list(model.folds), activate
    raise EngineError(f"not a tracking model: {type(model).__name__}")


# ------------------------------------------------------------------------ patch and logits
def patch_box(center: Sequence[int], patch: Sequence[int], shape: Sequence[int]):
    """Place a patch around ``center`` inside a volume of ``shape`` (all (z, y, x) voxels).

    The volume is first zero-padded to at least ``patch`` on each axis (``diff // 2`` before);
    the patch starts at ``center - patch // 2`` and is shifted to lie inside the padded volume.

    Returns
    -------
    pad : list of (int, int)
        Padding before/after per axis.
    start : tuple of int
        Patch start in padded coordinates.
    valid : tuple of slice
        Part of the volume (unpadded coordinates) the patch covers.
    inner : tuple of slice
        The same region in patch coordinates.
    """
    pad, start, valid, inner = [], [], [], []
    for c, p, n in zip(center, patch, shape):
        c, p, n = int(c), int(p), int(n)
        diff = max(p - n, 0)
        before = diff // 2
        pad.append((before, diff - before))
        padded = n + diff
        s = min(max(c + before - p // 2, 0), padded - p)
        start.append(s)
        lo, hi = max(s - before, 0), min(s + p - before, n)
        valid.append(slice(lo, hi))
        inner.append(slice(lo + before - s, hi + before - s))
    return pad, tuple(start), tuple(valid), tuple(inner)


class _LogitSum:
    """Sum over passes of (logits - background) inside the union of the patches, in float32.

    Outside its patch every pass predicts the background logits (1, 0), so the average over
    ``n`` passes is ``background + sum / n`` and only the covered box needs storing (a full
    2-channel float32 volume per lesion would be ~0.7 GB on a 400x480x480 follow-up).
    """

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None
        self.acc: np.ndarray | None = None
        self.passes = 0
        self.hits = 0

    def add(self, region: tuple[slice, ...], logits: np.ndarray) -> None:
        lo = np.array([s.start for s in region])
        hi = np.array([s.stop for s in region])
        if self.acc is None:
            self.lo, self.hi = lo, hi
            self.acc = np.zeros((2, *(hi - lo)), dtype=np.float32)
        elif np.any(lo < self.lo) or np.any(hi > self.hi):
            nlo, nhi = np.minimum(lo, self.lo), np.maximum(hi, self.hi)
            grown = np.zeros((2, *(nhi - nlo)), dtype=np.float32)
            old = (slice(None), *(slice(a - b, a - b + n) for a, b, n in zip(self.lo, nlo, self.acc.shape[1:])))
            grown[old] = self.acc
            self.lo, self.hi, self.acc = nlo, nhi, grown
        delta = logits.astype(np.float32, copy=True)
        delta[0] -= 1.0
        self.acc[(slice(None), *(slice(a - b, c - b) for a, c, b in zip(lo, hi, self.lo)))] += delta
        self.hits += 1

    def mean(self) -> np.ndarray:
        """(2, Z, Y, X) float32 average logits over all passes."""
        out = np.zeros((2, *self.shape), dtype=np.float32)
        out[0] = 1.0
        if self.acc is not None and self.passes:
            box = (slice(None), *(slice(a, b) for a, b in zip(self.lo, self.hi)))
            out[box] += self.acc / np.float32(self.passes)
        return out


def _flip(t: torch.Tensor, flip: tuple[int, ...]) -> torch.Tensor:
    return torch.flip(t, [a + 2 for a in flip]) if flip else t


def _autocast(device: torch.device):
    import contextlib

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------ core loop
def track_preprocessed(
    runner,
    x0: np.ndarray,
    x1: np.ndarray,
    prompts: dict[int, np.ndarray],
    *,
    tta: bool,
    device: torch.device | str = "cpu",
    field_cache: reg.FieldCache | None = None,
    pair_key=None,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> dict[int, _LogitSum]:
    """Track lesions between two preprocessed volumes; returns averaged-logit sums per lesion id.

    Parameters
    ----------
    runner : TrackModel or engine model
        Folds and their networks.
    x0, x1 : np.ndarray
        Preprocessed baseline / follow-up, (C, Z, Y, X) float32 (channel 0 is registered).
    prompts : dict of int to np.ndarray or (start, crop)
        Lesion id -> baseline mask (Z0, Y0, X0), bool, on ``x0``'s grid, or its bounding-box crop.
    """
    device = torch.device(device)
    _, folds, activate = _fold_runner(runner)
    cache = field_cache if field_cache is not None else reg.FieldCache()
    cache.bind(runner)
    flips = ALL_FLIPS if tta else ((),)
    ids = list(prompts)
    sums = {i: _LogitSum(x1.shape[1:]) for i in ids}
    total = progress_total or len(folds) * len(flips) * (1 + len(ids))
    step = progress_offset
    # float16 rounding like the official tracker, then float32 compute (fp16 has no CPU kernels).
    t0 = torch.from_numpy(np.ascontiguousarray(x0)).to(torch.float16).float()[None].to(device)
    t1 = torch.from_numpy(np.ascontiguousarray(x1)).to(torch.float16).float()[None].to(device)
    # Each lesion's mask as its bounding-box crop: every pass gathers just the voxels it needs (no
    # full-volume flip, resize or search per lesion and pass; the same numbers, see _warp_region).
    crops = {i: m if isinstance(m, tuple) else _bbox_crop(np.asarray(m, dtype=bool)) for i, m in prompts.items()}
    shape0 = tuple(int(v) for v in x0.shape[1:])
    for fold in folds:
        net = activate(fold)
        net.eval()
        grid, patch = net.grid, net.patch_size
        for flip in flips:
            if cancel is not None:
                cancel.raise_if_cancelled()
            f0, f1 = _flip(t0, flip), _flip(t1, flip)
            zs = reg.z_search(f0[:, :1], f1[:, :1], grid)
            r0, r1 = f0[:, :1], f1[:, :1]
            if zs.cropped == "baseline":
                r0 = r0[:, :, zs.offset : zs.offset + zs.length]
            elif zs.cropped == "followup":
                r1 = r1[:, :, zs.offset : zs.offset + zs.length]

            def compute(r0=r0, r1=r1, net=net, grid=grid):
                with torch.inference_mode(), _autocast(device):
                    a = reg.resize_image(r0, (grid,) * 3)
                    b = reg.resize_image(r1, (grid,) * 3)
                    return reg.compute_field_a_to_b(net.reg_net, a, b).float()

            phi = cache.get((pair_key, flip, fold), compute)
            step += 1
            report(on_progress, step, total, f"fold {fold}, flip {flip or 'none'}: registration")
            for lesion_id in ids:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                sums[lesion_id].passes += 1
                warped = _warp_region(net, crops[lesion_id], shape0, flip, zs, r1.shape[2:], f1.shape[2:], phi, grid,
                                      device)
                step += 1
                if warped is not None:
                    region, logits = _predict_patch_region(net, f1, warped, patch, device)
                    _accumulate_flipped_back(sums[lesion_id], region, logits, flip, f1.shape[2:])
                report(on_progress, step, total, f"fold {fold}, flip {flip or 'none'}: lesion {lesion_id}")
    return sums


def _bbox_crop(mask: np.ndarray):
    """(start, crop) of a bool mask's bounding box; an empty mask gives a zero-size crop at 0."""
    if not mask.any():
        return (0, 0, 0), np.zeros((0, 0, 0), dtype=bool)
    lo, hi = [], []
    for a in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]) + 1)
    return tuple(lo), mask[tuple(slice(a, b) for a, b in zip(lo, hi))]


@functools.lru_cache(maxsize=64)
def _nearest_map(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output voxel of a nearest-exact resize along one axis, from PyTorch's own kernel
    (a float32 ramp resized like the float32 masks are), so region gathers equal the full resize."""
    if n_in == n_out:
        return np.arange(n_out)
    ramp = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in)
    out = torch.nn.functional.interpolate(ramp, size=int(n_out), mode="nearest-exact")[0, 0]
    return out.long().numpy()


def _warp_region(net, crop, shape0, flip, zs: reg.ZSearch, reg_shape1, full_shape1, phi, grid, device):
    """Like :func:`_warp_to_followup` for a mask given as its crop ``(start, array)`` on the (unflipped)
    baseline grid ``shape0``: returns ``(start, region)``, the warped mask on the follow-up grid (flipped
    frame) restricted to the box outside which it is zero, or None when it warps to nothing.

    The flip, the z-crop and both nearest-exact resizes are index gathers (PyTorch's own index rule,
    :func:`_nearest_map`), so the values are those of the full-volume computation; only the voxels
    that can be set are built."""
    start, arr = crop
    if arr.size == 0:
        return None
    # baseline (flipped frame, z-cropped) -> registration grid
    src_shape = list(shape0)
    z_off = 0
    if zs.cropped == "baseline":
        src_shape[0], z_off = zs.length, zs.offset
    small = np.zeros((grid,) * 3, dtype=np.float32)
    sel, rel = [], []
    for a in range(3):
        src = _nearest_map(int(src_shape[a]), grid) + (z_off if a == 0 else 0)
        if a in flip:
            src = shape0[a] - 1 - src
        r = src - start[a]
        ok = (r >= 0) & (r < arr.shape[a])
        sel.append(np.flatnonzero(ok))
        rel.append(r[ok])
    if all(len(v) for v in sel):
        small[np.ix_(*sel)] = arr[np.ix_(*rel)]
    prompt = torch.from_numpy(small)[None, None].to(device)
    with torch.inference_mode():
        warped = reg.warp_prompt(net.reg_net, prompt, phi)[0, 0]
    nz = torch.nonzero(warped != 0)
    if nz.shape[0] == 0:
        return None
    lo, hi = nz.min(0).values.cpu().numpy(), nz.max(0).values.cpu().numpy() + 1
    # registration grid -> follow-up (flipped frame): outputs whose source lies in [lo, hi)
    out_lo, maps = [], []
    for a in range(3):
        m = _nearest_map(grid, int(reg_shape1[a]))
        i0, i1 = int(np.searchsorted(m, lo[a], "left")), int(np.searchsorted(m, hi[a], "left"))
        out_lo.append(i0)
        maps.append(torch.from_numpy(m[i0:i1]).to(warped.device))
    region = warped[maps[0]][:, maps[1]][:, :, maps[2]]
    if zs.cropped == "followup":
        out_lo[0] += zs.offset
    if not bool((region != 0).any()):
        return None
    return tuple(out_lo), region


def _predict_patch_region(net, image: torch.Tensor, warped, patch, device):
    """:func:`_predict_patch` for a warped mask given as ``(start, region)`` (zero outside the region)."""
    start, region = warped
    nz = torch.nonzero(region != 0).cpu().numpy().astype(np.int64)
    n = nz.shape[0]
    idx = (nz.sum(0) + n * np.asarray(start, dtype=np.int64)) / n  # exact sums, one division (as a mean)
    center = np.round(idx).astype(int)  # half to even, as numpy rounds
    shape = tuple(image.shape[2:])
    pad, _start, valid, inner = patch_box(center, patch, shape)
    box = (slice(None), slice(None), *valid)
    w = torch.zeros((1, 1, *(v.stop - v.start for v in valid)), dtype=image.dtype, device=image.device)
    dst, src = [], []
    for v, s, n_r in zip(valid, start, region.shape):
        a, b = max(v.start, s), min(v.stop, s + n_r)
        dst.append(slice(max(a - v.start, 0), max(b - v.start, 0)))
        src.append(slice(max(a - s, 0), max(b - s, 0)))
    if all(d.stop > d.start for d in dst):
        w[(0, 0, *dst)] = region[tuple(src)].to(image.dtype)
    return valid, _forward_padded(net, torch.cat([image[box], w], 1), inner, patch, device)


def _warp_to_followup(net, prompt, zs: reg.ZSearch, reg_shape1, full_shape1, phi, grid) -> torch.Tensor | None:
    """Baseline mask -> follow-up grid (full, flipped frame); None when it warps to nothing.

    The plain full-volume form (reference for :func:`_warp_region`, which the tracker uses)."""
    if zs.cropped == "baseline":
        prompt = prompt[:, :, zs.offset : zs.offset + zs.length]
    with torch.inference_mode():
        small = reg.resize_mask(prompt, (grid,) * 3)
        warped = reg.warp_prompt(net.reg_net, small, phi)
        back = reg.resize_mask(warped, tuple(reg_shape1))
    if zs.cropped == "followup":
        full = torch.zeros((1, 1, *full_shape1), dtype=back.dtype, device=back.device)
        full[:, :, zs.offset : zs.offset + zs.length] = back
        back = full
    if not bool((back != 0).any()):
        return None
    return back


def _predict_patch(net, image: torch.Tensor, warped: torch.Tensor, patch, device):
    """UNet logits on the patch centred on the warped mask; returns (region, (2, ...) numpy)."""
    idx = torch.nonzero(warped[0, 0] != 0).double().mean(0).cpu().numpy()
    center = np.round(idx).astype(int)  # half to even, as numpy rounds
    shape = tuple(image.shape[2:])
    pad, start, valid, inner = patch_box(center, patch, shape)
    # Cut first, then zero-pad the cut up to the patch: the same values as padding the whole
    # volume and cutting, without copying the volume.
    box = (slice(None), slice(None), *valid)
    return valid, _forward_padded(net, torch.cat([image[box], warped[box].to(image.dtype)], 1), inner, patch,
                                  device)


def _forward_padded(net, x: torch.Tensor, inner, patch, device) -> np.ndarray:
    """The UNet on ``x`` zero-padded to ``patch`` (``inner`` is where ``x`` sits in it); logits on ``inner``."""
    widths = [(i.start, p - i.stop) for i, p in zip(inner, patch)]
    if any(b or a for b, a in widths):
        flat = [v for b_a in reversed(widths) for v in b_a]  # F.pad wants the last axis first
        x = torch.nn.functional.pad(x, flat, mode="constant", value=0.0)
    with torch.inference_mode(), _autocast(device):
        out = net.unet(x.contiguous())
    return out[0].float()[(slice(None), *inner)].cpu().numpy()


def _accumulate_flipped_back(acc: _LogitSum, region, logits: np.ndarray, flip, shape) -> None:
    if flip:
        region = list(region)
        for a in flip:
            s = region[a]
            region[a] = slice(shape[a] - s.stop, shape[a] - s.start)
        logits = np.flip(logits, [a + 1 for a in flip])
        region = tuple(region)
    acc.add(region, logits)


# ------------------------------------------------------------------------- public entry
def track_lesions(
    track_model,
    baseline: Image,
    baseline_labels,
    followup: Image,
    *,
    tta: bool,
    device="cpu",
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    field_cache: reg.FieldCache | None = None,
) -> TrackingResult:
    """Track every baseline lesion into ``followup`` from its own whole mask (one step, ids kept).

    Parameters
    ----------
    track_model : TrackModel or the engine's loaded tracking model
    baseline, followup : Image
        CT volumes (HU) with their own geometries (sizes, spacings and origins may differ).
    baseline_labels : mapping of int to LesionMask, or LabelMap
        Each lesion's own whole mask on ``baseline``'s grid (masks may overlap: every one is its
        own lesion's prompt), or an instance map whose every non-zero id is one lesion.
    tta : bool
        Mirror all three axes (8 passes per fold), as the official tracker always does.
    device : str or torch.device

    Returns
    -------
    TrackingResult
        ``lesions[id]``: each lesion's own whole mask on ``followup``'s grid (status ``lost`` where it
        was not found: warped mask empty in every pass, or empty prediction; ``check`` where the
        engine doubts it); ``labels``: the display instance map; ``lost_ids``.
    """
    if isinstance(baseline_labels, LabelMap):
        baseline.geometry.require_same_grid(baseline_labels.geometry, "baseline labels")
    sources: dict[int, LesionMask] = as_lesion_masks(baseline_labels)
    for lid, m in sources.items():
        baseline.geometry.require_same_grid(m.geometry, f"lesion {lid}'s baseline mask")
    device = torch.device(device)
    plans, folds, _ = _fold_runner(track_model)
    ids = sorted(sources)
    if not ids:
        return TrackingResult(LabelMap.empty(followup.geometry, name=f"{followup.name}_lesions"), [],
                              ["the baseline has no lesions to track"])
    n_flips = len(ALL_FLIPS) if tta else 1
    total = 2 + len(folds) * n_flips * (1 + len(ids)) + len(ids)
    pm, cm = _managers(track_model, plans)
    report(on_progress, 0, total, "preprocessing baseline and follow-up")
    pre0, masks = _preprocess(baseline, pm, cm, sources)
    report(on_progress, 1, total, "baseline preprocessed")
    pre1, _ = _preprocess(followup, pm, cm, {})
    report(on_progress, 2, total, "follow-up preprocessed")
    provenance = {"engine": "lesionlocator", "tracked_from": baseline.name, "folds": [int(f) for f in folds],
                  "tta": bool(tta)}
    notes: dict[int, list[str]] = {i: [] for i in ids}
    lesions: dict[int, LesionResult] = {}
    prompts = {}
    for i in ids:
        if masks[i][1].any():
            prompts[i] = masks[i]
        elif sources[i].is_empty:
            notes[i].append("its baseline mask is empty; not tracked")
        else:
            notes[i].append("its baseline mask vanished when resampled to the model spacing; not tracked")
    step = 2
    sums = {}
    if prompts:
        total = 2 + len(folds) * n_flips * (1 + len(prompts)) + len(ids)
        sums = track_preprocessed(
            track_model, pre0.data, pre1.data, prompts, tta=tta, device=device, field_cache=field_cache,
            pair_key=(baseline, followup), on_progress=on_progress, cancel=cancel,
            progress_offset=2, progress_total=total,
        )
        step += len(folds) * n_flips * (1 + len(prompts))
    else:
        total = 2 + len(ids)
    empty = LesionMask.empty(followup.geometry)
    for i in ids:
        if i not in sums:
            lesions[i] = LesionResult(i, empty, "lost", notes[i], dict(provenance))
            step += 1
            report(on_progress, step, total, f"lesion {i} not tracked")
            continue
        s = sums[i]
        if cancel is not None:
            cancel.raise_if_cancelled()
        if s.hits == 0:
            notes[i].append("registration moved it outside the follow-up in every pass; not found")
            lesions[i] = LesionResult(i, empty, "lost", notes[i], dict(provenance))
        else:
            mask = _export_lesion(s, pre1, cm, followup.geometry)
            if mask.is_empty:
                notes[i].append("the network found no lesion voxels at the registered position; not found")
                lesions[i] = LesionResult(i, mask, "lost", notes[i], dict(provenance))
            else:
                doubts = []
                if s.hits < s.passes:
                    doubts.append(f"warped outside the follow-up in {s.passes - s.hits} of {s.passes} passes")
                edge = _patch_limit_axes(s)
                if edge:
                    doubts.append(f"the mask reaches the edge of the network's patch (along {', '.join(edge)}); "
                                  "the lesion may continue beyond it: check it")
                notes[i].extend(doubts)
                lesions[i] = LesionResult(i, mask, "check" if doubts else "ok", notes[i], dict(provenance))
        step += 1
        report(on_progress, step, total, f"lesion {i} exported")
    labels = compose_label_map(lesions, followup.geometry, f"{followup.name}_lesions")
    messages = [f"lesion {i}: {m}" for i in ids for m in lesions[i].messages]
    lost = sorted(i for i, r in lesions.items() if r.status == "lost")
    return TrackingResult(labels, lost, messages, lesions)


def _box_logits(s: _LogitSum) -> np.ndarray:
    """The averaged logits on the patches' union ``[s.lo, s.hi)``: the same numbers as ``s.mean()`` there
    (background (1, 0) everywhere else)."""
    out = np.zeros((2, *(s.hi - s.lo)), dtype=np.float32)
    out[0] = 1.0
    out += s.acc / np.float32(s.passes)
    return out


def _export_lesion(s: _LogitSum, pre, cm, geometry) -> LesionMask:
    """One lesion's own mask on the follow-up's original grid from its averaged logits, resampling only the
    output region whose interpolation can reach the patches (everything else is background in the
    whole-volume export too: :func:`segmentation.export_region_crop`, tested equal to :func:`_export`)."""
    from .segmentation import export_region_crop

    if s.acc is None or not s.passes:
        return LesionMask.empty(geometry)
    start, crop = export_region_crop(torch.from_numpy(_box_logits(s)), s.lo, pre, cm, fill=(1.0, 0.0))
    return LesionMask.from_crop(geometry, start, crop)


def _patch_limit_axes(s: _LogitSum) -> list[str]:
    """Axes along which the averaged prediction (preprocessed grid) touches a face of the patches' union
    that lies inside the volume."""
    if s.acc is None:
        return []
    box = _box_logits(s)
    pred = box[1] > box[0]
    out = []
    for a, name in enumerate("zyx"):
        low = int(s.lo[a]) > 0 and bool(np.take(pred, 0, axis=a).any())
        high = int(s.hi[a]) < s.shape[a] and bool(np.take(pred, -1, axis=a).any())
        if low or high:
            out.append(name)
    return out


def _managers(model, plans: dict):
    """nnU-Net's PlansManager and 3d_fullres ConfigurationManager (the engine's, when it has them)."""
    pm = getattr(model, "plans_manager", None)
    cm = getattr(model, "configuration_manager", None)
    if pm is None or cm is None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        pm = PlansManager(plans)
        cm = pm.get_configuration(CONFIGURATION)
    return pm, cm


def _preprocess(image: Image, pm, cm, masks: dict[int, LesionMask]):
    """Preprocess ``image`` like DefaultPreprocessor; each lesion's own whole mask is resampled as a
    segmentation on its own (one lesion per prompt, as the official tracker feeds them), as a crop
    ``(start, bool array)`` on the preprocessed grid (:func:`resample_own_mask`)."""
    from .preprocessing import preprocess_image

    pre = preprocess_image(image.array, image.geometry.spacing, pm, cm)
    out = {i: resample_own_mask(m, pre, cm) for i, m in masks.items()}
    return pre, out


def resample_own_mask(mask: LesionMask, pre, cm):
    """One lesion's own mask resampled to the preprocessed grid like a segmentation (``resampling_fn_seg``),
    as ``(start, bool crop)``: only the region whose interpolation can reach the mask is resampled, on a
    crop aligned so the numbers equal the whole-volume call's (``regions.aligned_crop``); the whole volume
    where the plans allow no exact region. Tested equal to ``resample_label_map`` of the full mask."""
    from .preprocessing import resample_label_map
    from .regions import aligned_crop, resampling_is_local
    from .segmentation import _touching_outputs

    def whole():
        return _bbox_crop(resample_label_map(mask.to_full().astype(np.uint8), pre, cm) == 1)

    if mask.is_empty:
        return (0, 0, 0), np.zeros((0, 0, 0), dtype=bool)
    off = np.asarray(pre.crop_offset)
    lo = np.maximum(np.asarray(mask.start) - off, 0)
    hi = np.minimum(np.asarray(mask.stop) - off, np.asarray(pre.shape_after_cropping))
    if np.any(hi <= lo):
        return (0, 0, 0), np.zeros((0, 0, 0), dtype=bool)  # outside the image's non-zero box: as the full path
    local = resampling_is_local(cm, "seg")
    crops = []
    for n_in, n_out, a, b in zip(pre.shape_after_cropping, pre.new_shape, lo, hi):
        k0, k1 = _touching_outputs(int(n_in), int(n_out), int(a), int(b))
        crops.append(aligned_crop(int(n_in), int(n_out), k0, k1, local))
    if not local or all(c.a0 == 0 and c.a1 == n for c, n in zip(crops, pre.shape_after_cropping)):
        return whole()
    region = np.zeros(tuple(c.a1 - c.a0 for c in crops), dtype=np.int16)
    src = []
    dst = []
    for c, s0, arr_n, o in zip(crops, mask.start, mask.array.shape, off):
        a, b = max(c.a0 + o, s0), min(c.a1 + o, s0 + arr_n)  # original-grid indices
        src.append(slice(a - s0, b - s0))
        dst.append(slice(a - o - c.a0, b - o - c.a0))
    region[tuple(dst)] = mask.array[tuple(src)]
    if region.all():
        return whole()  # no background in the crop: nnU-Net's label set would differ from the whole call's
    out_shape = tuple(c.b1 - c.b0 for c in crops)
    res = np.asarray(cm.resampling_fn_seg(region[None], out_shape, pre.original_spacing, pre.target_spacing))[0]
    keep = tuple(slice(c.k0 - c.b0, c.k1 - c.b0) for c in crops)
    start, crop = _bbox_crop(res[keep] == 1)
    return tuple(int(c.k0) + s_ for c, s_ in zip(crops, start)), crop


def _export(logits: np.ndarray, pre, cm) -> np.ndarray:
    """(2, z, y, x) logits on the preprocessed grid -> bool mask on the original image grid
    (``resampling_fn_probabilities`` back to the cropped shape, argmax, paste into the crop box)."""
    res = cm.resampling_fn_probabilities(logits, pre.shape_after_cropping, pre.target_spacing, pre.original_spacing)
    if isinstance(res, torch.Tensor):
        res = res.cpu().numpy()
    seg = np.argmax(np.asarray(res), axis=0) == 1
    full = np.zeros(pre.shape_before_cropping, dtype=bool)
    full[pre.crop_slices] = seg
    return full


# ---------------------------------------------------------------------------- benchmark
def benchmark_tracking_step(
    plans: dict | str | Path,
    *,
    shape: Sequence[int] = (160, 256, 256),
    device="cpu",
    seed: int = 0,
    full_forward: bool = True,
    tiny: bool = False,
    print_fn: Callable[[str], None] = print,
) -> dict[str, float]:
    """Time one tracking step with the real networks and random weights.

    The UNet is the one ``plans`` describes (the ResEnc-L reference plans for real figures) and
    uniGradICON runs on 175^3 (``tiny``: 65^3, for a smoke test); one fold, TTA off, a synthetic
    preprocessed pair of ``shape`` (z, y, x) voxels with one lesion. Also times the network's full
    two-direction training forward and checks that its A-to-B field equals the inference-only
    one. Each figure is printed as soon as it is measured; returns them (seconds, ratio, flag).
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    t = time.perf_counter()
    net = build_track_network(plans, tiny=tiny).to(device)
    times = {"build_s": time.perf_counter() - t}
    g = net.grid
    print_fn(
        f"tracking step on {device} (torch threads {torch.get_num_threads()}), follow-up {tuple(shape)}, "
        f"registration grid {g}^3, UNet patch {net.patch_size}, one fold, TTA off"
    )

    def record(key: str, value: float) -> None:
        times[key] = value
        print_fn(f"  {key}: {value:.3f}")

    record("build_s", times["build_s"])
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((1, *shape)).astype(np.float32)
    x1 = np.roll(x0, 3, axis=1)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = np.array(shape) // 2
    mask = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 10**2
    a = reg.resize_image(torch.from_numpy(x0)[None].to(device), (g,) * 3)
    b = reg.resize_image(torch.from_numpy(x1)[None].to(device), (g,) * 3)
    with torch.inference_mode(), _autocast(device):
        t = time.perf_counter()
        phi = reg.compute_field_a_to_b(net.reg_net, a, b)
        _sync(device)
        record("registration_a_to_b_s", time.perf_counter() - t)
        if full_forward:
            t = time.perf_counter()
            phi_full = reg.full_forward_field(net.reg_net, a, b)
            _sync(device)
            record("registration_full_forward_s", time.perf_counter() - t)
            record("full_over_a_to_b", times["registration_full_forward_s"] / times["registration_a_to_b_s"])
            record("fields_identical", float(torch.equal(phi, phi_full)))
    model = TrackModel(_load_plans(plans), [net], [0])
    t = time.perf_counter()
    track_preprocessed(model, x0, x1, {1: mask}, tta=False, device=device)
    _sync(device)
    record("tracking_step_s", time.perf_counter() - t)
    return times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

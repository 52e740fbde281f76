"""Promptable segmentation of one lesion: tiles -> network (+ mirroring TTA) -> Gaussian-weighted
accumulation -> fold average -> export to the original grid (reference sections 3 and 6.1-6.3).

Two implementations with identical masks:

* ``segment_full_volume_reference``: the plain pipeline, as the official tool runs it: full
  preprocessing, a full dense prompt channel, full padded volume, full-size accumulators, and
  the plans' ``resampling_fn_probabilities`` over the whole volume.
* ``segment_prompt_fast``: reuses a cached ``Preprocessed`` image, builds only the tiles the
  prompt needs, accumulates over the tiles' union only, and resamples back only the output
  region whose interpolation stencil touches a covered voxel (everything else is background in
  the full pipeline too, see 6.3), on crops aligned so the interpolation coordinates are the
  same numbers as in the full-volume call (``region_export_plan``).

Numerics (6.3): by default float16 accumulators; voxels no tile covered are 0/0 = NaN, the NaN
spreads through the export interpolation, and ``lesion > background`` is False for NaN, so any
output voxel interpolated from an uncovered voxel is background. ``precision="float32"``
accumulates in float32 and treats uncovered voxels as plain background (labelled: masks may
differ from the official ones near the patch border).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...core.errors import EngineError
from ...core.progress import CancelToken
from .checkpoint import LoadedModel
from .preprocessing import Preprocessed, preprocess_image
from .prompting import PromptPP, dense_prompt, paint_prompt, prompt_extent
from .regions import AxisCrop, aligned_crop, resampling_is_local
from .tiling import gaussian_map, mirror_combinations, padding_for, select_tiles, tile_union

__all__ = [
    "ForwardCounter",
    "predict_tile",
    "tile_input",
    "plan_tiles",
    "needed_region",
    "accumulate_logits",
    "average_folds",
    "export_full",
    "region_export_plan",
    "export_region",
    "export_region_crop",
    "FastMask",
    "segment_full_volume_reference",
    "segment_prompt_fast",
    "segment_prompt_fast_crop",
    "count_forwards",
]

PRECISIONS = ("float16", "float32")


class ForwardCounter:
    """Calls ``tick(done, total, seconds_left)`` after every network forward and checks the cancel token."""

    def __init__(
        self,
        total: int,
        tick: Callable[[int, int, float | None], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.total = total
        self.done = 0
        self.tick = tick
        self.cancel = cancel
        self._t0 = time.perf_counter()

    def check(self) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()

    def step(self) -> None:
        self.done += 1
        if self.tick is not None:
            per = (time.perf_counter() - self._t0) / self.done
            self.tick(self.done, self.total, per * (self.total - self.done))
        self.check()


def count_forwards(n_tiles: int, n_folds: int, mirror_axes, tta: bool) -> int:
    return n_tiles * n_folds * (1 + (len(mirror_combinations(mirror_axes)) if tta else 0))


def predict_tile(model: LoadedModel, x, mirror_dims, counter: ForwardCounter | None = None):
    """Logits (2, *patch) float32 for one input tile ``x`` (1, c, *patch) on the model's device.

    With ``mirror_dims`` (from ``mirror_combinations``), the flipped predictions are flipped back and
    averaged with the plain one (nnU-Net's order: plain first, then each combination)."""
    import torch

    net = model.network
    pred = net(x).float()
    if counter:
        counter.step()
    for dims in mirror_dims:
        pred += torch.flip(net(torch.flip(x, dims)), dims).float()
        if counter:
            counter.step()
    if mirror_dims:
        pred /= len(mirror_dims) + 1
    return pred[0]


def tile_input(
    data: np.ndarray, prompt: PromptPP, start_padded, patch, pad_before, data_origin=(0, 0, 0), full_shape=None
) -> np.ndarray:
    """(c + 1, *patch) float32 network input at ``start_padded`` without building the padded volume:
    image voxels where the tile overlaps the volume, 0 (the padding value) elsewhere, plus the prompt.

    ``data`` may be a region of the preprocessed volume starting at ``data_origin`` (``full_shape``:
    the whole volume's shape); it must contain the tile's part of the volume."""
    c = data.shape[0]
    patch = np.asarray(patch)
    origin = np.asarray(start_padded) - np.asarray(pad_before)  # tile origin in unpadded coordinates
    out = np.zeros((c + 1, *patch), dtype=np.float32)
    shape = np.asarray(full_shape if full_shape is not None else data.shape[1:])
    d0 = np.asarray(data_origin)
    lo = np.clip(origin, 0, shape)
    hi = np.clip(origin + patch, 0, shape)
    if np.all(hi > lo):
        if np.any(lo < d0) or np.any(hi > d0 + np.asarray(data.shape[1:])):
            raise ValueError(f"tile [{lo}, {hi}) is not inside the preprocessed region at {d0} of {data.shape[1:]}")
        dst = tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(lo, hi, origin))
        out[(slice(0, c), *dst)] = data[(slice(None), *(slice(int(a - z), int(b - z)) for a, b, z in zip(lo, hi, d0)))]
        # The prompt is clipped at the volume's border: the padding stays 0 in both channels.
        paint_prompt(prompt, out[c][dst], lo)
    return out


def needed_region(prompt: PromptPP, new_shape, patch) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed voxels ``[lo, hi)`` (unpadded) the prompt's tiles read."""
    starts, _padded, before = plan_tiles(prompt, new_shape, patch)
    r_lo, r_hi = tile_union(starts, patch)
    lo = np.maximum(r_lo - np.asarray(before), 0)
    hi = np.minimum(r_hi - np.asarray(before), np.asarray(new_shape))
    return lo, hi


def plan_tiles(prompt: PromptPP, new_shape, patch):
    """(tile starts in padded coords, padded shape, pad before) for a prompt on a preprocessed volume."""
    padded, before = padding_for(new_shape, patch)
    lo, hi = prompt_extent(prompt, new_shape)
    starts = select_tiles(lo + np.asarray(before), hi + np.asarray(before), padded, patch)
    return starts, padded, before


def accumulate_logits(
    model: LoadedModel,
    fold: int,
    starts,
    get_input,
    region_lo,
    region_shape,
    *,
    tta: bool,
    precision: str,
    counter: ForwardCounter | None,
):
    """Gaussian-weighted logits of one fold over a region (padded coords), normalised by the weights.

    float16: ``logits[tile] += pred * gaussian`` (product in float32, stored in float16), weights in
    float16, then ``logits / weights`` (NaN where no tile covered). float32: same in float32 and
    uncovered voxels set to (0, 0), i.e. background.
    """
    import torch

    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    dev = model.device
    patch = model.patch_size
    dtype = torch.float16 if precision == "float16" else torch.float32
    gauss = gaussian_map(patch, dev)
    if precision == "float32":
        gauss = gauss.float()
    logits = torch.zeros((2, *region_shape), dtype=dtype, device=dev)
    weights = torch.zeros(tuple(region_shape), dtype=dtype, device=dev)
    mirror_dims = mirror_combinations(model.mirror_axes) if tta else []
    model.use_fold(fold)
    from .device import inference_context

    with inference_context(dev):
        for start in starts:
            if counter:
                counter.check()
            x = torch.from_numpy(get_input(start))[None].to(dev)
            pred = predict_tile(model, x, mirror_dims, counter)
            sl = tuple(slice(int(s - r), int(s - r + p)) for s, r, p in zip(start, region_lo, patch))
            logits[(slice(None), *sl)] += pred * gauss
            weights[sl] += gauss
    if precision == "float16":
        logits /= weights
    else:
        covered = weights > 0
        logits = torch.where(covered, logits / torch.where(covered, weights, torch.ones_like(weights)), 0.0)
    return logits


def average_folds(per_fold):
    """Sum fold logits in their dtype in fold order, then divide by the number of folds (nnU-Net's predictor)."""
    total = None
    n = 0
    for logits in per_fold:
        total = logits if total is None else total + logits
        n += 1
    if n > 1:
        total /= n
    return total


def _mask_from_logits(logits) -> np.ndarray:
    """Lesion where channel 1 > channel 0 (argmax, ties to background); NaN compares False -> background."""
    import torch

    t = torch.as_tensor(logits)
    return (t[1] > t[0]).cpu().numpy()


def export_full(logits, pre: Preprocessed, configuration_manager) -> np.ndarray:
    """(2, *new_shape) logits -> bool mask on the original grid (resample whole volume, argmax, uncrop)."""
    res = configuration_manager.resampling_fn_probabilities(
        logits.cpu(), pre.shape_after_cropping, pre.target_spacing, pre.original_spacing
    )
    seg = _mask_from_logits(res)
    full = np.zeros(pre.shape_before_cropping, dtype=bool)
    full[pre.crop_slices] = seg
    return full


# -------------------------------------------------------------- region export
def _touching_outputs(n_in: int, n_out: int, u0: int, u1: int) -> tuple[int, int]:
    """Outputs whose (<= 2 voxel) interpolation stencil can touch the input range ``[u0, u1)``, plus 2 of slack."""
    s = n_in / n_out
    j = np.arange(n_out, dtype=np.float64)
    i0 = np.floor(np.maximum(s * (j + 0.5) - 0.5, 0.0))
    touch = np.flatnonzero((i0 + 1 >= u0) & (i0 <= u1 - 1))
    if not touch.size:
        return 0, n_out
    return max(0, int(touch[0]) - 2), min(n_out, int(touch[-1]) + 3)


def region_export_plan(u_lo, u_hi, pre: Preprocessed, configuration_manager) -> list[AxisCrop]:
    """Per-axis crops for exporting logits known only on ``[u_lo, u_hi)`` (unpadded preprocessed coords);
    outside the kept outputs every voxel is background in the whole-volume export too."""
    local = resampling_is_local(configuration_manager, "probabilities")
    out = []
    for n_in, n_out, a, b in zip(pre.new_shape, pre.shape_after_cropping, u_lo, u_hi):
        k0, k1 = _touching_outputs(int(n_in), int(n_out), int(a), int(b))
        out.append(aligned_crop(int(n_in), int(n_out), k0, k1, local))
    return out


def export_region_crop(logits_u, u_lo, pre: Preprocessed, configuration_manager, fill=float("nan")):
    """Like ``export_full`` for logits given on ``[u_lo, u_lo + shape)`` only (``fill`` elsewhere: NaN for
    the float16 numerics, 0 for float32), resampling only the output region that can be lesion.

    Returns ``(start, crop)``: the bool mask on the original grid's crop ``[start, start + crop.shape)``;
    every voxel outside the crop is background in the whole-volume export too."""
    import torch

    u_lo = np.asarray(u_lo)
    u_hi = u_lo + np.asarray(logits_u.shape[1:])
    plan = region_export_plan(u_lo, u_hi, pre, configuration_manager)
    crop = torch.empty((2, *(ap.a1 - ap.a0 for ap in plan)), dtype=logits_u.dtype)
    for c, value in enumerate(fill if isinstance(fill, (tuple, list)) else (fill, fill)):
        crop[c] = value  # per channel: tracking's uncovered voxels are background logits (1, 0)
    src, dst = [], []
    for ap, lo, hi in zip(plan, u_lo, u_hi):
        a, b = max(ap.a0, int(lo)), min(ap.a1, int(hi))
        src.append(slice(a - int(lo), b - int(lo)))
        dst.append(slice(a - ap.a0, b - ap.a0))
    crop[(slice(None), *dst)] = logits_u.cpu()[(slice(None), *src)]
    out_shape = tuple(ap.b1 - ap.b0 for ap in plan)
    res = configuration_manager.resampling_fn_probabilities(crop, out_shape, pre.target_spacing, pre.original_spacing)
    seg = _mask_from_logits(res)
    keep = tuple(slice(ap.k0 - ap.b0, ap.k1 - ap.b0) for ap in plan)
    start = tuple(int(o) + ap.k0 for o, ap in zip(pre.crop_offset, plan))
    return start, np.ascontiguousarray(seg[keep])


def export_region(logits_u, u_lo, pre: Preprocessed, configuration_manager, fill=float("nan")) -> np.ndarray:
    """:func:`export_region_crop` pasted into a full bool volume on the original grid."""
    start, crop = export_region_crop(logits_u, u_lo, pre, configuration_manager, fill)
    full = np.zeros(pre.shape_before_cropping, dtype=bool)
    full[tuple(slice(s, s + n) for s, n in zip(start, crop.shape))] = crop
    return full


# ------------------------------------------------------------------ pipelines
def segment_full_volume_reference(
    array,
    spacing_zyx,
    prompt,
    model: LoadedModel,
    *,
    tta: bool = True,
    precision: str = "float16",
    pre: Preprocessed | None = None,
    counter: ForwardCounter | None = None,
) -> np.ndarray:
    """The plain full-volume pipeline (reference for tests and the benchmark); bool mask on the input grid.

    ``prompt`` is a core prompt (original voxels) or a ``PromptPP`` (already preprocessed, e.g. from a
    label map; then ``pre`` must be given). Everything is recomputed over the whole volume.
    """
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    from .prompting import map_prompt

    pm, cm = model.plans_manager, model.configuration_manager
    if pre is None:
        pre = preprocess_image(array, spacing_zyx, pm, cm, use_nnunet_crop=True)
    pp = prompt if isinstance(prompt, PromptPP) else map_prompt(prompt, pre)
    dense = dense_prompt(pp, pre.new_shape)
    data = np.concatenate([pre.data, dense[None]], axis=0)
    patch = model.patch_size
    padded, slicer = pad_nd_image(data, patch, "constant", {"constant_values": 0}, True)
    nz = np.argwhere(padded[-1] != 0)
    starts = select_tiles(nz.min(axis=0), nz.max(axis=0) + 1, padded.shape[1:], patch)
    per_fold = []
    for fold in model.folds:
        per_fold.append(
            accumulate_logits(
                model,
                fold,
                starts,
                lambda s: np.ascontiguousarray(padded[(slice(None), *(slice(a, a + p) for a, p in zip(s, patch)))]),
                (0, 0, 0),
                padded.shape[1:],
                tta=tta,
                precision=precision,
                counter=counter,
            )
        )
    logits = average_folds(per_fold)
    logits = logits[(slice(None), *slicer[1:])]
    return export_full(torch.as_tensor(logits).cpu(), pre, cm)


@dataclass
class FastMask:
    """One lesion's mask from the fast path, as a crop of the original grid.

    ``start``/``crop``: bool mask on ``[start, start + crop.shape)`` (background elsewhere, exactly as
    the full-volume export). ``limit_axes``: axes ("z", "y", "x") along which the network's mask
    (before export) reaches the edge of the region its tiles covered where the volume continues:
    the lesion may extend past what the network saw.
    """

    start: tuple[int, int, int]
    crop: np.ndarray
    limit_axes: list[str] = field(default_factory=list)
    n_tiles: int = 0

    def to_full(self, shape) -> np.ndarray:
        full = np.zeros(tuple(shape), dtype=bool)
        full[tuple(slice(s, s + n) for s, n in zip(self.start, self.crop.shape))] = self.crop
        return full


def _limit_axes(mask_pp: np.ndarray, u_lo, u_hi, shape) -> list[str]:
    """Axes where ``mask_pp`` (on ``[u_lo, u_hi)``) touches a face of that box that lies inside the volume."""
    out = []
    for a, name in enumerate("zyx"):
        if mask_pp.shape[a] == 0:
            continue
        low = int(u_lo[a]) > 0 and bool(np.take(mask_pp, 0, axis=a).any())
        high = int(u_hi[a]) < int(shape[a]) and bool(np.take(mask_pp, -1, axis=a).any())
        if low or high:
            out.append(name)
    return out


def segment_prompt_fast_crop(
    pre: Preprocessed,
    prompt: PromptPP,
    model: LoadedModel,
    *,
    tta: bool = True,
    precision: str = "float16",
    counter: ForwardCounter | None = None,
) -> FastMask:
    """The fast path on a cached ``Preprocessed`` image: only the needed tiles and output region.

    The mask equals :func:`segment_full_volume_reference`'s (pasted at ``start``)."""
    patch = model.patch_size
    starts, _padded, before = plan_tiles(prompt, pre.new_shape, patch)
    r_lo, r_hi = tile_union(starts, patch)
    per_fold = [
        accumulate_logits(
            model,
            fold,
            starts,
            lambda s: tile_input(pre.data, prompt, s, patch, before, pre.origin, pre.new_shape),
            r_lo,
            tuple(int(v) for v in r_hi - r_lo),
            tta=tta,
            precision=precision,
            counter=counter,
        )
        for fold in model.folds
    ]
    logits = average_folds(per_fold)
    # Drop the padding: the union in unpadded coordinates, clipped to the volume.
    u_lo = np.maximum(r_lo - np.asarray(before), 0)
    u_hi = np.minimum(r_hi - np.asarray(before), np.asarray(pre.new_shape))
    sl = tuple(slice(int(a + b - r), int(c + b - r)) for a, c, b, r in zip(u_lo, u_hi, before, r_lo))
    logits = logits[(slice(None), *sl)]
    limits = _limit_axes(_mask_from_logits(logits), u_lo, u_hi, pre.new_shape)
    fill = float("nan") if precision == "float16" else 0.0
    start, crop = export_region_crop(logits, u_lo, pre, model.configuration_manager, fill=fill)
    return FastMask(start, crop, limits, len(starts))


def segment_prompt_fast(
    pre: Preprocessed,
    prompt: PromptPP,
    model: LoadedModel,
    *,
    tta: bool = True,
    precision: str = "float16",
    counter: ForwardCounter | None = None,
) -> np.ndarray:
    """:func:`segment_prompt_fast_crop` as a full bool volume on the original grid."""
    res = segment_prompt_fast_crop(pre, prompt, model, tta=tta, precision=precision, counter=counter)
    return res.to_full(pre.shape_before_cropping)

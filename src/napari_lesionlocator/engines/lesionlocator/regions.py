"""Crops on which the plans' resampling gives the same numbers as on the whole volume.

The fast path resamples only a region (the image region the tiles need; the logits region that
can become lesion). That equals the whole-volume call bit for bit when

* the resampling has a local stencil (linear or nearest interpolation: ``resample_torch_*`` in
  ``linear``/``nearest`` modes, or ``resample_data_or_seg_to_shape`` with order <= 1; cubic
  splines are global through their prefilter), and
* the crop starts where the interpolation coordinate ``s * (j + 0.5) - 0.5`` (``s = n_in / n_out``)
  is an exact integer shift of the whole-volume one, with every operation exact in float32:
  ``n_in / n_out = p / q`` in lowest terms with ``q`` a power of two, crops starting at
  multiples of ``q`` outputs (``p`` inputs), and ``2 p n_out < 2**23``.

Axes where that does not hold are kept whole (still correct, just not smaller). Every crop keeps
one block (``q`` outputs) of margin so the interpolation never reaches the crop's edge for the
outputs kept. All indices are per axis, half-open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AxisCrop", "aligned_crop", "resampling_is_local", "normalization_is_pointwise"]

_LOCAL_TORCH_MODES = ("linear", "nearest", "nearest-exact")
_POINTWISE_NORMALIZATIONS = ("CTNormalization", "NoNormalization")


@dataclass(frozen=True)
class AxisCrop:
    """Input crop ``[a0, a1)`` resamples to output crop ``[b0, b1)``; outputs ``[k0, k1)`` are the ones wanted."""

    a0: int
    a1: int
    b0: int
    b1: int
    k0: int
    k1: int


def resampling_is_local(configuration_manager, which: str) -> bool:
    """True when the plans' ``resampling_fn_<which>`` (``data``, ``probabilities``) has a 2-voxel stencil."""
    conf = configuration_manager.configuration
    name = conf.get(f"resampling_fn_{which}", "")
    kw = conf.get(f"resampling_fn_{which}_kwargs", {}) or {}
    if name in ("resample_torch_fornnunet", "resample_torch_simple"):
        return (
            kw.get("mode", "linear") in _LOCAL_TORCH_MODES
            and kw.get("aniso_axis_mode", "nearest-exact") in _LOCAL_TORCH_MODES
        )
    if name == "resample_data_or_seg_to_shape":
        return kw.get("order", 3) <= 1 and kw.get("order_z", 0) <= 1
    return False


def normalization_is_pointwise(configuration_manager) -> bool:
    """True when every channel's normalisation depends on the voxel alone (not on image statistics)."""
    return all(s in _POINTWISE_NORMALIZATIONS for s in configuration_manager.normalization_schemes)


def aligned_crop(n_in: int, n_out: int, k0: int, k1: int, local: bool) -> AxisCrop:
    """The smallest exact crop whose output covers ``[k0, k1)`` (whole axis when none exists)."""
    g = math.gcd(n_in, n_out)
    p, q = n_in // g, n_out // g
    exact = (q & (q - 1)) == 0 and p * 2 * n_out < 2**23
    if not local or not exact or q >= n_out:
        return AxisCrop(0, n_in, 0, n_out, k0, k1)
    blk0 = max(0, k0 // q - 1)
    blk1 = min(n_out // q, -(-k1 // q) + 1)
    return AxisCrop(blk0 * p, blk1 * p, blk0 * q, blk1 * q, k0, k1)

"""Shared pieces for the LesionLocator tracking tests (no conftest: imported explicitly).

The uniGradICON network has 70.7 M parameters whatever its grid, so it is built once per test
session (``shared_reg_net``) on the smallest grid it accepts (65^3) and shared by the TrackNets
the tests assemble. Freshly built it is an exact identity registration (uniGradICON zero-inits
the last convolution of every step); ``perturbed`` makes it non-trivial for a while.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from napari_lesionlocator.engines.lesionlocator import registration as reg
from napari_lesionlocator.engines.lesionlocator.generate import tiny_plans
from napari_lesionlocator.engines.lesionlocator.tracking import TrackModel, TrackNet

GRID = reg.REG_GRID_MIN
PATCH = (32, 48, 48)


@functools.lru_cache(maxsize=1)
def plans() -> dict:
    return tiny_plans()


@functools.lru_cache(maxsize=1)
def shared_reg_net():
    torch.manual_seed(0)
    return reg.make_registration_network(GRID).eval()


class MaskEcho(nn.Module):
    """Stand-in UNet whose logits follow the warped-mask channel: (1 - m, m).

    Lets a test predict the exact output: the tracked lesion is where the warped mask lands.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.inputs: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.inputs.append(tuple(x.shape))
        m = x[:, -1:]
        return torch.cat([1 - m, m], 1)


def echo_net(patch=PATCH) -> TrackNet:
    return TrackNet(shared_reg_net(), MaskEcho(), patch).eval()


def tiny_unet_net(seed: int = 0, patch=PATCH) -> TrackNet:
    """TrackNet with the tiny plans' real (random) ResidualEncoderUNet."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = plans()["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(seed)
    unet = get_network_from_plans(
        arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 2, 2,
        allow_init=True, deep_supervision=False,
    )
    return TrackNet(shared_reg_net(), unet, patch).eval()


def model(*nets: TrackNet) -> TrackModel:
    return TrackModel(plans(), list(nets), list(range(len(nets))))


@contextlib.contextmanager
def perturbed(reg_net, *, scale: float = 0.01, bias: float | None = None, seed: int = 0):
    """Temporarily give every step's last convolution random weights (non-identity fields), or
    set the final step's bias (a large bias moves everything out of the volume)."""
    saved = {n: p.detach().clone() for n, p in reg_net.named_parameters() if "lastConv" in n}
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for n, p in reg_net.named_parameters():
                if "lastConv" not in n:
                    continue
                if bias is None:
                    p.copy_(scale * torch.randn(p.shape, generator=gen))
                elif n.endswith("bias"):
                    p.fill_(bias)
        yield reg_net
    finally:
        with torch.no_grad():
            for n, p in reg_net.named_parameters():
                if n in saved:
                    p.copy_(saved[n])


def smooth_volume(shape, seed: int = 0, sigma: float = 2.0) -> np.ndarray:
    """Smooth random texture (unit-ish variance), float32, so registration/z-search have structure."""
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (v / v.std()).astype(np.float32)


def ball(shape, center, radius) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    c = center
    return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius**2

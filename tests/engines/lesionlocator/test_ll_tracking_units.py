"""LesionLocator tracking: pure pieces (patch placement, logit averaging, z-search, network grid)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("unigradicon")

import _track_helpers as H  # noqa: E402

from napari_lesionlocator.engines.lesionlocator import registration as reg  # noqa: E402
from napari_lesionlocator.engines.lesionlocator.tracking import (  # noqa: E402
    ALL_FLIPS,
    _LogitSum,
    build_track_network,
    patch_box,
)

pytestmark = pytest.mark.torch


# ------------------------------------------------------------------------------- patch_box
def test_patch_centred_when_it_fits():
    pad, start, valid, inner = patch_box((50, 60, 70), (32, 48, 48), (100, 120, 140))
    assert pad == [(0, 0)] * 3
    assert start == (34, 36, 46)  # c - p // 2
    assert valid == (slice(34, 66), slice(36, 84), slice(46, 94))
    assert inner == (slice(0, 32), slice(0, 48), slice(0, 48))


def test_patch_shifted_inside_at_both_borders():
    pad, start, valid, _ = patch_box((2, 118, 139), (32, 48, 48), (100, 120, 140))
    assert pad == [(0, 0)] * 3
    assert start == (0, 72, 92)
    assert valid == (slice(0, 32), slice(72, 120), slice(92, 140))


def test_patch_pads_axes_smaller_than_patch():
    # z and y smaller than the patch (the official code pads the wrong axes here and crashes)
    pad, start, valid, inner = patch_box((10, 15, 35), (32, 48, 48), (20, 30, 70))
    assert pad == [(6, 6), (9, 9), (0, 0)]
    assert start[:2] == (0, 0)
    assert valid[:2] == (slice(0, 20), slice(0, 30))
    assert inner[:2] == (slice(6, 26), slice(9, 39))
    assert valid[2] == slice(11, 59) and inner[2] == slice(0, 48)
    # odd differences put the smaller half before
    pad, _, valid, inner = patch_box((0, 0, 0), (32, 48, 48), (31, 47, 48))
    assert pad == [(0, 1), (0, 1), (0, 0)]
    assert inner[0] == slice(0, 31)


@pytest.mark.parametrize("seed", range(5))
def test_patch_box_regions_agree(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(5, 80, 3))
    patch = tuple(int(v) for v in rng.integers(1, 40, 3) * 2)
    center = tuple(int(rng.integers(0, s)) for s in shape)
    pad, start, valid, inner = patch_box(center, patch, shape)
    vol = rng.standard_normal(shape)
    padded = np.pad(vol, pad)
    cut = padded[tuple(slice(s, s + p) for s, p in zip(start, patch))]
    assert cut.shape == patch
    np.testing.assert_array_equal(cut[inner], vol[valid])


# ------------------------------------------------------------------------------- averaging
def test_logit_sum_equals_dense_average():
    rng = np.random.default_rng(1)
    shape = (20, 25, 30)
    acc = _LogitSum(shape)
    dense = []
    for _ in range(5):
        lo = [int(rng.integers(0, s - 4)) for s in shape]
        hi = [int(rng.integers(a + 1, s + 1)) for a, s in zip(lo, shape)]
        region = tuple(slice(a, b) for a, b in zip(lo, hi))
        logits = rng.standard_normal((2, *(b - a for a, b in zip(lo, hi)))).astype(np.float32)
        full = np.zeros((2, *shape), np.float32)
        full[0] = 1.0
        full[(slice(None), *region)] = logits
        dense.append(full)
        acc.passes += 1
        acc.add(region, logits)
    acc.passes += 1  # one pass whose warped mask was empty: background everywhere
    dense.append(np.stack([np.ones(shape, np.float32), np.zeros(shape, np.float32)]))
    np.testing.assert_allclose(acc.mean(), np.mean(dense, axis=0), atol=1e-6)


def test_all_flips_are_the_eight_mirrorings():
    assert len(ALL_FLIPS) == 8 and len(set(ALL_FLIPS)) == 8
    assert ALL_FLIPS[0] == () and (0, 1, 2) in ALL_FLIPS


# ------------------------------------------------------------------------------- z-search
@pytest.mark.parametrize("longer", ["baseline", "followup"])
@pytest.mark.parametrize("offset", [0, 17, 40])
def test_z_search_finds_known_offset(longer, offset):
    vol = H.smooth_volume((70, 30, 30), seed=3)
    short = vol[offset : offset + 30]
    x_long = torch.from_numpy(vol)[None, None]
    x_short = torch.from_numpy(short.copy())[None, None]
    x0, x1 = (x_long, x_short) if longer == "baseline" else (x_short, x_long)
    zs = reg.z_search(x0, x1, grid=40)
    assert zs.cropped == longer
    assert zs.offset == offset and zs.length == 30
    assert len(zs.mse) == 41  # offsets 0 .. diff inclusive (the official code stops at diff - 1)
    assert zs.mse[offset] == pytest.approx(0.0, abs=1e-10)


def test_z_search_skipped_within_threshold():
    a = torch.zeros(1, 1, 50, 8, 8)
    assert reg.z_search(a, torch.zeros(1, 1, 30, 8, 8), grid=16).cropped is None  # diff 20: no search
    assert reg.z_search(a, torch.zeros(1, 1, 29, 8, 8), grid=16).cropped == "baseline"


# ------------------------------------------------------------------------------- network
def test_registration_grid_below_minimum_is_refused():
    with pytest.raises(ValueError, match="at least 65"):
        reg.make_registration_network(64)
    with pytest.raises(TypeError, match="tiny must be a bool"):
        build_track_network(H.plans(), 1)


def test_state_dict_records_only_non_default_grid():
    net = H.echo_net()
    sd = net.state_dict()
    assert int(sd["reg_grid_size"]) == 65
    assert sd["unet_patch_size"].tolist() == list(H.PATCH)
    reg_keys = {k for k in sd if k.startswith("reg_net.")}
    assert len(reg_keys) == 188  # uniGradICON's keys; identity maps are not persistent
    # the same weights at the real grid: no grid entry (real checkpoints have none)
    net.set_grid(175)
    try:
        assert net.grid == 175 and "reg_grid_size" not in net.state_dict()
        # loading a state dict that records a grid switches to it
        net.load_state_dict(sd)
        assert net.grid == 65
        assert tuple(net.reg_net.identity_map.shape) == (1, 3, 65, 65, 65)
    finally:
        net.set_grid(65)


def test_build_track_network_tiny_plans():
    net = build_track_network(H.plans(), tiny=True, patch_size=(32, 32, 32))
    sd = net.state_dict()
    assert net.grid == 65 and net.patch_size == (32, 32, 32)
    assert {k.split(".")[0] for k in sd} == {"reg_net", "unet", "unet_patch_size", "reg_grid_size"}
    assert sd["unet.encoder.stem.convs.0.conv.weight"].shape[1] == 2  # image + warped mask
    x = torch.zeros(1, 2, 32, 32, 32)
    with torch.inference_mode():
        assert tuple(net.unet(x).shape) == (1, 2, 32, 32, 32)  # deep supervision off


@pytest.mark.slow
def test_benchmark_tracking_step_smoke():
    from napari_lesionlocator.engines.lesionlocator.tracking import benchmark_tracking_step

    lines = []
    times = benchmark_tracking_step(H.plans(), shape=(32, 48, 48), tiny=True, print_fn=lines.append)
    assert times["fields_identical"] == 1.0
    assert times["full_over_a_to_b"] > 1.0  # the training forward does strictly more work
    assert {"registration_a_to_b_s", "registration_full_forward_s", "tracking_step_s"} <= set(times)
    assert "registration grid 65^3" in lines[0] and len(lines) == 1 + len(times)

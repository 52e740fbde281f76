"""LesionLocator tracking end to end on tiny grids (65^3 registration, 32x48x48 UNet patch).

Most tests use the identity registration of a freshly built uniGradICON and a stand-in UNet
that echoes the warped mask, so the expected follow-up mask is known exactly; the registration
and UNet themselves are exercised with non-trivial weights where that is the point.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("unigradicon")

import _track_helpers as H  # noqa: E402

from napari_lesionlocator.core.errors import Cancelled  # noqa: E402
from napari_lesionlocator.core.geometry import Geometry, GeometryMismatchError  # noqa: E402
from napari_lesionlocator.core.image import Image, LabelMap  # noqa: E402
from napari_lesionlocator.core.progress import CancelToken  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import registration as reg  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import tracking  # noqa: E402

pytestmark = pytest.mark.torch

G = H.GRID


from _ll_helpers import one_torch_thread  # noqa: E402,F401 - autouse: one torch thread per test


@pytest.fixture
def count_fields(monkeypatch):
    calls = []
    real = reg.compute_field_a_to_b

    def counting(reg_net, a, b):
        calls.append(tuple(a.shape))
        return real(reg_net, a, b)

    monkeypatch.setattr(reg, "compute_field_a_to_b", counting)
    return calls


def _mean_masks(sums):
    return {i: np.argmax(s.mean(), 0) == 1 for i, s in sums.items()}


# ---------------------------------------------------------------------------- registration
def test_inference_field_equals_full_forward():
    net = H.shared_reg_net()
    a = torch.from_numpy(H.smooth_volume((G, G, G), seed=1))[None, None]
    b = torch.from_numpy(H.smooth_volume((G, G, G), seed=2))[None, None]
    with H.perturbed(net, scale=0.02), torch.inference_mode():
        fast = reg.compute_field_a_to_b(net, a, b)
        full = reg.full_forward_field(net, a, b)
        ident = net.identity_map
        assert float((fast - ident).abs().max()) > 1e-3  # a real deformation, not the identity
    assert fast.shape == (1, 3, G, G, G)
    assert torch.equal(fast, full)


def test_identity_registration_warps_mask_exactly():
    net = H.shared_reg_net()
    a = torch.from_numpy(H.smooth_volume((G, G, G), seed=1))[None, None]
    mask = torch.from_numpy(H.ball((G, G, G), (20, 30, 40), 6).astype(np.float32))[None, None]
    with torch.inference_mode():
        phi = reg.compute_field_a_to_b(net, a, a.flip(2))
        assert torch.equal(reg.warp_prompt(net, mask, phi), mask)


# ---------------------------------------------------------------------------- core loop
def test_several_lesions_share_one_field_per_fold(count_fields):
    shape = (40, 50, 60)
    x0 = H.smooth_volume(shape, seed=4)[None]
    prompts = {3: H.ball(shape, (10, 12, 15), 3), 8: H.ball(shape, (30, 35, 40), 4), 12: H.ball(shape, (20, 25, 50), 3)}
    model = H.model(H.echo_net(), H.echo_net())
    cache = reg.FieldCache()
    sums = tracking.track_preprocessed(model, x0, x0.copy(), prompts, tta=False, field_cache=cache)
    assert len(count_fields) == 2 and cache.computed == 2  # one per fold, not per lesion
    assert all(s == (1, 1, G, G, G) for s in count_fields)
    masks = _mean_masks(sums)
    assert sorted(masks) == [3, 8, 12]
    for i, m in prompts.items():  # identity registration + echo UNet: masks come back in place
        inter = (masks[i] & m).sum()
        assert inter / (masks[i] | m).sum() > 0.8, i
    # the same cache and pair: nothing recomputed
    tracking.track_preprocessed(model, x0, x0.copy(), prompts, tta=False, field_cache=cache)
    assert len(count_fields) == 2


def test_tta_flips_back_to_original_orientation(count_fields):
    shape = (G, G, G)  # the registration grid: no resizing, so every flip sees the same voxels
    x0 = H.smooth_volume(shape, seed=5)[None]
    lesion = H.ball(shape, (12, 20, 50), 4) | H.ball(shape, (15, 22, 55), 3)  # asymmetric, off-centre
    net = H.echo_net()
    events = []
    sums = tracking.track_preprocessed(
        H.model(net), x0, x0.copy(), {5: lesion}, tta=True, on_progress=events.append
    )
    assert len(count_fields) == 8  # all 3 axes mirrored: 8 passes, one registration each
    assert net.unet.calls == 8
    s = sums[5]
    assert s.passes == 8 and s.hits == 8
    np.testing.assert_array_equal(np.argmax(s.mean(), 0) == 1, lesion)
    assert events[-1].step == events[-1].total == 8 * 2
    single = tracking.track_preprocessed(H.model(net), x0, x0.copy(), {5: lesion}, tta=False)[5].mean()
    np.testing.assert_allclose(s.mean(), single, atol=1e-6)


@pytest.mark.parametrize("longer", ["baseline", "followup"])
def test_z_search_places_lesion_at_found_offset(longer, count_fields):
    full = H.smooth_volume((90, G, G), seed=6)[None]
    part = full[:, 30:60].copy()
    if longer == "baseline":
        x0, x1 = full, part
        lesion = H.ball(full.shape[1:], (42, 30, 30), 4)
        expected = lesion[30:60]
    else:
        x0, x1 = part, full
        lesion = H.ball(part.shape[1:], (12, 30, 30), 4)
        expected = np.zeros(full.shape[1:], bool)
        expected[30:60] = lesion
    sums = tracking.track_preprocessed(H.model(H.echo_net()), x0, x1, {1: lesion}, tta=False)
    got = _mean_masks(sums)[1]
    assert got.shape == x1.shape[1:]
    assert (got & expected).sum() / (got | expected).sum() > 0.8
    assert np.nonzero(got)[0].mean() == pytest.approx(np.nonzero(expected)[0].mean(), abs=1.0)


def test_followup_smaller_than_patch_is_padded():
    shape = (20, 30, 70)  # z and y below the 32x48x48 patch
    x0 = H.smooth_volume(shape, seed=7)[None]
    lesion = H.ball(shape, (10, 15, 60), 3)
    net = H.echo_net()
    sums = tracking.track_preprocessed(H.model(net), x0, x0.copy(), {2: lesion}, tta=False)
    assert net.unet.inputs == [(1, 2, *H.PATCH)]
    got = _mean_masks(sums)[2]
    assert got.shape == shape
    assert (got & lesion).sum() / (got | lesion).sum() > 0.8


def test_empty_warped_mask_is_lost_not_random():
    shape = (40, 50, 60)
    x0 = H.smooth_volume(shape, seed=8)[None]
    net = H.echo_net()
    with H.perturbed(net.reg_net, bias=5.0):  # every coordinate pushed far outside the volume
        sums = tracking.track_preprocessed(H.model(net), x0, x0.copy(), {4: H.ball(shape, (20, 25, 30), 5)}, tta=False)
    assert sums[4].hits == 0 and sums[4].passes == 1
    assert net.unet.calls == 0  # no patch was cut around an invented centre
    assert not _mean_masks(sums)[4].any()


def test_deterministic_with_real_unet():
    shape = (40, 50, 60)
    x0 = H.smooth_volume(shape, seed=9)[None]
    x1 = np.roll(x0, 2, axis=2)
    prompts = {1: H.ball(shape, (20, 25, 30), 5)}
    net = H.tiny_unet_net(seed=3)
    with H.perturbed(net.reg_net, scale=0.01):
        a = tracking.track_preprocessed(H.model(net), x0, x1, prompts, tta=False)[1].mean()
        b = tracking.track_preprocessed(H.model(net), x0, x1, prompts, tta=False)[1].mean()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[:, 20, 25, 30], [1.0, 0.0])  # the UNet's logits, not background


def test_cancel_stops_between_steps():
    shape = (40, 50, 60)
    x0 = H.smooth_volume(shape, seed=10)[None]
    token = CancelToken()
    net = H.echo_net()

    def on_progress(ev):
        if ev.step == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        tracking.track_preprocessed(
            H.model(net), x0, x0.copy(), {1: H.ball(shape, (20, 25, 30), 5)}, tta=True,
            on_progress=on_progress, cancel=token,
        )
    assert net.unet.calls == 0


# ---------------------------------------------------------------------------- public entry
def _pair():
    """Baseline and follow-up of the same physical field of view (60 x 64 x 64 mm) sampled
    differently, with different origins; lesions 3 and 7 (ids not consecutive)."""
    g0 = Geometry((30, 40, 40), (2.0, 1.6, 1.6), (10.0, -20.0, 5.0))
    g1 = Geometry((24, 32, 40), (2.5, 2.0, 1.6), (-4.0, 7.5, 30.0))
    hu0 = (H.smooth_volume(g0.shape, seed=11) * 200).astype(np.float32)
    hu1 = (H.smooth_volume(g1.shape, seed=12) * 200).astype(np.float32)
    labels = np.zeros(g0.shape, np.uint16)
    labels[H.ball(g0.shape, (10, 12, 14), 3)] = 3
    labels[H.ball(g0.shape, (20, 28, 26), 4)] = 7
    return Image(hu0, g0, "base"), LabelMap(labels, g0), Image(hu1, g1, "fu")


def test_track_lesions_keeps_ids_and_followup_geometry():
    base, labels, fu = _pair()
    events = []
    result = tracking.track_lesions(
        H.model(H.echo_net()), base, labels, fu, tta=False, device="cpu", on_progress=events.append
    )
    assert result.labels.geometry == fu.geometry
    assert result.labels.array.shape == fu.shape
    assert result.labels.ids == [3, 7] and result.lost_ids == []
    for lesion_id in (3, 7):  # same relative position in the field of view (identity registration)
        before = np.argwhere(labels.array == lesion_id).mean(0) / np.array(base.shape)
        after = np.argwhere(result.labels.array == lesion_id).mean(0) / np.array(fu.shape)
        np.testing.assert_allclose(after, before, atol=0.05)
    assert events[-1].step == events[-1].total


def test_track_lesions_reports_lost_lesion():
    base, labels, fu = _pair()
    net = H.echo_net()
    with H.perturbed(net.reg_net, bias=5.0):
        result = tracking.track_lesions(H.model(net), base, labels, fu, tta=False, device="cpu")
    assert result.lost_ids == [3, 7]
    assert result.labels.ids == []
    assert any("lesion 3" in m and "not found" in m for m in result.messages)


def test_track_lesions_refuses_labels_off_the_baseline_grid():
    base, labels, fu = _pair()
    wrong = LabelMap(labels.array, Geometry(labels.geometry.shape, (1.0, 1.0, 1.0)))
    with pytest.raises(GeometryMismatchError):
        tracking.track_lesions(H.model(H.echo_net()), base, wrong, fu, tta=False, device="cpu")


def test_track_lesions_without_lesions():
    base, labels, fu = _pair()
    empty = LabelMap.empty(base.geometry)
    result = tracking.track_lesions(H.model(H.echo_net()), base, empty, fu, tta=False, device="cpu")
    assert result.labels.ids == [] and result.lost_ids == [] and result.labels.geometry == fu.geometry


def test_lesion_vanishing_in_preprocessing_is_reported_lost():
    # 0.5 x 0.4 x 0.4 mm voxels resampled to 1.0 x 0.8 x 0.8: a one-voxel lesion disappears
    g0 = Geometry((40, 50, 50), (0.5, 0.4, 0.4))
    base = Image((H.smooth_volume(g0.shape, seed=13) * 200).astype(np.float32), g0, "base")
    labels = np.zeros(g0.shape, np.uint16)
    labels[20, 25, 25] = 4
    labels[H.ball(g0.shape, (20, 20, 30), 6)] = 2
    events = []
    result = tracking.track_lesions(
        H.model(H.echo_net()), base, LabelMap(labels, g0), base, tta=False, device="cpu", on_progress=events.append
    )
    assert result.lost_ids == [4]
    assert result.labels.ids == [2]
    assert any("lesion 4" in m and "vanished" in m for m in result.messages)
    assert events[-1].step == events[-1].total


# ---------------------------------------------------------------------------- region path == full path
@pytest.mark.parametrize("case", ["same-z", "baseline-longer", "followup-longer", "small-followup"])
def test_region_warp_and_patch_equal_the_full_volume_computation(case):
    """The tracker gathers only the voxels a lesion needs per pass; the warped mask, the patch centre and
    the UNet's logits must be exactly those of the plain full-volume flip/resize/warp/resize."""
    shapes = {"same-z": ((40, 50, 60), (40, 50, 60)), "baseline-longer": ((90, 50, 60), (30, 50, 60)),
              "followup-longer": ((30, 50, 60), (90, 50, 60)), "small-followup": ((40, 50, 60), (20, 30, 70))}
    s0, s1 = shapes[case]
    x0 = torch.from_numpy(H.smooth_volume(s0, seed=21))[None, None]
    x1 = torch.from_numpy(H.smooth_volume(s1, seed=22))[None, None]
    rng = np.random.default_rng(5)
    lesion = H.ball(s0, (s0[0] // 2, 20, 25), 6) & (rng.random(s0) > 0.2)  # ragged, off-centre
    net = H.tiny_unet_net(seed=4)
    start, crop = tracking._bbox_crop(lesion)
    full_prompt = torch.from_numpy(lesion.astype(np.float32))[None, None]
    checked = 0
    with H.perturbed(net.reg_net, scale=0.02):
        for flip in [(), (0,), (1, 2), (0, 1, 2)]:
            f0, f1 = tracking._flip(x0, flip), tracking._flip(x1, flip)
            zs = reg.z_search(f0, f1, G)
            r0, r1 = f0, f1
            if zs.cropped == "baseline":
                r0 = r0[:, :, zs.offset : zs.offset + zs.length]
            elif zs.cropped == "followup":
                r1 = r1[:, :, zs.offset : zs.offset + zs.length]
            with torch.inference_mode():
                phi = reg.compute_field_a_to_b(net.reg_net, reg.resize_image(r0, (G,) * 3),
                                               reg.resize_image(r1, (G,) * 3)).float()
            full = tracking._warp_to_followup(net, tracking._flip(full_prompt, flip), zs, r1.shape[2:], f1.shape[2:],
                                              phi, G)
            region = tracking._warp_region(net, (start, crop), s0, flip, zs, r1.shape[2:], f1.shape[2:], phi, G,
                                           torch.device("cpu"))
            assert (full is None) == (region is None)
            if full is None:
                continue
            lo, arr = region
            rebuilt = torch.zeros_like(full)
            rebuilt[(0, 0, *(slice(a, a + n) for a, n in zip(lo, arr.shape)))] = arr
            assert torch.equal(rebuilt, full), flip
            a_region, a_logits = tracking._predict_patch(net, f1, full, H.PATCH, torch.device("cpu"))
            b_region, b_logits = tracking._predict_patch_region(net, f1, region, H.PATCH, torch.device("cpu"))
            assert a_region == b_region
            np.testing.assert_array_equal(a_logits, b_logits)
            checked += 1
    assert checked >= 3
    if case != "same-z":
        assert zs.cropped is not None or case == "small-followup"


@pytest.mark.parametrize("resampling", ["torch", "skimage-separate-z"])
@pytest.mark.parametrize("shape, spacing", [((30, 50, 44), (2.0, 1.1, 0.7)), ((24, 40, 40), (1.0, 0.8, 0.8))])
def test_region_export_equals_the_whole_volume_export(resampling, shape, spacing):
    """Each tracked lesion is exported only where its patches' logits can reach; the mask must be exactly
    the whole-volume export's (logits (1, 0) outside the patches)."""
    import copy

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from napari_lesionlocator.core.geometry import Geometry
    from napari_lesionlocator.engines.lesionlocator.preprocessing import preprocess_image

    plans = copy.deepcopy(H.plans())
    if resampling != "torch":
        plans["configurations"]["3d_fullres"].update({
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": True},
        })
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    pre = preprocess_image(H.smooth_volume(shape, seed=30) * 200, spacing, pm, cm)
    rng = np.random.default_rng(2)
    s = tracking._LogitSum(pre.new_shape)
    n = np.asarray(pre.new_shape)
    for _ in range(3):  # three overlapping patch regions of different passes, one touching the border
        lo = rng.integers(0, np.maximum(n - 12, 1))
        hi = np.minimum(lo + rng.integers(8, 20, 3), n)
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        s.add(region, rng.normal(0.6, 1.0, (2, *(hi - lo))).astype(np.float32))
    s.passes = 4
    geo = Geometry(shape, spacing)
    full = tracking._export(s.mean(), pre, cm)
    own = tracking._export_lesion(s, pre, cm, geo)
    assert full.any() and not own.is_empty
    np.testing.assert_array_equal(own.to_full(), full)
    assert own.array.size < np.prod(shape)  # only a region was exported


@pytest.mark.parametrize("resampling", ["torch", "skimage"])
@pytest.mark.parametrize("shape, spacing", [((30, 50, 44), (2.0, 1.1, 0.7)), ((24, 60, 40), (2.0, 0.4, 1.6)),
                                            ((20, 40, 40), (1.0, 0.8, 0.8))])
def test_own_mask_region_resampling_equals_the_whole_volume(resampling, shape, spacing):
    """Each lesion's baseline mask is resampled to the model grid only around itself; the result must be
    exactly the whole-volume ``resample_label_map`` of that mask (also at the volume's border)."""
    import copy

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from napari_lesionlocator.core.geometry import Geometry
    from napari_lesionlocator.core.results import LesionMask
    from napari_lesionlocator.engines.lesionlocator.preprocessing import preprocess_image, resample_label_map

    plans = copy.deepcopy(H.plans())
    if resampling != "torch":
        plans["configurations"]["3d_fullres"].update({
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        })
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    vol = H.smooth_volume(shape, seed=31) * 200
    vol[:2] = 0  # a zero border: the crop to the non-zero box is exercised
    pre = preprocess_image(vol, spacing, pm, cm)
    geo = Geometry(shape, spacing)
    rng = np.random.default_rng(3)
    regional = 0
    for centre, radius in (((15, 20, 20), 5), ((3, 2, 40), 4), ((10, 30, 10), 2), ((0, 0, 0), 3)):
        centre = tuple(min(c, n - 1) for c, n in zip(centre, shape))
        full = H.ball(shape, centre, radius) & (rng.random(shape) > 0.15)
        start, crop = tracking.resample_own_mask(LesionMask.from_full(geo, full), pre, cm)
        expected = resample_label_map(full.astype(np.uint8), pre, cm) == 1
        got = np.zeros(pre.new_shape, bool)
        got[tuple(slice(a, a + n) for a, n in zip(start, crop.shape))] = crop
        np.testing.assert_array_equal(got, expected)
        regional += crop.size < np.prod(pre.new_shape)
    assert regional

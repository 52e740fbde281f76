"""Segmentation numerics on tiny generated checkpoints: fast path == full-volume reference, ground truth
from direct network calls, TTA equivariance, fold averaging, float16/float32 accumulation."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

import _ll_helpers as H  # noqa: E402

from napari_lesionlocator.core.prompts import BoxPrompt, PointPrompt  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import segmentation as S  # noqa: E402
from napari_lesionlocator.engines.lesionlocator.checkpoint import load_model  # noqa: E402
from napari_lesionlocator.engines.lesionlocator.preprocessing import preprocess_image  # noqa: E402
from napari_lesionlocator.engines.lesionlocator.prompting import map_prompt  # noqa: E402

pytestmark = pytest.mark.torch

TARGET = (1.0, 0.8, 0.8)  # the plans' spacing: no resampling at this spacing
CENTRE = (slice(8, 24), slice(12, 36), slice(12, 36))  # where the patch's gaussian weight is >= 0.025


from _ll_helpers import one_torch_thread  # noqa: E402,F401 - autouse: one torch thread per test


@pytest.fixture(scope="module")
def point_model():
    return load_model(H.tiny_checkpoint(), "point", folds=[0])


@pytest.fixture(scope="module")
def box_model():
    return load_model(H.tiny_checkpoint(), "box", folds=[0])


def _fast(arr, spacing, prompt, model, **kw):
    pre = preprocess_image(arr, spacing, model.plans_manager, model.configuration_manager)
    return S.segment_prompt_fast(pre, map_prompt(prompt, pre), model, **kw)


def _with_resampling(model, **conf_changes):
    """The same model with other resampling settings in its plans (as a downloaded plans.json may name)."""
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    m = copy.copy(model)
    conf = copy.deepcopy(model.configuration_manager.configuration)
    conf.update(conf_changes)
    m.configuration_manager = ConfigurationManager(conf)
    return m


@pytest.mark.parametrize(
    "shape, spacing, prompt, border",
    [
        # every export ratio dyadic (2/1, 1/2, 3/2): the region export really crops
        ((24, 120, 40), (2.0, 0.4, 1.2), PointPrompt(1, (12, 60, 20)), 0),
        # y/x ratio 22/25 is not dyadic: whole axis exported there, z cropped
        ((30, 50, 50), (1.5, 0.7, 0.7), PointPrompt(2, (1, 2, 48)), 0),
        # zero border (crop offset) and a large box: sliding-window tiles
        ((26, 66, 60), (1.5, 0.7, 0.7), BoxPrompt(3, (4, 25, 30, 40, 20, 30)), 3),
        # box whose minimum maps to 0
        ((24, 120, 40), (2.0, 0.4, 1.2), BoxPrompt(4, (0, 3, 0, 4, 0, 2)), 0),
    ],
)
@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_fast_path_equals_full_volume_reference(point_model, box_model, shape, spacing, prompt, border, precision):
    arr = H.ct_volume(shape, seed=len(shape) + shape[0], border=border)
    model = box_model if isinstance(prompt, BoxPrompt) else point_model
    ref = S.segment_full_volume_reference(arr, spacing, prompt, model, tta=False, precision=precision)
    fast = _fast(arr, spacing, prompt, model, tta=False, precision=precision)
    assert ref.shape == shape and ref.any()
    assert np.array_equal(ref, fast)


def test_region_export_crops_when_exact(point_model):
    arr = H.ct_volume((24, 120, 40))
    pre = preprocess_image(arr, (2.0, 0.4, 1.2), point_model.plans_manager, point_model.configuration_manager)
    assert pre.new_shape == (48, 60, 60)
    plan = S.region_export_plan((20, 5, 5), (30, 40, 40), pre, point_model.configuration_manager)
    assert all(ap.b1 - ap.b0 < n for ap, n in zip(plan, pre.shape_after_cropping))
    pre2 = preprocess_image(
        H.ct_volume((30, 50, 50)), (1.5, 0.7, 0.7), point_model.plans_manager, point_model.configuration_manager
    )
    plan2 = S.region_export_plan((5, 5, 5), (30, 40, 40), pre2, point_model.configuration_manager)
    assert (plan2[1].b0, plan2[1].b1) == (0, 50)  # 44/50 not dyadic: whole axis
    assert plan2[0].b1 - plan2[0].b0 < 30


@pytest.mark.parametrize(
    "changes",
    [
        # nnU-Net's default resampling with separate z (anisotropic 3 mm slices), as older plans name it
        {
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        },
        # torch resampling with forced separate z
        {
            "resampling_fn_data_kwargs": {"is_seg": False, "force_separate_z": True},
            "resampling_fn_probabilities_kwargs": {
                "is_seg": False,
                "memefficient_seg_resampling": True,
                "force_separate_z": True,
            },
        },
    ],
)
def test_fast_equals_reference_with_other_resampling(point_model, changes):
    model = _with_resampling(point_model, **changes)
    arr = H.ct_volume((12, 60, 60), seed=5)
    prompt = PointPrompt(1, (6, 30, 20))
    ref = S.segment_full_volume_reference(arr, (3.0, 0.4, 0.4), prompt, model, tta=False)
    fast = _fast(arr, (3.0, 0.4, 0.4), prompt, model, tta=False)
    assert ref.any() and np.array_equal(ref, fast)


def _net(model, fold, x):
    model.use_fold(fold)
    with torch.inference_mode():
        return model.network(torch.from_numpy(x)[None]).float()[0].numpy()


def _assert_masks_equal_except_ties(mask, logits, expected_mask, tol=1e-2):
    """Masks agree wherever the two logits are not within ``tol`` of a tie."""
    clear = np.abs(logits[1] - logits[0]) > tol
    assert np.array_equal(mask[clear], expected_mask[clear])


@pytest.mark.parametrize("prompt", [PointPrompt(1, (16, 24, 20)), BoxPrompt(1, (0, 32, 4, 40, 8, 30))])
def test_single_tile_and_sliding_agree_with_direct_network_call(point_model, box_model, prompt):
    # Volume == patch at the plans' spacing: the single-patch rule (point) and the sliding rule (box spanning
    # all of z) both select the one tile at 0; the mask must be the direct network's argmax there.
    model = box_model if isinstance(prompt, BoxPrompt) else point_model
    arr = H.ct_volume(H.PATCH, seed=3)
    pre = preprocess_image(arr, TARGET, model.plans_manager, model.configuration_manager)
    pp = map_prompt(prompt, pre)
    starts, _, _ = S.plan_tiles(pp, pre.new_shape, model.patch_size)
    assert starts == [(0, 0, 0)]
    x = S.tile_input(pre.data, pp, (0, 0, 0), model.patch_size, (0, 0, 0))
    direct = _net(model, 0, x)
    for precision in ("float32", "float16"):
        fast = S.segment_prompt_fast(pre, pp, model, tta=False, precision=precision)
        ref = S.segment_full_volume_reference(arr, TARGET, prompt, model, tta=False, precision=precision)
        assert np.array_equal(fast, ref)
        # float16 (official numerics) stores logits * gaussian: near the patch border, where the gaussian is
        # tiny, that product underflows and the ratio is coarse; compare there only in float32.
        inner = (slice(None), *CENTRE) if precision == "float16" else (slice(None),)
        _assert_masks_equal_except_ties(fast[inner[1:]], direct[inner], (direct[1] > direct[0])[inner[1:]])


def test_fold_averaging(tmp_path):
    model = load_model(H.tiny_checkpoint(), "point")  # folds 0 and 1
    arr = H.ct_volume(H.PATCH, seed=4)
    pre = preprocess_image(arr, TARGET, model.plans_manager, model.configuration_manager)
    pp = map_prompt(PointPrompt(1, (16, 24, 24)), pre)
    x = S.tile_input(pre.data, pp, (0, 0, 0), model.patch_size, (0, 0, 0))
    l0, l1 = _net(model, 0, x), _net(model, 1, x)
    mean = (l0 + l1) / 2
    m0, m1, mm = (a[1] > a[0] for a in (l0, l1, mean))
    assert (m0 != m1).sum() > 100  # the folds really differ
    got = S.segment_prompt_fast(pre, pp, model, tta=False, precision="float32")
    _assert_masks_equal_except_ties(got, mean, mm)
    assert (got != m0).sum() > 50 and (got != m1).sum() > 50
    # float16 path: fold logits summed in float16, then halved
    a = torch.tensor([1.0, 2.0], dtype=torch.float16)
    assert torch.equal(S.average_folds([a, a * 3]), torch.tensor([2.0, 4.0], dtype=torch.float16))


def test_tta_is_flip_equivariant_on_symmetric_input(point_model):
    # A point-symmetric volume and prompt: with mirroring TTA over all axes the logits must be symmetric
    # (the flips only permute the averaged terms); without TTA a random network is not.
    model = point_model
    arr = H.ct_volume(H.PATCH, seed=6)
    arr = (arr + arr[::-1, ::-1, ::-1]) / 2
    pre = preprocess_image(arr, TARGET, model.plans_manager, model.configuration_manager)
    pp = map_prompt(BoxPrompt(1, (8, 24, 12, 36, 12, 36)), pre)
    assert pp.lo == (7, 11, 11) and pp.hi == (25, 37, 37)  # symmetric in a 32x48x48 volume

    def logits(tta):
        return S.accumulate_logits(
            model,
            0,
            [(0, 0, 0)],
            lambda s: S.tile_input(pre.data, pp, s, H.PATCH, (0, 0, 0)),
            (0, 0, 0),
            H.PATCH,
            tta=tta,
            precision="float32",
            counter=None,
        ).numpy()

    flip = (slice(None), slice(None, None, -1), slice(None, None, -1), slice(None, None, -1))
    plain, tta = logits(False), logits(True)
    assert np.abs(plain - plain[flip]).max() > 0.05
    np.testing.assert_allclose(tta, tta[flip], atol=2e-4)
    mask = S.segment_prompt_fast(pre, pp, model, tta=True, precision="float32")
    _assert_masks_equal_except_ties(mask, tta, mask[::-1, ::-1, ::-1])


def test_tta_counts_forwards_and_uses_checkpoint_axes(point_model):
    arr = H.ct_volume(H.PATCH, seed=7)
    pre = preprocess_image(arr, TARGET, point_model.plans_manager, point_model.configuration_manager)
    pp = map_prompt(PointPrompt(1, (16, 24, 24)), pre)
    ticks = []
    counter = S.ForwardCounter(8, lambda d, n, left: ticks.append((d, n)))
    S.segment_prompt_fast(pre, pp, point_model, tta=True, counter=counter)
    assert ticks == [(i, 8) for i in range(1, 9)]
    no_axes = copy.copy(point_model)
    no_axes.mirror_axes = ()
    assert S.count_forwards(1, 1, no_axes.mirror_axes, True) == 1
    assert S.count_forwards(3, 2, (0, 1, 2), True) == 48


def test_float16_marks_uncovered_and_float32_option(point_model):
    arr = H.ct_volume((40, 100, 100), seed=8)
    pre = preprocess_image(arr, TARGET, point_model.plans_manager, point_model.configuration_manager)
    pp = map_prompt(PointPrompt(1, (20, 50, 50)), pre)
    starts, padded, before = S.plan_tiles(pp, pre.new_shape, point_model.patch_size)
    assert len(starts) == 1

    def acc(precision):
        return S.accumulate_logits(
            point_model,
            0,
            starts,
            lambda s: S.tile_input(pre.data, pp, s, H.PATCH, before),
            (0, 0, 0),
            padded,
            tta=False,
            precision=precision,
            counter=None,
        )

    l16, l32 = acc("float16"), acc("float32")
    assert l16.dtype == torch.float16 and l32.dtype == torch.float32
    (z, y, x) = starts[0]
    inside = (slice(None), slice(z, z + 32), slice(y, y + 48), slice(x, x + 48))
    assert torch.isnan(l16).sum() == 2 * (np.prod(padded) - np.prod(H.PATCH))  # exactly the uncovered voxels
    assert not torch.isnan(l16[inside]).any()
    assert (l32 == 0).sum() >= 2 * (np.prod(padded) - np.prod(H.PATCH))
    centre = (slice(None), *(slice(o + c.start, o + c.stop) for o, c in zip(starts[0], CENTRE)))
    np.testing.assert_allclose(l16[centre].float().numpy(), l32[centre].numpy(), atol=0.02)
    # at the patch border the float16 product logits * gaussian underflows (official numerics)
    assert (l16[inside].float() - l32[inside]).abs().max() > 0.05
    m16 = S.segment_prompt_fast(pre, pp, point_model, tta=False, precision="float16")
    m32 = S.segment_prompt_fast(pre, pp, point_model, tta=False, precision="float32")
    assert (m16 & m32).sum() / max(1, (m16 | m32).sum()) > 0.9
    assert not m16[:z].any() and not m16[z + 32 :].any()


def test_unknown_precision(point_model):
    with pytest.raises(Exception, match="unknown precision"):
        S.accumulate_logits(point_model, 0, [], None, (0, 0, 0), (1, 1, 1), tta=False, precision="bf16", counter=None)


@pytest.mark.parametrize(
    "shape, spacing, changes",
    [
        ((24, 120, 40), (2.0, 0.4, 1.2), {}),  # torch trilinear, dyadic ratios: a real region
        ((12, 60, 60), (3.0, 0.4, 0.4), {"resampling_fn_data_kwargs": {"is_seg": False, "force_separate_z": True}}),
    ],
)
def test_region_preprocessing_equals_whole_volume(point_model, shape, spacing, changes):
    from napari_lesionlocator.engines.lesionlocator.preprocessing import preprocess_region, preprocessing_meta

    model = _with_resampling(point_model, **changes)
    pm, cm = model.plans_manager, model.configuration_manager
    arr = H.ct_volume(shape, seed=9, border=2)
    whole = preprocess_image(arr, spacing, pm, cm, use_nnunet_crop=True)
    meta = preprocessing_meta(arr, spacing, pm, cm)
    assert meta.data is None and meta.new_shape == whole.new_shape and meta.bbox == whole.bbox
    lo, hi = np.array([3, 5, 4]), np.array([17, 25, 20])
    reg = preprocess_region(arr, meta, lo, hi, pm, cm)
    assert not reg.is_whole and reg.origin == tuple(lo) and reg.data.shape[1:] == tuple(hi - lo)
    assert np.array_equal(reg.data, whole.data[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    # the fast path on the region gives the reference mask
    prompt = PointPrompt(1, (shape[0] // 2, shape[1] // 2, shape[2] // 2))
    pp = map_prompt(prompt, meta)
    rlo, rhi = S.needed_region(pp, meta.new_shape, model.patch_size)
    region = preprocess_region(arr, meta, rlo, rhi, pm, cm)
    fast = S.segment_prompt_fast(region, pp, model, tta=False)
    ref = S.segment_full_volume_reference(arr, spacing, prompt, model, tta=False)
    assert ref.any() and np.array_equal(fast, ref)


def test_region_preprocessing_falls_back_to_whole(point_model):
    from napari_lesionlocator.engines.lesionlocator.preprocessing import preprocess_region, preprocessing_meta

    # cubic-spline resampling (nnU-Net's default for images) is not local: the whole volume is preprocessed
    model = _with_resampling(
        point_model,
        resampling_fn_data="resample_data_or_seg_to_shape",
        resampling_fn_data_kwargs={"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    )
    arr = H.ct_volume((24, 120, 40), seed=2)
    meta = preprocessing_meta(arr, (2.0, 0.4, 1.2), model.plans_manager, model.configuration_manager)
    reg = preprocess_region(arr, meta, (3, 10, 7), (17, 40, 29), model.plans_manager, model.configuration_manager)
    assert reg.is_whole and reg.origin == (0, 0, 0)


@pytest.mark.parametrize("seed", range(6))
def test_region_export_equals_full_export_on_random_logits(point_model, seed):
    # Network-free: random float16 logits known on a random box (NaN elsewhere, as uncovered voxels),
    # random shapes/ratios (dyadic and not), torch and nnU-Net-default resampling.
    from napari_lesionlocator.engines.lesionlocator.preprocessing import Preprocessed

    rng = np.random.default_rng(seed)
    after = tuple(int(v) for v in rng.integers(8, 40, 3))
    new = tuple(int(v) for v in (np.array(after) * rng.choice([0.5, 0.75, 1.0, 1.5, 2.0, 0.9, 1.3], 3)).round())
    new = tuple(max(4, v) for v in new)
    pre = Preprocessed(None, after, [[0, a] for a in after], after, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (0, 0, 0), new)
    lo = np.array([rng.integers(0, n // 2) for n in new])
    hi = np.array([rng.integers(lo_ + 1, n + 1) for lo_, n in zip(lo, new)])
    logits = torch.from_numpy(rng.normal(0, 1, (2, *(hi - lo))).astype(np.float16))
    full = torch.full((2, *new), float("nan"), dtype=torch.float16)
    full[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))] = logits
    models = [
        point_model,
        _with_resampling(
            point_model,
            resampling_fn_probabilities="resample_data_or_seg_to_shape",
            resampling_fn_probabilities_kwargs={"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        ),
    ]
    for m in models:
        ref = S.export_full(full, pre, m.configuration_manager)
        got = S.export_region(logits, lo, pre, m.configuration_manager)
        assert np.array_equal(ref, got), (after, new, lo, hi)


@pytest.mark.parametrize("seed", range(4))
def test_region_preprocessing_equals_whole_on_random_grids(point_model, seed):
    from napari_lesionlocator.engines.lesionlocator.preprocessing import preprocess_region, preprocessing_meta

    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(v) for v in rng.integers(10, 40, 3))
    spacing = tuple(float(v) for v in rng.choice([0.4, 0.6, 0.8, 1.0, 1.2, 1.6, 2.0, 0.7], 3))
    pm, cm = point_model.plans_manager, point_model.configuration_manager
    arr = H.ct_volume(shape, seed=seed)
    whole = preprocess_image(arr, spacing, pm, cm)
    meta = preprocessing_meta(arr, spacing, pm, cm)
    new = np.array(meta.new_shape)
    lo = np.array([rng.integers(0, n // 2) for n in new])
    hi = np.array([rng.integers(a + 1, n + 1) for a, n in zip(lo, new)])
    reg = preprocess_region(arr, meta, lo, hi, pm, cm)
    r0 = np.array(reg.origin)
    r1 = r0 + np.array(reg.data.shape[1:])
    assert np.all(r0 <= lo) and np.all(r1 >= hi)
    assert np.array_equal(reg.data, whole.data[(slice(None), *(slice(a, b) for a, b in zip(r0, r1)))])

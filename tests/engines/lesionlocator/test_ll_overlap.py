"""Every lesion is its own whole mask, end to end (issue 11): two prompts whose masks overlap.

The tiny generated checkpoint's masks fill about half the patch, so two nearby prompts overlap.
Each lesion's result from a run with both prompts must equal that lesion segmented (or tracked)
alone, and the plain full-volume implementation, for JSON and label-map prompts, with and without
TTA, and through tracking over two follow-ups (each lesion's own mask at follow-up k is its prompt
for k+1). A merged instance map (later lesion wins) would cut the earlier lesion and fail these.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

import _ll_helpers as H  # noqa: E402

from napari_lesionlocator import api  # noqa: E402
from napari_lesionlocator.core.image import LabelMap  # noqa: E402
from napari_lesionlocator.core.prompts import BoxPrompt, PointPrompt  # noqa: E402
from napari_lesionlocator.engines.base import EngineSettings, create_engine  # noqa: E402
from napari_lesionlocator.engines.lesionlocator import segmentation as S  # noqa: E402
from napari_lesionlocator.engines.lesionlocator.preprocessing import preprocess_image  # noqa: E402

pytestmark = pytest.mark.torch

POINTS = [PointPrompt(1, (12, 24, 24)), PointPrompt(2, (12, 28, 28))]
BOXES = [BoxPrompt(1, (6, 16, 12, 28, 12, 28)), BoxPrompt(2, (8, 18, 22, 38, 22, 40))]


from _ll_helpers import one_torch_thread  # noqa: E402,F401 - autouse: one torch thread per test


@pytest.fixture(scope="module")
def images():
    return H.timepoints()


def _engine(tta: bool):
    return create_engine("lesionlocator", EngineSettings(checkpoint=str(H.tiny_full_checkpoint()), folds=[0], tta=tta))


@pytest.fixture(scope="module")
def engines():
    return {tta: _engine(tta) for tta in (False, True)}


def _assert_own_masks(joint, alone, reference=None):
    a, b = sorted(joint.lesions)
    assert joint.lesions[a].mask.overlap_voxels(joint.lesions[b].mask) > 0, "the test needs overlapping masks"
    for lid in (a, b):
        mine = joint.lesions[lid].mask.to_full()
        assert np.array_equal(mine, alone[lid]), f"lesion {lid} differs from itself segmented alone"
        if reference is not None:
            assert np.array_equal(mine, reference[lid]), f"lesion {lid} differs from the full-volume pipeline"
    # the display map: later lesion wins in the shared voxels, and the overlap is reported
    shared = joint.lesions[a].mask.to_full() & joint.lesions[b].mask.to_full()
    assert np.all(joint.labels.array[shared] == b)
    assert joint.overlaps() == [(a, b, int(shared.sum()))]


@pytest.mark.parametrize("tta", [False, True], ids=["no-tta", "tta"])
@pytest.mark.parametrize("prompts", [POINTS, BOXES], ids=["points", "boxes"])
def test_json_prompts_each_lesion_is_its_own_mask(engines, images, prompts, tta):
    eng, image = engines[tta], images[0]
    joint = eng.segment(image, prompts)
    alone = {p.lesion_id: eng.segment(image, [p]).lesions[p.lesion_id].mask.to_full() for p in prompts}
    model = {p.lesion_id: eng.model("box" if isinstance(p, BoxPrompt) else "point") for p in prompts}
    reference = {p.lesion_id: S.segment_full_volume_reference(image.array, image.geometry.spacing, p,
                                                              model[p.lesion_id], tta=tta) for p in prompts}
    _assert_own_masks(joint, alone, reference)
    if tta:
        return
    # the api's one-prompt-at-a-time job gives the same own masks
    via_api = api.run_sync(api.iter_segment(eng, image, prompts))
    for p in prompts:
        assert np.array_equal(via_api.lesions[p.lesion_id].mask.to_full(), alone[p.lesion_id])


@pytest.mark.parametrize("tta", [False, True], ids=["no-tta", "tta"])
@pytest.mark.parametrize("kind", ["box", "point"])
def test_label_map_prompts_each_lesion_is_its_own_mask(engines, images, kind, tta):
    eng, image = engines[tta], images[0]
    lab = np.zeros(image.shape, np.uint16)
    lab[8:15, 14:26, 14:26] = 3  # two neighbours: their masks overlap
    lab[9:16, 26:36, 27:37] = 40
    labels = LabelMap(lab, image.geometry)
    joint = eng.segment_label_prompts(image, labels, kind)
    assert sorted(joint.lesions) == [3, 40]
    pps, vanished = eng.label_map_prompts(image, labels, kind)
    assert not vanished
    alone = {p.lesion_id: eng.segment(image, [p]).lesions[p.lesion_id].mask.to_full() for p in pps}
    m = eng.model(kind)
    pre = preprocess_image(image.array, image.geometry.spacing, m.plans_manager, m.configuration_manager,
                           use_nnunet_crop=True)
    reference = {p.lesion_id: S.segment_full_volume_reference(image.array, image.geometry.spacing, p, m, tta=tta,
                                                              pre=pre) for p in pps}
    _assert_own_masks(joint, alone, reference)
    if tta:
        return
    via_api = api.run_sync(api.iter_segment_label_map(eng, image, labels, kind))
    for lid in (3, 40):
        assert np.array_equal(via_api.lesions[lid].mask.to_full(), alone[lid])


def test_masks_are_crops_inside_the_tiles(engines, images):
    eng, image = engines[False], images[0]
    res = eng.segment(image, POINTS)
    for r in res.lesions.values():
        assert r.mask.geometry == image.geometry
        assert r.mask.array.dtype == bool and r.mask.array.size < np.prod(image.shape)
        assert r.status in ("ok", "check") and r.provenance["engine"] == "lesionlocator"
        assert r.provenance["tiles"] == 1 and r.provenance["tta"] is False


@pytest.mark.parametrize("tta", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["no-tta", "tta"])
def test_tracking_each_lesion_from_its_own_mask_over_two_followups(engines, images, tta):
    pytest.importorskip("unigradicon")
    eng = engines[tta]
    base, fu1, fu2 = images
    seg = eng.segment(base, POINTS)
    own = {lid: r.mask for lid, r in seg.lesions.items()}
    assert own[1].overlap_voxels(own[2]) > 0
    joint = api.run_sync(api.iter_track_series(eng, base, own, [fu1, fu2]))
    overlapped = False
    for lid in own:
        alone = api.run_sync(api.iter_track_series(eng, base, {lid: own[lid]}, [fu1, fu2]))
        for k in range(2):
            got = joint.results[k].lesions[lid]
            assert got.mask.geometry == (fu1, fu2)[k].geometry
            assert np.array_equal(got.mask.to_full(), alone.results[k].lesions[lid].mask.to_full()), (lid, k)
            assert got.status == alone.results[k].lesions[lid].status
    # (the alone chain tracked follow-up 2 from each lesion's own follow-up-1 mask, so the joint run did too)
    for k in range(2):
        r = joint.results[k]
        assert sorted(r.lesions) == [1, 2]
        overlapped |= bool(r.overlaps())
    assert overlapped or any(r.status == "lost" for res in joint.results for r in res.lesions.values())


def test_tracking_takes_a_label_map_too(engines, images):
    pytest.importorskip("unigradicon")
    eng = engines[False]
    base, fu1, _ = images
    seg = eng.segment(base, POINTS)
    # a label map prompt: one mask per id (overlaps impossible there), same as giving those masks
    from_map = eng.track(base, seg.labels, fu1)
    own = api.as_lesion_masks(seg.labels) if hasattr(api, "as_lesion_masks") else None
    from napari_lesionlocator.engines.base import as_lesion_masks

    from_masks = eng.track(base, as_lesion_masks(seg.labels), fu1)
    assert own is None or set(own) == {1, 2}
    for lid in (1, 2):
        assert np.array_equal(from_map.lesions[lid].mask.to_full(), from_masks.lesions[lid].mask.to_full())
    assert from_map.labels.geometry == fu1.geometry

"""Per-lesion results of the classical engine: own masks, honest statuses, new-lesion candidates."""

from __future__ import annotations

import numpy as np
import pytest
from classical_phantom import Lesion, Scene, centered_geometry, dice, render

from napari_lesionlocator.core.prompts import BoxPrompt, PointPrompt
from napari_lesionlocator.core.results import LesionMask
from napari_lesionlocator.engines.base import EngineSettings
from napari_lesionlocator.engines.classical import ClassicalEngine
from napari_lesionlocator.engines.classical.track import track_lesions


@pytest.fixture(scope="module")
def engine():
    return ClassicalEngine(EngineSettings(threads=1))


GEO = centered_geometry((40, 80, 80), (2.0, 1.0, 1.0))


def test_segment_returns_each_lesion_with_a_status(engine):
    image, gt = render(Scene([Lesion((0, 0, -15), (7, 7, 7)), Lesion((0, 5, 18), (5, 6, 5), hu=20)]), GEO, seed=1)
    prompts = [PointPrompt(1, tuple(int(v) for v in np.argwhere(gt.array == 1).mean(0).round())),
               BoxPrompt(2, _box(gt.array == 2))]
    res = engine.segment(image, prompts)
    assert set(res.lesions) == {1, 2}
    for lid in (1, 2):
        r = res.lesions[lid]
        assert r.status == "ok", r.messages
        assert dice(r.mask.to_full(), gt.array == lid) >= 0.85
        assert np.array_equal(res.labels.array == lid, r.mask.to_full())


def _box(mask):
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    return (lo[0], hi[0], lo[1], hi[1], lo[2], hi[2])


def test_click_always_inside_and_lung_click_is_empty_with_reason(engine):
    image, gt = render(Scene([Lesion((0, 0, 0), (6, 6, 6))]), GEO, seed=2)
    c = tuple(int(v) for v in np.argwhere(gt.array == 1).mean(0).round())
    # a click 1 voxel off the edge, on partial volume
    edge = np.argwhere(gt.array == 1)
    far = tuple(int(v) for v in edge[np.argmax(edge[:, 2])])
    for p in (c, far):
        r = engine.segment(image, [PointPrompt(1, p)]).lesions[1]
        assert r.mask.to_full()[p], p
    lung = (20, 10, 10)
    r = engine.segment(image, [PointPrompt(3, lung)]).lesions[3]
    assert r.status == "empty" and r.messages and "air" in r.messages[0]


def test_low_contrast_leak_is_bounded_and_flagged(engine):
    # a lesion of 15 HU over soft tissue (noise 15 HU) in a big block of soft tissue: no intensity edge
    scene = Scene([Lesion((0, 0, 22), (8, 8, 8), hu=55.0)], wall_x=5.0, lung_radius=45, body_radius=55)
    image, gt = render(scene, centered_geometry((40, 64, 64), (2.0, 1.8, 1.8)), seed=3)
    p = tuple(int(v) for v in np.argwhere(gt.array == 1).mean(0).round())
    r = engine.segment(image, [PointPrompt(1, p)]).lesions[1]
    assert r.mask.to_full()[p]
    assert r.volume_ml < 4 / 3 * np.pi * 45 ** 3 / 1000
    if dice(r.mask.to_full(), gt.array == 1) < 0.5:
        assert r.status == "check" and r.messages


def test_overlapping_lesions_are_tracked_each_on_its_own(engine):
    image, gt = render(Scene([Lesion((0, 0, 0), (8, 8, 8))]), GEO, seed=4)
    follow, fgt = render(Scene([Lesion((0, 0, 0), (8, 8, 8))]), GEO, seed=5)
    whole = LesionMask.from_full(image.geometry, gt.array == 1)
    # lesion 2's own mask is the same lesion's right half: it overlaps lesion 1 entirely
    half = gt.array == 1
    half[:, :, : int(np.argwhere(half).mean(0)[2])] = False
    masks = {1: whole, 2: LesionMask.from_full(image.geometry, half)}
    res = track_lesions(image, masks, follow, candidates=False)
    assert set(res.lesions) == {1, 2}
    m1, m2 = res.lesions[1].mask.to_full(), res.lesions[2].mask.to_full()
    assert dice(m1, fgt.array == 1) >= 0.8
    assert (m1 & m2).any(), "each lesion keeps its own mask: overlaps survive"
    assert res.overlaps() and res.overlaps()[0][:2] == (1, 2)


def test_new_lesion_at_follow_up_1_of_the_sample_is_a_top_three_candidate(engine):
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    study = make_synthetic_study(seed=0, size="small")
    res = engine.track(study.images[0], study.labels[0], study.images[1])
    assert 7 not in res.lesions  # never added as a lesion
    truth = study.labels[1].array == 7
    centre = np.argwhere(truth).mean(0)
    hits = []
    for c in res.new_candidates[:3]:
        b = c["box"]
        assert len(b) == 6 and set(c) >= {"centroid_mm", "box", "score"}
        hits.append(all(b[2 * a] <= centre[a] < b[2 * a + 1] for a in range(3)))
    assert any(hits), res.new_candidates
    scores = [c["score"] for c in res.new_candidates]
    assert scores == sorted(scores, reverse=True)
    # statuses: tracked lesions ok or check with a reason, the vanished ones at tp2 lost later
    for r in res.lesions.values():
        assert r.status in ("ok", "check")
        assert r.status == "ok" or r.messages


def test_new_lesion_search_can_be_switched_off():
    """EngineSettings.extra['new_candidates'] = False: tracking without the new-lesion search."""
    from napari_lesionlocator.engines.base import EngineSettings
    from napari_lesionlocator.engines.classical import ClassicalEngine
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    study = make_synthetic_study(seed=0)
    off = ClassicalEngine(EngineSettings(threads=1, extra={"new_candidates": False}))
    res = off.track(study.images[0], study.labels[0], study.images[1])
    assert res.new_candidates == []
    assert res.lesions and all(r.status in ("ok", "check", "lost") for r in res.lesions.values())


def test_a_point_mask_much_narrower_than_the_clicked_blob_is_flagged():
    from napari_lesionlocator.engines.classical import segment as seg

    def mask_of(diam):
        m = seg.RoiMask(np.ones((2, 2, 2), bool), np.zeros(3, int), np.full(3, 2))
        m.quality["diameter_mm"] = diam
        return m

    small = mask_of(9.0)
    seg._check_blob_size(small, 8.0)  # a 16 mm blob at the point, a 9 mm mask
    assert small.status == "check" and "smaller than the blob" in small.reasons[0]
    fine = mask_of(14.0)
    seg._check_blob_size(fine, 8.0)
    assert fine.status == "ok" and fine.quality["blob_diameter_mm"] == 16.0
    organ = mask_of(9.0)  # the largest LoG scale answers an organ, not the lesion: no claim
    seg._check_blob_size(organ, 13.6 * np.sqrt(3.0))
    assert organ.status == "ok"


def test_ground_glass_seen_around_a_solid_core_but_not_delineated_is_a_reason_to_doubt():
    from napari_lesionlocator.engines.classical import segment as seg

    sp = np.array([1.0, 1.0, 1.0])
    z, y, x = np.ogrid[:40, :40, :40]
    r = np.sqrt((z - 20.0) ** 2 + (y - 20.0) ** 2 + (x - 20.0) ** 2)
    solid = r <= 5
    model = seg.IntensityModel(40.0, -300.0, 200.0, -840.0)
    rim = (r > 5) & (r <= 10)
    coherent = np.where(solid, 40.0, np.where(rim, -520.0, -840.0)).astype(np.float32)
    notes: list = []
    grown = seg._add_ground_glass(coherent, solid, model, sp, (20, 20, 20), 5.0, None, notes)
    assert grown.sum() > 3 * solid.sum() and notes == []
    # the same rim eaten by noise: 60 % of its voxels in the band, scattered, no coherent rim
    speckle = np.random.default_rng(0).random(coherent.shape) < 0.6
    noisy = np.where(rim & ~speckle, -840.0, coherent).astype(np.float32)
    grown = seg._add_ground_glass(noisy, solid, model, sp, (20, 20, 20), 5.0, None, notes)
    assert grown.sum() < 1.25 * solid.sum()
    assert len(notes) == 1 and "ground glass" in notes[0]

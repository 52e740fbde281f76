"""Classical tracking under known motion, onto follow-up grids of another size, spacing, origin and direction."""

from __future__ import annotations

import numpy as np
import pytest
from classical_phantom import Lesion, Scene, centered_geometry, dice, render, rotation

from napari_lesionlocator.api import iter_track_series, run_sync
from napari_lesionlocator.core.errors import Cancelled, InputImageError
from napari_lesionlocator.core.image import LabelMap
from napari_lesionlocator.core.progress import CancelToken
from napari_lesionlocator.engines.base import EngineSettings
from napari_lesionlocator.engines.classical import ClassicalEngine

LESIONS = [Lesion((0, 0, 0), (10, 8, 7)), Lesion((10, -25, 20), (5, 5, 5), hu=20), Lesion((-15, 20, -20), (6, 6, 6))]


def scene(lesions=LESIONS) -> Scene:
    return Scene(
        list(lesions),
        wall_x=40.0,
        vessels=[((0, 8, -30), (0, 0.1, 1), 2.0), ((0, -25, 26), (1, 0, 0), 2.5)],
        lung_radius=45,
        body_radius=60,
    )


# Known motion of the patient between scans: follow-up world p' = R p + t (mm, z y x).
R = rotation(0, 6) @ rotation(1, 3)
T = np.array([4.0, -6.0, 7.0])


def moved(world):
    return (world - T) @ R  # scene coordinates of follow-up world points: R^T (p' - t)


BASE_GEO = centered_geometry((50, 70, 70), (2.0, 1.8, 1.8))
FOLLOW_GEO = centered_geometry((40, 80, 64), (2.5, 1.6, 2.0), center=(3, -5, 6), direction=rotation(2, 10))


@pytest.fixture(scope="module")
def baseline():
    return render(scene(), BASE_GEO, seed=1)


@pytest.fixture(scope="module")
def engine():
    return ClassicalEngine(EngineSettings(threads=1))


def test_known_motion_other_grid(baseline, engine):
    image, gt = baseline
    follow, follow_gt = render(scene(), FOLLOW_GEO, seed=2, world_map=moved)
    result = engine.track(image, gt, follow)
    assert result.labels.geometry == follow.geometry
    assert result.lost_ids == []
    for lid in (1, 2, 3):
        d = dice(result.labels.array == lid, follow_gt.array == lid)
        assert d >= 0.75, f"lesion {lid}: Dice {d:.3f} ({result.messages})"


def test_lost_lesion_and_ids_kept(baseline, engine):
    image, gt = baseline
    ids = gt.array.copy()
    ids[gt.array == 1], ids[gt.array == 2], ids[gt.array == 3] = 5, 12, 40
    follow, follow_gt = render(scene(LESIONS[:2]), FOLLOW_GEO, seed=3, world_map=moved)
    result = engine.track(image, LabelMap(ids, gt.geometry), follow)
    assert result.lost_ids == [40]
    assert not (result.labels.array == 40).any()
    assert any("lesion 40: lost" in m for m in result.messages)
    assert dice(result.labels.array == 5, follow_gt.array == 1) >= 0.75
    assert dice(result.labels.array == 12, follow_gt.array == 2) >= 0.7


def test_growing_lesion_and_series(baseline, engine):
    """Lesion 1 grows by 30 % per axis, then the series goes on to a second follow-up."""
    image, gt = baseline
    grown = [Lesion(LESIONS[0].center, tuple(1.3 * r for r in LESIONS[0].radii)), *LESIONS[1:]]
    f1, f1_gt = render(scene(grown), FOLLOW_GEO, seed=4, world_map=moved)
    f2, f2_gt = render(scene(grown), BASE_GEO, seed=5)
    series = run_sync(iter_track_series(engine, image, gt, [f1, f2], lesion_ids=[1, 3]))
    assert [r.labels.ids for r in series.results] == [[1, 3], [1, 3]]
    assert dice(series.results[0].labels.array == 1, f1_gt.array == 1) >= 0.8
    assert dice(series.results[1].labels.array == 1, f2_gt.array == 1) >= 0.8


def test_outside_field_of_view_is_lost(baseline, engine):
    image, gt = baseline
    # A follow-up covering only the upper part of the chest: lesion 3 (z = -15 mm) is not in it.
    geo = centered_geometry((10, 70, 70), (2.0, 1.8, 1.8), center=(12, 0, 0))
    follow, _ = render(scene(), geo, seed=6)
    result = engine.track(image, gt, follow)
    assert 3 in result.lost_ids
    assert not (result.labels.array == 3).any()


def test_cancel_progress_and_bad_input(baseline, engine):
    image, gt = baseline
    follow, _ = render(scene(), FOLLOW_GEO, seed=2, world_map=moved)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        engine.track(image, gt, follow, cancel=token)

    class CancelDuringRegistration(CancelToken):
        calls = 0

        def raise_if_cancelled(self):
            self.calls += 1
            if self.calls > 3:
                raise Cancelled("cancelled by the user")

    with pytest.raises(Cancelled):
        engine.track(image, gt, follow, cancel=CancelDuringRegistration())

    wrong_grid = LabelMap(gt.array[:, :, :-1].copy(), BASE_GEO.crop((0, 0, 0), (50, 70, 69)))
    with pytest.raises(InputImageError, match="not on the baseline image's grid"):
        engine.track(image, wrong_grid, follow)

    empty = engine.track(image, LabelMap.empty(BASE_GEO), follow)
    assert empty.labels.ids == [] and "nothing to track" in empty.messages[0]


def test_progress_reported(baseline, engine):
    image, gt = baseline
    follow, _ = render(scene(LESIONS[:1]), FOLLOW_GEO, seed=7, world_map=moved)
    only_one = LabelMap((gt.array == 1).astype(np.uint16), gt.geometry)
    events = []
    engine.track(image, only_one, follow, on_progress=events.append)
    # global registration, the lesion, the new-lesion search, done
    assert [e.step for e in events] == [0, 1, 2, 3]
    assert events[-1].step == events[-1].total


# A lesion with a weak intensity edge (about 20 HU over soft tissue, noise 20 HU) in the chest
# wall: the segmentation cannot reproduce it at baseline, so tracking falls back on the
# registered mask. That fallback must still notice when the lesion is gone.
WEAK_GEO = centered_geometry((40, 64, 64), (2.0, 1.8, 1.8))
WEAK = Lesion((0, 0, 22), (7, 7, 7), hu=60.0)


def weak_scene(lesions) -> Scene:
    return Scene(
        list(lesions),
        wall_x=5.0,
        lung_radius=45,
        body_radius=55,
        vessels=[((0, 20, -30), (0.2, 0.1, 1), 2.5)],
    )


@pytest.mark.parametrize("persists", [True, False])
def test_weak_edge_lesion_fallback_kept_or_lost(engine, persists):
    base, gt = render(weak_scene([WEAK]), WEAK_GEO, seed=1)
    follow, follow_gt = render(weak_scene([WEAK] if persists else []), WEAK_GEO, seed=2)
    result = engine.track(base, gt, follow)
    assert any("no intensity edge at baseline" in m for m in result.messages), result.messages
    if persists:
        assert result.lost_ids == []
        assert any("used the registered mask" in m for m in result.messages), result.messages
        assert dice(result.labels.array == 1, follow_gt.array == 1) >= 0.8
    else:
        assert result.lost_ids == [1]
        assert not (result.labels.array == 1).any()
        assert any("lesion 1: lost" in m and "no longer stands out" in m for m in result.messages), result.messages


# A nodule flattened against the chest wall (same density as the nodule): its boundary against the
# lung is an intensity edge, the one against the wall is not. Tracking must measure its growth or
# shrinkage into the lung (status ok, no registered-mask fallback) and keep out of the wall.
JUXTA = Lesion((0, 0, 33), (8, 8, 8), hu=30.0)


def juxta_scene(scale: float) -> Scene:
    return Scene([Lesion(JUXTA.center, tuple(scale * r for r in JUXTA.radii), JUXTA.hu)], wall_x=40.0,
                 lung_radius=45, body_radius=60)


def _clipped(labels: LabelMap, world_map=None) -> np.ndarray:
    from classical_phantom import world_grid

    world = world_grid(labels.geometry)
    if world_map is not None:
        world = world_map(world)
    return (labels.array == 1) & (world[..., 2] < 40.0)


@pytest.mark.parametrize("scale", [1.25, 0.8])
def test_juxtapleural_growth_is_measured_not_registered(engine, scale):
    base, base_gt = render(juxta_scene(1.0), BASE_GEO, seed=6)
    truth0 = _clipped(base_gt)
    follow, follow_gt = render(juxta_scene(scale), FOLLOW_GEO, seed=7, world_map=moved)
    truth1 = _clipped(follow_gt, moved)
    result = engine.track(base, LabelMap(truth0.astype(np.uint16), base.geometry), follow)
    lesion = result.lesions[1]
    assert lesion.status == "ok", lesion.notes
    pred = result.labels.array == 1
    assert dice(pred, truth1) >= 0.85, (dice(pred, truth1), result.messages)
    # the size change is measured: volume ratio within 15 % of the truth's
    ratio_true = truth1.sum() * np.prod(FOLLOW_GEO.spacing) / (truth0.sum() * np.prod(BASE_GEO.spacing))
    ratio = pred.sum() * np.prod(FOLLOW_GEO.spacing) / (truth0.sum() * np.prod(BASE_GEO.spacing))
    assert abs(ratio / ratio_true - 1.0) <= 0.15, (ratio, ratio_true)
    # and it stays out of the chest wall (of the same density) beyond partial volume
    from classical_phantom import world_grid

    in_wall = moved(world_grid(FOLLOW_GEO))[..., 2] >= 42.0
    assert (pred & in_wall).sum() <= 0.05 * pred.sum()

"""Synthetic study: structure, lesion timeline, volumes, poses and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.sample.synthetic import SIZES, make_synthetic_study


def _centroid_world(labels: LabelMap, lesion_id: int) -> np.ndarray:
    idx = np.argwhere(labels.array == lesion_id).astype(float)
    return labels.geometry.index_to_world(idx.mean(axis=0))


def test_three_timepoints_with_matching_grids(small_study):
    assert len(small_study.images) == len(small_study.labels) == 3
    for k, (img, lab) in enumerate(zip(small_study.images, small_study.labels)):
        assert isinstance(img, Image) and isinstance(lab, LabelMap)
        assert img.array.dtype == np.float32
        assert img.name == f"case0_tp{k}"
        assert img.geometry.same_grid(lab.geometry)
        assert img.shape == SIZES["small"]["shapes"][k]
        assert np.allclose(img.geometry.spacing, SIZES["small"]["spacing"])
    dates = [img.acquisition_date for img in small_study.images]
    assert dates == sorted(dates) and len(set(dates)) == 3
    # The follow-ups have their own field of view, not the baseline grid.
    g0, g1, g2 = (img.geometry for img in small_study.images)
    assert not g0.same_grid(g1) and not g0.same_grid(g2)


def test_baseline_lesion_kinds_and_sizes(small_study):
    base = [r for r in small_study.lesions if r.present[0]]
    kinds = {r.kind for r in base}
    assert len(base) >= 4
    assert {"solid_nodule", "part_solid_nodule", "liver_lesion", "lymph_node"} <= kinds
    diameters = [r.diameter_mm for r in base]
    assert min(diameters) < 10.0 and max(diameters) > 30.0
    assert all(7.0 <= d <= 42.0 for d in diameters)
    assert [r.id for r in small_study.lesions] == list(range(1, len(small_study.lesions) + 1))


def test_label_ids_match_the_table_at_every_timepoint(small_study):
    for k, lab in enumerate(small_study.labels):
        expected = {r.id for r in small_study.lesions if r.present[k]}
        assert set(lab.ids) == expected


def test_new_and_disappearing_lesion(small_study):
    new = [r for r in small_study.lesions if not r.present[0] and r.present[1]]
    gone = [r for r in small_study.lesions if r.present[0] and not r.present[2]]
    assert len(new) == 1 and new[0].present[2]
    assert len(gone) == 1 and gone[0].kind == "lymph_node"
    assert gone[0].id not in small_study.labels[2].ids
    assert new[0].id not in small_study.labels[0].ids and new[0].id in small_study.labels[1].ids
    assert new[0].id > max(r.id for r in small_study.lesions if r.present[0])


def test_volumes_follow_the_specified_growth(small_study):
    grew = shrank = 0
    for r in small_study.lesions:
        for k in range(3):
            if r.scale[k] == 0:
                assert r.volume_ml[k] == 0.0 and not r.present[k]
                continue
            # Ground truth voxels agree with the continuous model volume.
            assert r.volume_ml[k] == pytest.approx(r.nominal_volume_ml[k], rel=0.08)
        if r.present[0] and r.present[2]:
            ratio = r.volume_ml[2] / r.volume_ml[0]
            assert ratio == pytest.approx(r.scale[2] ** 3, rel=0.1)
            grew += ratio > 1.3
            shrank += ratio < 0.7
    assert grew >= 2 and shrank >= 1


def test_lesion_centroids_follow_the_known_pose(small_study):
    for r in small_study.lesions:
        for k, lab in enumerate(small_study.labels):
            if not r.present[k]:
                assert r.centre_world[k] is None
                continue
            got = _centroid_world(lab, r.id)
            assert np.linalg.norm(got - np.asarray(r.centre_world[k])) < 1.0, (r.id, k)
    # And the follow-up poses really move the patient by several mm and 1-3 degrees.
    for pose in small_study.poses[1:]:
        assert 4.0 <= np.linalg.norm(pose.translation_mm) <= 8.0
        angle = np.degrees(np.arccos(np.clip((np.trace(pose.rotation) - 1) / 2, -1, 1)))
        assert 1.0 <= angle <= 3.0
    # A lesion far from the diaphragm moves rigidly: its displacement is R c + t - c.
    r1 = small_study.lesion(1)
    c0 = _centroid_world(small_study.labels[0], 1)
    pose = small_study.poses[1]
    expected = c0 @ pose.rotation.T + pose.translation_mm
    got = _centroid_world(small_study.labels[1], 1)
    assert np.linalg.norm(got - expected) < 1.5
    assert np.linalg.norm(got - c0) > 3.0
    assert r1.present == (True, True, True)


def test_breathing_moves_the_liver_lesion_more_than_the_rigid_pose(small_study):
    pose = small_study.poses[1]
    c0 = _centroid_world(small_study.labels[0], 3)
    rigid = c0 @ pose.rotation.T + pose.translation_mm
    got = _centroid_world(small_study.labels[1], 3)
    # The diaphragm moved by pose.breath_mm along the patient z axis; the liver follows it.
    along_z = (got - rigid) @ pose.rotation[:, 0]
    assert along_z == pytest.approx(pose.breath_mm, abs=1.5)


def test_same_seed_same_arrays_other_seed_differs(small_study):
    again = make_synthetic_study(seed=0, size="small", use_cache=False)
    for a, b in zip(small_study.images + small_study.labels, again.images + again.labels):
        assert np.array_equal(a.array, b.array)
        assert a.geometry == b.geometry
    other = make_synthetic_study(seed=1, size="small", use_cache=False)
    assert not np.array_equal(other.images[0].array, small_study.images[0].array)
    assert not np.array_equal(other.labels[0].array, small_study.labels[0].array)


def test_rejects_bad_arguments(small_study):
    with pytest.raises(ValueError, match="size must be one of"):
        make_synthetic_study(size="huge")
    with pytest.raises(ValueError, match="orthonormal"):
        make_synthetic_study(direction=np.diag([1.0, 2.0, 1.0]))
    with pytest.raises(KeyError, match="no lesion with id 99"):
        small_study.lesion(99)


def test_a_lesion_that_cannot_fit_is_reported():
    from napari_lesionlocator.sample.anatomy import Phantom
    from napari_lesionlocator.sample.catalogue import _fit_inside, lesion_models

    model = lesion_models(Phantom(0), 0)[0]
    with pytest.raises(RuntimeError, match="does not fit in its organ"):
        _fit_inside(model, lambda pz, py, px: np.zeros(np.shape(pz), bool), model.centre + 20.0)


def test_cached_studies_are_independent_copies():
    a = make_synthetic_study(seed=0, size="small")
    b = make_synthetic_study(seed=0, size="small")
    assert a.images[0].array is not b.images[0].array
    assert np.array_equal(a.images[0].array, b.images[0].array)
    a.images[0].array[:] = 0
    a.labels[0].array[:] = 0
    a.models[0].centre[:] = 0
    c = make_synthetic_study(seed=0, size="small")
    assert np.array_equal(c.images[0].array, b.images[0].array)
    assert np.array_equal(c.labels[0].array, b.labels[0].array)
    assert np.array_equal(c.models[0].centre, b.models[0].centre)

"""The randomised evaluation family: seeded, exact ground truth, lesions where their kind is hard."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesionlocator.sample.anatomy import Tissue
from napari_lesionlocator.sample.family import HELD_OUT_SEEDS, KINDS, TUNING_SEEDS, make_family_case


@pytest.fixture(scope="module")
def case():
    return make_family_case(3)


def test_same_seed_same_case(case):
    again = make_family_case(3)
    assert np.array_equal(again.images[0].array, case.images[0].array)
    assert np.array_equal(again.labels[1].array, case.labels[1].array)
    assert [r.kind for r in again.lesions] == [r.kind for r in case.lesions]


def test_ground_truth_is_on_each_scan_grid_and_in_its_tissue(case):
    allowed = {"lung": (Tissue.LUNG, Tissue.LUNG_VESSEL, Tissue.AIRWAY_WALL, Tissue.AIRWAY),
               "mediastinum": (Tissue.FAT,), "liver": (Tissue.LIVER, Tissue.LIVER_VESSEL)}
    for image, labels, tissue in zip(case.images, case.labels, case.tissues, strict=True):
        assert labels.geometry == image.geometry
        for rec in case.lesions:
            m = labels.array == rec.id
            if m.any():
                # flattened against its neighbours, never painted into them
                assert np.isin(tissue[m], allowed[rec.organ]).all(), rec


def test_lesions_change_and_one_is_new(case):
    assert len(case.new_ids) == 1
    new = case.lesion(case.new_ids[0])
    assert not (case.labels[0].array == new.id).any()
    assert (case.labels[1].array == new.id).sum() * case.labels[1].geometry.voxel_volume_mm3 > np.pi / 6 * 5 ** 3
    for rec in case.lesions:
        assert rec.kind in KINDS
        if rec.scales[0] > 0:
            assert (case.labels[0].array == rec.id).any()


def test_seeds_vary_grids_kinds_and_contacts():
    cases = [make_family_case(s) for s in (0, 1, 4)]
    dirs = {tuple(np.round(c.images[0].geometry.direction, 6)) for c in cases}
    assert len(dirs) >= 2
    contacts = {r.contact for c in cases for r in c.lesions}
    assert {"pleura", "mediastinum", "vessel"} <= contacts
    assert set(TUNING_SEEDS).isdisjoint(HELD_OUT_SEEDS)
    # the follow-up is on another grid
    g0, g1 = cases[0].images[0].geometry, cases[0].images[1].geometry
    assert g0.shape != g1.shape or g0.spacing != g1.spacing

"""Lesions sit in their organs for any seed; the special contacts (vessel, pleura) hold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_lesionlocator.sample.anatomy import Phantom, Tissue, liver_mask, lung_mask
from napari_lesionlocator.sample.catalogue import _outside_fraction, _segment_distance, lesion_models

ORGAN_TISSUES = {
    "lung": {Tissue.LUNG, Tissue.LUNG_VESSEL, Tissue.AIRWAY_WALL, Tissue.AIRWAY},  # a mass may engulf a bronchus
    "liver": {Tissue.LIVER, Tissue.LIVER_VESSEL},
    "mediastinum": {Tissue.FAT, Tissue.BLOOD, Tissue.MUSCLE, Tissue.AIRWAY_WALL},
}


@pytest.mark.parametrize("seed", range(8))
def test_lesion_models_fit_their_organs(seed):
    phantom = Phantom(seed)
    models = {m.id: m for m in lesion_models(phantom, seed)}
    for lid in (1, 5):
        assert _outside_fraction(models[lid], lung_mask, max(models[lid].scales)) == 0.0
    for lid in (3, 7):
        assert _outside_fraction(models[lid], liver_mask, max(models[lid].scales)) == 0.0
    # The part-solid nodule touches a pulmonary vessel.
    nod = models[2]
    gaps = [_segment_distance(nod.centre, c.a, c.b) - max(c.ra, c.rb) for c in phantom.capsules
            if c.kind == "lung_vessel"]
    assert min(gaps) < nod.semi_axes.min()
    assert _outside_fraction(nod, lung_mask, max(nod.scales)) <= 0.03
    # The lung mass abuts the pleura: inside at its size, partly outside when 10 % bigger.
    mass = models[6]
    assert _outside_fraction(mass, lung_mask, max(mass.scales)) <= 0.03
    assert _outside_fraction(mass, lung_mask, 1.1 * max(mass.scales)) > 0.0


def test_rendered_lesions_lie_in_their_organs(small_study):
    for k, (lab, tis) in enumerate(zip(small_study.labels, small_study.tissues)):
        for r in small_study.lesions:
            mask = lab.array == r.id
            if not mask.any():
                continue
            share = np.isin(tis[mask], list(ORGAN_TISSUES[r.organ])).mean()
            assert share > 0.95, (k, r.id, r.kind, share)
            # At most a spicule tip reaches a rib (breathing moves the lung, not the ribs).
            assert np.isin(tis[mask], [Tissue.CORTICAL, Tissue.CANCELLOUS]).mean() < 0.005


def test_lung_mass_touches_the_chest_wall(small_study):
    lab, tis = small_study.labels[0].array, small_study.tissues[0]
    mass = lab == 6
    shell = ndimage.binary_dilation(mass, iterations=2) & ~mass
    assert np.isin(tis[shell], [Tissue.MUSCLE, Tissue.CORTICAL, Tissue.CANCELLOUS, Tissue.FAT]).any()

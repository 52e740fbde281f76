"""The synthetic CT looks and measures like CT: tissue HU, noise, blur, vessels, lesion contrast."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_lesionlocator.sample.anatomy import TISSUE_HU, Phantom, Tissue


def _core(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Voxels deep inside ``mask`` (free of partial-volume blur from neighbours)."""
    return ndimage.binary_erosion(mask, iterations=iterations)


@pytest.mark.parametrize(
    ("tissue", "lo", "hi"),
    [
        (Tissue.AIR, -1010, -990),
        (Tissue.LUNG, -870, -810),
        (Tissue.FAT, -110, -90),
        (Tissue.MUSCLE, 35, 55),
        (Tissue.BLOOD, 30, 50),
        (Tissue.LIVER, 52, 68),
        (Tissue.SPLEEN, 38, 56),
        (Tissue.CANCELLOUS, 200, 300),
    ],
)
def test_tissue_mean_hu(small_study, tissue, lo, hi):
    img, lab, tis = small_study.images[0].array, small_study.labels[0].array, small_study.tissues[0]
    core = _core((tis == tissue) & (lab == 0), 1 if tissue == Tissue.CANCELLOUS else 2)
    assert core.sum() > 200
    mean = float(img[core].mean())
    assert lo <= mean <= hi, f"{Tissue.NAMES[tissue]}: mean {mean:.1f} HU not in [{lo}, {hi}]"


def test_noise_level_and_correlation(small_study):
    img, tis = small_study.images[1].array, small_study.tissues[1]
    liver = _core(tis == Tissue.LIVER, 3) & (small_study.labels[1].array == 0)
    std = float(img[liver].std())
    assert 10.0 <= std <= 20.0
    assert std == pytest.approx(small_study.noise_hu, abs=2.5)  # texture adds only ~2 HU
    # Neighbouring voxels share noise (the reconstruction kernel), far ones do not.
    air = img[:, :12, :].astype(float) + 1000.0
    r1 = np.corrcoef(air[:, :, :-1].ravel(), air[:, :, 1:].ravel())[0, 1]
    r4 = np.corrcoef(air[:, :, :-4].ravel(), air[:, :, 4:].ravel())[0, 1]
    assert 0.1 < r1 < 0.8 and abs(r4) < 0.1


def test_cortical_bone_and_partial_volume(small_study):
    img, tis = small_study.images[0].array, small_study.tissues[0]
    cortical = img[tis == Tissue.CORTICAL]
    assert 650 <= np.percentile(cortical, 90) <= 1000
    # Partial volume: across the lung/chest-wall edge the values pass through intermediate HU.
    lung = tis == Tissue.LUNG
    edge = lung & ~ndimage.binary_erosion(lung)
    assert -800 < float(img[edge].mean()) < -300


def test_vessels_branch_and_narrow_to_the_periphery():
    ph = Phantom(0)
    caps = [c for c in ph.capsules if c.kind == "lung_vessel"]
    assert len(caps) > 300
    hila = np.array([[15.0, 2.0, -42.0], [15.0, 4.0, 44.0]])
    dist = np.array([np.min(np.linalg.norm(hila - 0.5 * (c.a + c.b), axis=1)) for c in caps])
    radius = np.array([0.5 * (c.ra + c.rb) for c in caps])
    # Every tube narrows along its course, from about 6 mm at the hila to under 1 mm at the tips.
    assert all(c.rb <= c.ra + 1e-9 for c in caps)
    assert max(c.ra for c in caps) > 5.0 and min(c.rb for c in caps) < 1.0
    assert radius[dist < 20].mean() > 1.5 * radius[dist > 60].mean()
    assert np.corrcoef(dist, radius)[0, 1] < -0.2


def test_lung_vessels_are_visible_in_the_image(small_study):
    img, tis = small_study.images[0].array, small_study.tissues[0]
    vessel = tis == Tissue.LUNG_VESSEL
    lung = tis == Tissue.LUNG
    assert 0.01 < vessel.sum() / (vessel.sum() + lung.sum()) < 0.15
    assert float(np.median(img[vessel])) > float(np.median(img[lung])) + 300


@pytest.mark.parametrize(("lesion_id", "lo", "hi"), [(3, 10, 30), (4, 30, 50), (6, 10, 45)])
def test_lesion_attenuation(small_study, lesion_id, lo, hi):
    img, lab = small_study.images[0].array, small_study.labels[0].array
    core = _core(lab == lesion_id, 1)
    assert core.sum() > 20
    assert lo <= float(np.median(img[core])) <= hi


def test_liver_lesion_is_hypodense_against_liver(small_study):
    img, lab, tis = small_study.images[0].array, small_study.labels[0].array, small_study.tissues[0]
    lesion = float(img[_core(lab == 3, 1)].mean())
    liver = float(img[_core(tis == Tissue.LIVER) & (lab == 0)].mean())
    assert liver - lesion > 30


def test_solid_nodules_sit_in_lung_and_the_node_in_soft_tissue(small_study):
    lab, tis = small_study.labels[0].array, small_study.tissues[0]
    for lesion_id, allowed in ((1, {Tissue.LUNG, Tissue.LUNG_VESSEL}), (5, {Tissue.LUNG, Tissue.LUNG_VESSEL})):
        mask = lab == lesion_id
        shell = ndimage.binary_dilation(mask, iterations=2) & ~mask
        assert np.isin(tis[shell], list(allowed)).mean() > 0.9
    node = lab == 4
    shell = ndimage.binary_dilation(node, iterations=1) & ~node
    around = tis[shell]
    # The lymph node sits in mediastinal fat and touches other soft tissue (heart, oesophagus, bronchi).
    assert (around == Tissue.FAT).mean() > 0.2
    assert np.isin(around, [Tissue.BLOOD, Tissue.MUSCLE, Tissue.AIRWAY_WALL]).mean() > 0.05


def test_part_solid_nodule_touches_a_vessel_and_has_ground_glass(small_study):
    img, lab, tis = small_study.images[0].array, small_study.labels[0].array, small_study.tissues[0]
    mask = lab == 2
    assert (tis[mask] == Tissue.LUNG_VESSEL).any() or (
        tis[ndimage.binary_dilation(mask) & ~mask] == Tissue.LUNG_VESSEL).any()
    values = img[mask]
    assert (values < -400).mean() > 0.2 and (values > -100).mean() > 0.05  # ground glass + solid core


def test_tissue_hu_table_is_ct_like():
    assert TISSUE_HU[Tissue.AIR] == -1000 and TISSUE_HU[Tissue.FAT] == -100
    assert 700 <= TISSUE_HU[Tissue.CORTICAL] <= 1000 and 200 <= TISSUE_HU[Tissue.CANCELLOUS] <= 300

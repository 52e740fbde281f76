"""The real CT cases in ../shared/data/real read correctly (NIfTI and NRRD), with their labels.

Expected values come from the SOURCE.md files next to the data.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesionlocator.core.prompts import prompts_from_label_map
from napari_lesionlocator.io import check_ct, read_label_map, read_volumes


def test_pyradiomics_lung1_nrrd(real_data_dir) -> None:
    folder = real_data_dir / "pyradiomics"
    (img,) = read_volumes(folder / "lung1_image.nrrd")
    g = img.geometry
    assert g.shape == (48, 512, 512)  # (z, y, x); SOURCE.md gives x, y, z = 512 x 512 x 48
    np.testing.assert_allclose(g.spacing, (5.0, 0.5703, 0.5703), atol=1e-4)
    np.testing.assert_allclose(g.origin, (-777.5, -325.0, -146.0), atol=0.5)
    assert g.is_axis_aligned
    assert img.array.min() == -1024 and img.array.max() == 3071
    assert check_ct(img) is None
    labels = read_label_map(folder / "lung1_label.nrrd", like=img)
    assert labels.ids == [1] and int((labels.array == 1).sum()) == 837
    (box,) = prompts_from_label_map(labels.array, "box")
    assert box.box == (32, 35, 347, 373, 206, 230)  # slices 32-34, y 347-372, x 206-229 (inclusive)


def test_pyradiomics_lung2_label_on_grid(real_data_dir) -> None:
    folder = real_data_dir / "pyradiomics"
    (img,) = read_volumes(folder / "lung2_image.nrrd")
    labels = read_label_map(folder / "lung2_label.nrrd", like=img)
    assert int((labels.array == 1).sum()) == 24644
    (pt,) = prompts_from_label_map(labels.array, "point")
    assert pt.zyx == pytest.approx((20, 364, 355), abs=1)  # SOURCE.md centroid (x, y, z) = (355, 364, 20)


@pytest.mark.parametrize(("case", "voxels", "size_xyz"), [("STS_019", 5564, (136, 134, 47)),
                                                          ("STS_008", 8862, (141, 137, 51))])
def test_ibsi_nifti(real_data_dir, case, voxels, size_xyz) -> None:
    folder = real_data_dir / "ibsi_sts_validation" / "nifti" / case
    (img,) = read_volumes(folder / "CT_image.nii.gz")
    assert img.shape == tuple(reversed(size_xyz))
    np.testing.assert_allclose(img.geometry.spacing, (3.27, 0.9766, 0.9766), atol=1e-3)
    assert img.geometry.is_axis_aligned and img.array.min() == -1000
    assert check_ct(img) is None
    labels = read_label_map(folder / "CT_mask.nii.gz", like=img)
    assert labels.ids == [1] and int(labels.array.sum()) == voxels
    (box,) = prompts_from_label_map(labels.array, "box")
    assert box.start.tolist() == [16, 52, 52]  # the 5 cm crop margin, SOURCE.md

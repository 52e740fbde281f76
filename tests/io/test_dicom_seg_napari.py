"""File > Open on a DICOM-SEG (or a folder with a CT series and its SEGs) in napari: the CT layer and a
Labels layer on it, one id per segment, names kept. Run under xvfb-run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

napari = pytest.importorskip("napari")

pytestmark = pytest.mark.gui
PLUGIN = "napari-lesionlocator"


def test_open_a_seg_file_gives_ct_and_labels(make_napari_viewer, real_data_dir) -> None:
    import SimpleITK as sitk

    from napari_lesionlocator.core.geometry import Geometry

    base = real_data_dir / "dcmqi_seg"
    viewer = make_napari_viewer()
    layers = viewer.open(str(base / "seg" / "partial_overlaps.dcm"), plugin=PLUGIN)
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    ct, labels = layers
    assert ct.data.shape == labels.data.shape == (3, 512, 512)
    assert labels.metadata["lesion_names"] == {1: "GREEN", 2: "ORANGE", 3: "PURPLE", 4: "LIGHT_BLUE",
                                               5: "DARK_BLUE"}
    assert any("overlap" in m for m in labels.metadata["seg_messages"])
    g_ct = Geometry.from_metadata(ct.metadata["geometry"])
    assert Geometry.from_metadata(labels.metadata["geometry"]).same_grid(g_ct)
    # the labels sit on the CT in world space: same world position for the same voxel
    np.testing.assert_allclose(labels.data_to_world([1, 100, 200]), ct.data_to_world([1, 100, 200]))
    # one id per segment; the display map lets the later segment win where they overlap
    assert set(np.unique(labels.data)) == {0, 1, 2, 3, 4, 5}
    truth3 = sitk.GetArrayFromImage(sitk.ReadImage(str(base / "nrrd" / "partial_overlaps-3.nrrd"))) == 3
    np.testing.assert_array_equal(np.asarray(labels.data) == 3, truth3 & ~np.isin(np.asarray(labels.data), [4, 5]))


def test_open_a_folder_with_ct_and_segs(make_napari_viewer, real_data_dir, tmp_path) -> None:
    base = real_data_dir / "dcmqi_seg"
    shutil.copytree(base / "ct-3slice", tmp_path / "ct")
    shutil.copy(base / "seg" / "liver.dcm", tmp_path / "liver.dcm")
    shutil.copy(base / "seg" / "partial_overlaps.dcm", tmp_path / "po.dcm")
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="overlap"):
        layers = viewer.open(str(tmp_path), plugin=PLUGIN)
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds == ["Image", "Labels", "Labels"]  # one CT, one Labels layer per SEG
    liver = next(layer for layer in layers if layer.name.endswith("liver"))
    assert int((np.asarray(liver.data) == 1).sum()) == 107098
    assert liver.metadata["lesion_names"] == {1: "Liver"}

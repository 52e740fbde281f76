"""DICOM folders: several series, slice order, geometry in physical space, bad series."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_lesionlocator.core.errors import InputImageError, OutputExistsError
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image
from napari_lesionlocator.io import (
    DicomSeriesWarning,
    check_ct,
    list_dicom_series,
    read_dicom_folder,
    read_volume,
    read_volumes,
    write_dicom_series,
)

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("SimpleITK")


def _rot(a: float, c: float) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx


def _image(geom: Geometry, seed: int, name: str = "img", low: int = -1024) -> Image:
    rng = np.random.default_rng(seed)
    return Image(rng.integers(low, 1500, geom.shape).astype(np.float32), geom, name=name)


def _assert_same_physical_volume(read: Image, truth: Image) -> None:
    """Every voxel of ``read`` holds the value ``truth`` has at the same world point."""
    idx = np.argwhere(np.ones(read.shape, bool))
    world = read.geometry.index_to_world(idx)
    t_idx = truth.geometry.world_to_index(world)
    np.testing.assert_allclose(t_idx, np.round(t_idx), atol=1e-3)
    t_idx = np.round(t_idx).astype(int)
    assert np.all((t_idx >= 0) & (t_idx < truth.shape))
    np.testing.assert_array_equal(read.array[tuple(idx.T)], truth.array[tuple(t_idx.T)])
    assert read.shape == truth.shape or sorted(read.shape) == sorted(truth.shape)


ROT = Geometry((6, 9, 8), (2.5, 0.8, 0.7), (10.0, -20.0, 30.0), tuple(_rot(0.25, 0.6).reshape(-1)))
# Slice normal opposite to the stacking direction (det -1): readers re-sort the slices.
FLIPPED = Geometry((5, 7, 6), (3.0, 0.9, 0.9), (-40.0, 5.0, 12.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.fixture
def two_series(tmp_path):
    folder = tmp_path / "patient1"
    ct = _image(ROT, 1, "ct")
    mr = _image(FLIPPED, 2, "mr", low=0)
    write_dicom_series(ct, folder, series_description="CT chest", series_number=3,
                       acquisition_date="2024-02-29", prefix="ct")
    write_dicom_series(mr, folder, modality="MR", series_description="T1 ax", series_number=7,
                       acquisition_date="2023-11-05", prefix="mr")
    return folder, ct, mr


def test_folder_with_two_series(two_series) -> None:
    folder, ct, mr = two_series
    infos = list_dicom_series(folder)
    assert [i.series_number for i in infos] == ["3", "7"]
    assert [len(i.files) for i in infos] == [6, 5]
    images = read_dicom_folder(folder)
    assert [im.modality for im in images] == ["CT", "MR"]
    assert [im.acquisition_date for im in images] == ["2024-02-29", "2023-11-05"]
    assert [im.metadata["series_description"] for im in images] == ["CT chest", "T1 ax"]
    assert [im.name for im in images] == ["patient1_s3_CT_chest", "patient1_s7_T1_ax"]
    assert images[0].metadata["series_instance_uid"] == infos[0].uid
    assert images[0].metadata["slice_spacing_mm"] == pytest.approx(2.5)
    # Rotated CT comes back on exactly the same grid with the same values.
    assert images[0].geometry.same_grid(ct.geometry, origin_tol_mm=1e-3, direction_tol=1e-5)
    np.testing.assert_array_equal(images[0].array, ct.array)
    # The flipped series may be stored the other way round; in physical space it is identical.
    _assert_same_physical_volume(images[1], mr)
    # read_volumes == read_dicom_folder for a folder; read_volume must be told which one.
    assert [im.name for im in read_volumes(folder)] == [im.name for im in images]
    with pytest.raises(InputImageError, match="holds 2 volumes") as info:
        read_volume(folder)
    assert "CT chest" in str(info.value) and "T1 ax" in str(info.value)
    assert read_volume(folder, series="T1 ax").modality == "MR"
    # A single file stands for its own series.
    one = read_volumes(infos[1].files[0])
    assert len(one) == 1 and one[0].modality == "MR"
    # The MR series is reported as not CT, naming the modality.
    with pytest.raises(InputImageError, match="MR, not CT"):
        check_ct(images[1])
    assert check_ct(images[0]) is None


def test_slices_sorted_by_position_not_by_file_name(tmp_path) -> None:
    img = _image(ROT, 3)
    paths = write_dicom_series(img, tmp_path / "s")
    # Rename so that file-name order is reversed and instance numbers are scrambled.
    rng = np.random.default_rng(0)
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = int(rng.integers(1, 1000))
        ds.save_as(p)
        p.rename(p.with_name(f"z{len(paths) - k:03d}.dcm"))
    (out,) = read_dicom_folder(tmp_path / "s")
    np.testing.assert_array_equal(out.array, img.array)


def test_scout_is_skipped_with_warning_and_alone_is_an_error(tmp_path) -> None:
    folder = tmp_path / "f"
    write_dicom_series(_image(ROT, 4), folder, series_number=2, prefix="vol")
    scout = Geometry((1, 9, 8), (1.0, 1.0, 1.0), (0, 0, 0))
    write_dicom_series(_image(scout, 5), folder, series_number=1, series_description="SCOUT", prefix="scout")
    with pytest.warns(DicomSeriesWarning, match="SCOUT.*single slice"):
        images = read_dicom_folder(folder)
    assert len(images) == 1 and images[0].shape == ROT.shape
    only = tmp_path / "only"
    write_dicom_series(_image(scout, 5), only, series_description="SCOUT")
    with pytest.raises(InputImageError, match="no usable 3D series.*single slice"):
        read_dicom_folder(only)


def test_missing_slice_and_gantry_tilt_are_refused(tmp_path) -> None:
    g = Geometry((6, 8, 8), (2.0, 1.0, 1.0), (0, 0, 0))
    paths = write_dicom_series(_image(g, 6), tmp_path / "gap")
    paths[3].unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is silently skipped: the one series is refused
        with pytest.raises(InputImageError, match="not evenly spaced"):
            read_dicom_folder(tmp_path / "gap")
    paths = write_dicom_series(_image(g, 7), tmp_path / "tilt")
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * k, z]  # about 14 degrees of shear
        ds.save_as(p)
    with pytest.raises(InputImageError, match="gantry tilt"):
        read_dicom_folder(tmp_path / "tilt")


def test_date_fallback_and_not_dicom(tmp_path) -> None:
    paths = write_dicom_series(_image(ROT, 8), tmp_path / "d", acquisition_date="2024-01-01")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.StudyDate = "20200101"
        del ds.AcquisitionDate
        del ds.SeriesDate
        ds.save_as(p)
    (img,) = read_dicom_folder(tmp_path / "d")
    assert img.acquisition_date == "2020-01-01"
    (tmp_path / "fake.dcm").write_bytes(b"\x00" * 300)
    with pytest.raises(InputImageError, match="not a DICOM file"):
        read_dicom_folder(tmp_path / "fake.dcm")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.dcm").write_bytes(b"junk")
    with pytest.raises(InputImageError, match="no DICOM series"):
        read_volumes(empty)
    with pytest.raises(OutputExistsError):
        write_dicom_series(_image(ROT, 8), tmp_path / "d")


def test_nested_patient_study_series_folders(tmp_path, two_series) -> None:
    folder, ct, _mr = two_series
    nested = tmp_path / "export" / "PAT1" / "STUDY1"
    nested.mkdir(parents=True)
    folder.rename(nested / "SER")
    write_dicom_series(_image(FLIPPED, 9), tmp_path / "export" / "PAT1" / "STUDY2" / "SER", series_number=1)
    write_dicom_series(_image(FLIPPED, 9), tmp_path / "export" / "PAT1" / "STUDY3" / "SER", series_number=1)
    images = read_volumes(tmp_path / "export")
    assert [im.metadata["series_number"] for im in images] == ["3", "7", "1", "1"]
    assert [im.name for im in images][2:] == ["SER_s1", "SER_s1_2"]
    np.testing.assert_array_equal(images[0].array, ct.array)
    layout = tmp_path / "layout"
    (layout / "Baseline" / "images").mkdir(parents=True)
    with pytest.raises(InputImageError, match="read_study_layout"):
        read_volumes(layout)


def test_stored_values_are_rescaled_to_hu(tmp_path) -> None:
    """Scanners often store unsigned values with RescaleIntercept -1024: the reader must give HU."""
    img = _image(ROT, 10)
    paths = write_dicom_series(img, tmp_path / "u")
    for p in paths:
        ds = pydicom.dcmread(p)
        stored = (ds.pixel_array.astype(np.int32) + 1024).astype(np.uint16)
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = stored.tobytes()
        ds.save_as(p)
    (out,) = read_dicom_folder(tmp_path / "u")
    np.testing.assert_array_equal(out.array, img.array)
    assert check_ct(out) is None

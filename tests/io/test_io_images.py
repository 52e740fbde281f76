"""Image/label file round trips with exact geometry, atomic writers, bad inputs, resampling, CT check."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from napari_lesionlocator.core.errors import InputImageError, OutputExistsError, OutputWriteError
from napari_lesionlocator.core.geometry import Geometry, GeometryMismatchError
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.io import (
    NotCTWarning,
    check_ct,
    read_image,
    read_label_map,
    read_volume,
    read_volumes,
    resample_label_map_to,
    write_image,
    write_label_map,
)

sitk = pytest.importorskip("SimpleITK")


def _rot(a: float, b: float, c: float) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    return rz @ ry @ rx


ROTATED = Geometry((7, 9, 11), (2.5, 0.77, 0.61), (-12.5, 33.25, 101.0),
                   tuple((_rot(0.3, -0.2, 0.9) @ np.diag([1, -1, 1])).reshape(-1)))


def _ct(geom: Geometry = ROTATED, seed: int = 0, name: str = "ct") -> Image:
    rng = np.random.default_rng(seed)
    return Image(rng.integers(-1024, 2000, geom.shape).astype(np.float32), geom, name=name)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"])
def test_round_trip_keeps_geometry_and_values(tmp_path, suffix) -> None:
    img = _ct()
    path = write_image(img, tmp_path / f"case{suffix}")
    back = read_image(path)
    assert back.name == "case"
    # NIfTI stores the direction as a float32 quaternion/affine: allow float32 precision.
    tol = {"origin_tol_mm": 1e-4, "direction_tol": 1e-5, "spacing_tol": 1e-6}
    assert back.geometry.same_grid(img.geometry, **tol), back.geometry.grid_differences(img.geometry, **tol)
    np.testing.assert_array_equal(back.array, img.array)
    assert back.array.dtype == np.float32 and back.metadata["file_dtype"] == "int16"
    labels = LabelMap(np.zeros(img.shape, np.uint16), img.geometry, "lab")
    labels.array[1:3, 2:5, 3:9] = 7
    labels.array[4, 4, 4] = 300
    lpath = write_label_map(labels, tmp_path / f"lab{suffix}")
    lback = read_label_map(lpath, like=back)
    np.testing.assert_array_equal(lback.array, labels.array)
    assert lback.ids == [7, 300]
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden == []  # no temp files or folders left behind


def test_float_and_large_label_dtypes(tmp_path) -> None:
    geom = Geometry((3, 4, 5))
    img = Image(np.full(geom.shape, 0.25, np.float64), geom)
    back = read_image(write_image(img, tmp_path / "f.nrrd"))
    assert back.metadata["file_dtype"] == "float32" and np.all(back.array == 0.25)
    arr = np.zeros(geom.shape, np.uint32)
    arr[0, 0, 0] = 70000
    write_label_map(arr, tmp_path / "big.nrrd", geometry=geom)
    assert sitk.ReadImage(str(tmp_path / "big.nrrd")).GetPixelID() == sitk.sitkUInt32
    assert read_label_map(tmp_path / "big.nrrd").ids == [70000]
    with pytest.raises(ValueError, match="geometry"):
        write_label_map(arr, tmp_path / "x.nrrd")
    with pytest.raises(ValueError, match="negative"):
        write_label_map(np.full(geom.shape, -1, np.int16), tmp_path / "x.nrrd", geometry=geom)
    with pytest.raises(ValueError, match="unknown image format"):
        write_image(img, tmp_path / "x.png")


def test_writers_refuse_overwrite_and_keep_the_old_file(tmp_path) -> None:
    path = tmp_path / "case.nii.gz"
    write_image(_ct(seed=1), path)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        write_image(_ct(seed=2), path)
    with pytest.raises(OutputExistsError):
        write_label_map(LabelMap.empty(ROTATED), path)
    assert path.read_bytes() == before
    write_image(_ct(seed=2), path, overwrite=True)
    np.testing.assert_array_equal(read_image(path).array, _ct(seed=2).array)
    # detached header: data file is protected as well
    write_image(_ct(seed=1), tmp_path / "d.mhd")
    with pytest.raises(OutputExistsError):
        write_image(_ct(seed=2), tmp_path / "d.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz", "d.mhd", "d.zraw"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(OutputWriteError, match="disk full"):
        write_image(_ct(), tmp_path / "case.nii.gz")
    with pytest.raises(OutputWriteError, match="disk full"):
        write_image(_ct(), tmp_path / "case.mhd")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ bad inputs
def _write_sitk(img, path) -> str:
    sitk.WriteImage(img, str(path), useCompression=True)
    return str(path)


def test_bad_inputs_give_clear_errors(tmp_path) -> None:
    arr = np.zeros((6, 7, 8), np.int16)
    cases = {}
    (tmp_path / "notes.nii.gz").write_bytes(gzip.compress(b"not an image at all" * 10))
    cases["notes.nii.gz"] = "not an image file"
    (tmp_path / "text.txt").write_text("hello")
    cases["text.txt"] = "not an image file"
    (tmp_path / "empty.nrrd").write_bytes(b"")
    cases["empty.nrrd"] = "empty"
    full = _write_sitk(sitk.GetImageFromArray(arr + 5), tmp_path / "full.nii.gz")
    data = Path(full).read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(data[: len(data) // 2])
    cases["trunc.nii.gz"] = "truncated"
    (tmp_path / "garbled.nii.gz").write_bytes(data[:20] + b"\x00" * 50 + data[70:])
    cases["garbled.nii.gz"] = "corrupt"
    nrrd = _write_sitk(sitk.GetImageFromArray(np.arange(6 * 70 * 80, dtype=np.int16).reshape(6, 70, 80)),
                       tmp_path / "full.nrrd")
    ndata = Path(nrrd).read_bytes()
    (tmp_path / "trunc.nrrd").write_bytes(ndata[: len(ndata) // 2])
    cases["trunc.nrrd"] = "corrupt or truncated"
    _write_sitk(sitk.GetImageFromArray(arr[0]), tmp_path / "flat.nii.gz")
    cases["flat.nii.gz"] = "2D image"
    _write_sitk(sitk.GetImageFromArray(arr[:1]), tmp_path / "oneslice.nrrd")
    cases["oneslice.nrrd"] = "single slice"
    vol = sitk.GetImageFromArray(arr)
    _write_sitk(sitk.JoinSeries([vol, vol, vol]), tmp_path / "fourd.nii.gz")
    cases["fourd.nii.gz"] = r"4D \(3 volumes"
    _write_sitk(sitk.Compose([vol, vol, vol]), tmp_path / "rgb.mha")
    cases["rgb.mha"] = "3 values per voxel"
    for name, match in cases.items():
        with pytest.raises(InputImageError, match=match):
            read_image(tmp_path / name)
        with pytest.raises(InputImageError, match=match):
            read_volumes(tmp_path / name)
    with pytest.raises(InputImageError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")
    with pytest.raises(InputImageError, match="folder"):
        read_image(tmp_path)
    # a plain (not gzipped) NIfTI named .nii.gz still reads
    _write_sitk(sitk.GetImageFromArray(arr + 3), tmp_path / "plain.nii")
    (tmp_path / "plain.nii").rename(tmp_path / "plain.nii.gz")
    assert read_image(tmp_path / "plain.nii.gz").array.max() == 3
    # a 4D file holding a single volume is fine
    _write_sitk(sitk.JoinSeries([vol]), tmp_path / "single4d.nii.gz")
    assert read_image(tmp_path / "single4d.nii.gz").shape == (6, 7, 8)


def test_bad_label_maps(tmp_path) -> None:
    geom = Geometry((3, 4, 5))
    f = sitk.GetImageFromArray(np.full(geom.shape, 1.5, np.float32))
    _write_sitk(f, tmp_path / "frac.nrrd")
    with pytest.raises(InputImageError, match="whole numbers"):
        read_label_map(tmp_path / "frac.nrrd")
    _write_sitk(sitk.GetImageFromArray(np.full(geom.shape, -1, np.int16)), tmp_path / "neg.nrrd")
    with pytest.raises(InputImageError, match="negative"):
        read_label_map(tmp_path / "neg.nrrd")
    ok = sitk.GetImageFromArray(np.full(geom.shape, 2.0, np.float32))
    _write_sitk(ok, tmp_path / "float_ids.nrrd")
    assert read_label_map(tmp_path / "float_ids.nrrd").ids == [2]


def test_label_map_on_another_grid_names_both_grids(tmp_path) -> None:
    img = _ct()
    other = Geometry(ROTATED.shape, ROTATED.spacing, (0.0, 0.0, 0.0), ROTATED.direction)
    write_label_map(LabelMap.empty(other), tmp_path / "lab.nrrd")
    with pytest.raises(GeometryMismatchError) as info:
        read_label_map(tmp_path / "lab.nrrd", like=img)
    msg = str(info.value)
    assert "lab.nrrd" in msg and "ct" in msg and "origin" in msg
    assert img.geometry.describe() in msg and other.describe() in msg
    assert isinstance(info.value, InputImageError)


def test_resample_label_map_to_physical_nearest_neighbour() -> None:
    src_geom = Geometry((10, 12, 14), (2.0, 1.0, 1.0), (5.0, -3.0, 7.0))
    labels = LabelMap(np.zeros(src_geom.shape, np.uint16), src_geom, "lab")
    labels.array[2:6, 3:8, 4:10] = 5
    labels.array[7:9, 1:3, 1:3] = 400
    # Same physical grid, flipped along x and with the origin moved to the other end.
    flipped = Geometry(src_geom.shape, src_geom.spacing,
                       (5.0, -3.0, 7.0 + 13.0), (1, 0, 0, 0, 1, 0, 0, 0, -1))
    out = resample_label_map_to(labels, flipped)
    np.testing.assert_array_equal(out.array, labels.array[:, :, ::-1])
    assert out.geometry == flipped and out.array.dtype == np.uint16
    # Finer grid: every target voxel takes the id at its centre's nearest source voxel.
    fine = Geometry((20, 12, 14), (1.0, 1.0, 1.0), (4.5, -3.0, 7.0))
    out = resample_label_map_to(labels, fine)
    idx = np.argwhere(np.ones(fine.shape, bool))
    src_idx = np.floor(src_geom.world_to_index(fine.index_to_world(idx)) + 0.5).astype(int)
    inside = np.all((src_idx >= 0) & (src_idx < src_geom.shape), axis=1)
    expected = np.zeros(len(idx), np.uint16)
    expected[inside] = labels.array[tuple(src_idx[inside].T)]
    # (fine z centres fall at source indices k +- 0.25: no rounding ties, so the match is exact)
    np.testing.assert_array_equal(out.array.reshape(-1), expected)
    assert set(np.unique(out.array)) == {0, 5, 400}
    # Shifted entirely outside -> empty
    far = Geometry(src_geom.shape, src_geom.spacing, (500.0, 0, 0))
    assert resample_label_map_to(labels, far).ids == []


# ------------------------------------------------------------------ CT check
def test_check_ct_by_modality_and_by_values() -> None:
    geom = Geometry((4, 16, 16))
    ct = Image(np.linspace(-1000, 800, 4 * 16 * 16).reshape(geom.shape).astype(np.float32), geom, name="ct")
    assert check_ct(ct) is None
    mr = Image(np.abs(ct.array), geom, name="t1", modality="MR")
    with pytest.raises(InputImageError, match="t1 is MR, not CT"):
        check_ct(mr)
    with pytest.warns(NotCTWarning, match="PT"):
        assert "PT" in check_ct(Image(ct.array, geom, name="pet", modality="PT"), strict=False)
    assert check_ct(Image(ct.array, geom, modality="CT")) is None
    unsigned = Image(ct.array + 1024, geom, name="raw")
    with pytest.raises(InputImageError, match="no value below -50"):
        check_ct(unsigned)
    with pytest.raises(InputImageError, match="constant"):
        check_ct(Image(np.zeros(geom.shape, np.float32), geom))
    with pytest.raises(InputImageError, match="outside the CT"):
        check_ct(Image(ct.array * 10, geom))


def test_read_volume_picks_one(tmp_path) -> None:
    write_image(_ct(seed=1), tmp_path / "a.nii.gz")
    write_image(_ct(seed=2), tmp_path / "b.nrrd")
    (tmp_path / "notes.txt").write_text("ignored")
    images = read_volumes(tmp_path)
    assert [i.name for i in images] == ["a", "b"]
    with pytest.raises(InputImageError, match="holds 2 volumes"):
        read_volume(tmp_path)
    assert read_volume(tmp_path, series="b").name == "b"
    assert read_volume(tmp_path, series=0).name == "a"
    with pytest.raises(InputImageError, match="no volume 'c'"):
        read_volume(tmp_path, series="c")
    assert read_volume(tmp_path / "a.nii.gz").name == "a"
    write_image(_ct(seed=3), tmp_path / "a.mha")  # same stem as a.nii.gz: names are made unique
    assert [i.name for i in read_volumes(tmp_path)] == ["a", "a_2", "b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputImageError, match="neither image files"):
        read_volumes(empty)

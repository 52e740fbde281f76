"""The LesionLocator synthetic follow-up layout: write, read back, several cases, refusals."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_lesionlocator.core.errors import InputImageError, OutputExistsError
from napari_lesionlocator.core.geometry import Geometry, GeometryMismatchError
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.io import (
    list_layout_cases,
    read_study,
    read_study_layout,
    write_image,
    write_label_map,
    write_study_layout,
)
from napari_lesionlocator.io.study_layout import NAMING_COLUMNS, timepoint_folder

pytest.importorskip("SimpleITK")

GEOMS = [
    Geometry((6, 10, 12), (2.0, 0.8, 0.8), (0.0, 0.0, 0.0)),
    Geometry((7, 10, 12), (2.0, 0.8, 0.8), (-3.0, 1.0, 2.0), (1, 0, 0, 0, 0.6, -0.8, 0, 0.8, 0.6)),
    Geometry((6, 11, 12), (2.5, 0.8, 0.8), (4.0, 0.0, -1.0)),
]


def _timepoints(seed: int = 0, n: int = 3) -> list[tuple[Image, LabelMap | None]]:
    rng = np.random.default_rng(seed)
    out = []
    for k, g in enumerate(GEOMS[:n]):
        img = Image(rng.integers(-1000, 1000, g.shape).astype(np.float32), g, name=f"scan{k}",
                    acquisition_date=f"202{k}-03-0{k + 1}")
        lab = LabelMap(np.zeros(g.shape, np.uint16), g, f"scan{k}_lesions")
        lab.array[1:3, 2:4, 2:5] = 4  # lesion 4 at every timepoint
        if k != 1:
            lab.array[4, 5:7, 6:9] = 300  # lesion 300 not at timepoint 1
        out.append((img, lab if k != 2 or seed == 0 else None))
    return out


def test_folder_names() -> None:
    assert [timepoint_folder(i) for i in range(4)] == [
        "Baseline", "Synthetic_Follow_Up", "Synthetic_Follow_Up_2", "Synthetic_Follow_Up_3"]
    with pytest.raises(ValueError):
        timepoint_folder(-1)


def test_write_then_read_round_trip(tmp_path) -> None:
    tps = _timepoints()
    csv_path = write_study_layout(tmp_path, tps, case="case_001")
    for sub in ("Baseline", "Synthetic_Follow_Up", "Synthetic_Follow_Up_2"):
        assert (tmp_path / sub / "images" / "case_001.nii.gz").is_file()
        assert (tmp_path / sub / "labels" / "case_001.nii.gz").is_file()
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == NAMING_COLUMNS
    assert [r["timepoint"] for r in rows] == ["0", "1", "2"]
    assert rows[1]["image"] == "Synthetic_Follow_Up/images/case_001.nii.gz"
    assert rows[2]["acquisition_date"] == "2022-03-03"
    back = read_study_layout(tmp_path)
    assert len(back) == 3
    for (img, lab), (rimg, rlab) in zip(tps, back, strict=True):
        assert rimg.geometry.same_grid(img.geometry, origin_tol_mm=1e-4, direction_tol=1e-5)
        np.testing.assert_array_equal(rimg.array, img.array)
        np.testing.assert_array_equal(rlab.array, lab.array)
        assert rimg.acquisition_date == img.acquisition_date
    assert [i.name for i, _ in back] == ["case_001_Baseline", "case_001_Synthetic_Follow_Up",
                                         "case_001_Synthetic_Follow_Up_2"]
    study = read_study(tmp_path)
    assert study.patient_id == "case_001" and study.dates_in_order
    assert study.lesion_ids_by_timepoint() == {
        "case_001_Baseline": [4, 300], "case_001_Synthetic_Follow_Up": [4], "case_001_Synthetic_Follow_Up_2": [4, 300]}


def test_several_cases_and_missing_labels(tmp_path) -> None:
    write_study_layout(tmp_path, _timepoints(0), case="a")
    write_study_layout(tmp_path, _timepoints(1, n=3), case="b", dates=["2020-01-01", None, "2021-01-01"])
    assert list_layout_cases(tmp_path) == ["a", "b"]
    with pytest.raises(InputImageError, match="holds 2 cases; choose one of: a, b"):
        read_study_layout(tmp_path)
    b = read_study_layout(tmp_path, case="b")
    assert b[2][1] is None and not (tmp_path / "Synthetic_Follow_Up_2" / "labels" / "b.nii.gz").exists()
    assert [i.acquisition_date for i, _ in b] == ["2020-01-01", None, "2021-01-01"]
    with pytest.raises(InputImageError, match="no case 'c'"):
        read_study_layout(tmp_path, case="c")
    # Rewriting case "a" is refused without overwrite and leaves everything as it was.
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError, match="case 'a' already has"):
        write_study_layout(tmp_path, _timepoints(5), case="a")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    write_study_layout(tmp_path, _timepoints(5, n=2), case="a", overwrite=True)
    assert len(read_study_layout(tmp_path, case="a")) == 2
    assert len(read_study_layout(tmp_path, case="b")) == 3


def test_write_refusals(tmp_path) -> None:
    tps = _timepoints()
    img, lab = tps[0]
    bad = LabelMap(lab.array, GEOMS[1].crop((0, 0, 0), (6, 10, 12)))
    with pytest.raises(GeometryMismatchError, match="timepoint 0"):
        write_study_layout(tmp_path, [(img, bad)], case="x")
    with pytest.raises(ValueError, match="case name"):
        write_study_layout(tmp_path, tps, case="../evil")
    with pytest.raises(ValueError, match="at least one"):
        write_study_layout(tmp_path, [], case="x")
    with pytest.raises(ValueError, match="2 dates for 3"):
        write_study_layout(tmp_path, tps, case="x", dates=["2020-01-01", None])
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "naming.csv").write_text("id,split\n1,train\n")
    with pytest.raises(OutputExistsError, match="another format"):
        write_study_layout(tmp_path, tps, case="x")


def test_reads_published_layout_without_our_csv(tmp_path) -> None:
    """The published dataset: a naming.csv of its own, nnU-Net `_0000` image names."""
    tps = _timepoints()
    for k, (img, lab) in enumerate(tps[:2]):
        sub = tmp_path / timepoint_folder(k)
        write_image(img, sub / "images" / "lidc_12_0000.nii.gz")
        write_label_map(lab, sub / "labels" / "lidc_12.nii.gz")
    write_image(tps[0][0], tmp_path / "Baseline" / "images" / "kits_3_0000.nii.gz")
    (tmp_path / "naming.csv").write_text("original,new\nfoo,bar\n")
    assert list_layout_cases(tmp_path) == ["kits_3", "lidc_12"]
    pairs = read_study_layout(tmp_path, case="lidc_12")
    assert len(pairs) == 2 and pairs[1][1].ids == [4]
    (kits,) = read_study_layout(tmp_path, case="kits_3")
    assert kits[1] is None


def test_broken_layouts(tmp_path) -> None:
    with pytest.raises(InputImageError, match="not a folder"):
        read_study_layout(tmp_path / "nope")
    with pytest.raises(InputImageError, match="not a study layout"):
        read_study_layout(tmp_path)
    write_study_layout(tmp_path, _timepoints(), case="c")
    (tmp_path / "Synthetic_Follow_Up" / "labels" / "c.nii.gz").unlink()
    with pytest.raises(InputImageError, match="lists Synthetic_Follow_Up/labels/c.nii.gz but the file is missing"):
        read_study_layout(tmp_path)

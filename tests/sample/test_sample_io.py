"""Writing the study in the LesionLocator dataset layout and reading it back exactly."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_lesionlocator.core.errors import OutputExistsError
from napari_lesionlocator.io.study_layout import read_study_layout


def test_write_read_round_trip_is_exact(small_study, tmp_path):
    csv_path = small_study.write(tmp_path)
    assert csv_path == tmp_path / "naming.csv"
    for folder in ("Baseline", "Synthetic_Follow_Up", "Synthetic_Follow_Up_2"):
        assert (tmp_path / folder / "images" / "case0.nii.gz").is_file()
        assert (tmp_path / folder / "labels" / "case0.nii.gz").is_file()
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["acquisition_date"] for r in rows] == [img.acquisition_date for img in small_study.images]
    back = read_study_layout(tmp_path)
    assert len(back) == 3
    for (img, lab), ref_img, ref_lab in zip(back, small_study.images, small_study.labels):
        assert img.geometry.same_grid(ref_img.geometry, origin_tol_mm=1e-4, direction_tol=1e-6)
        assert np.array_equal(img.array, ref_img.array)  # whole HU values survive int16 storage
        assert lab is not None and np.array_equal(lab.array, ref_lab.array)
        assert img.acquisition_date == ref_img.acquisition_date


def test_write_refuses_to_overwrite(small_study, tmp_path):
    small_study.write(tmp_path)
    before = (tmp_path / "Baseline" / "images" / "case0.nii.gz").stat().st_mtime_ns
    with pytest.raises(OutputExistsError):
        small_study.write(tmp_path)
    assert (tmp_path / "Baseline" / "images" / "case0.nii.gz").stat().st_mtime_ns == before
    small_study.write(tmp_path, overwrite=True)

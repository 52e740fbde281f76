"""Lesion table CSV/JSON: contents, round trip, atomic refusal to overwrite."""

from __future__ import annotations

import csv
import json
import math

import pytest

from napari_lesionlocator.core.errors import OutputExistsError
from napari_lesionlocator.core.measurements import LesionMeasurement
from napari_lesionlocator.core.recist import recist_from_measurements
from napari_lesionlocator.io.tables import LESION_COLUMNS, read_lesion_table_json, table_paths, write_lesion_table


def _rows():
    return [
        LesionMeasurement(1, 0, True, 100, 1.5, 22.0, 11.0, 4, 35.0, 8.0, (1.0, 2.0, 3.0),
                          name="liver", date="2024-01-01"),
        LesionMeasurement(1, 1, True, 50, 0.75, 14.0, 7.0, 5, 30.0, 6.0, (1.5, 2.0, 3.0),
                          name="liver", date="2024-04-01"),
        LesionMeasurement(2, 1, False, name="lung"),
        LesionMeasurement(2, 0, True, 30, 0.3, 12.0, 6.0, 2, -500.0, 90.0, (0.0, 0.0, 0.0), name="lung"),
    ]


def test_write_csv_and_json_with_recist(tmp_path):
    rows = _rows()
    recist = recist_from_measurements(rows)
    paths = write_lesion_table(tmp_path / "out" / "study", rows, recist)
    assert paths == table_paths(tmp_path / "out" / "study")
    with open(paths["lesions_csv"], newline="") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == LESION_COLUMNS
    # Sorted by timepoint then lesion id.
    assert [(r["timepoint"], r["lesion_id"]) for r in table] == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    assert table[0]["volume_ml"] == "1.5" and table[0]["centroid_x_mm"] == "3" and table[0]["name"] == "liver"
    assert table[3]["present"] == "false" and table[3]["mean_hu"] == "" and table[3]["centroid_z_mm"] == ""
    with open(paths["recist_csv"], newline="") as fh:
        rec = list(csv.DictReader(fh))
    assert [r["response"] for r in rec] == ["baseline", "PR"]
    assert rec[1]["sum_mm"] == "14" and rec[0]["sum_mm"] == "34" and rec[1]["targets"] == "1 2"
    doc = json.loads(paths["json"].read_text())
    assert doc["recist"]["timepoints"][1]["response"] == "PR"
    assert doc["lesions"][3]["mean_hu"] is None  # NaN becomes null, the file stays valid JSON
    back, rec_back = read_lesion_table_json(paths["json"])
    assert [(r.lesion_id, r.timepoint, r.present) for r in back] == [(1, 0, True), (2, 0, True), (1, 1, True),
                                                                     (2, 1, False)]
    assert back[0].centroid_mm == (1.0, 2.0, 3.0) and math.isnan(back[3].mean_hu)
    assert rec_back["targets"] == [1, 2]


def test_refuses_to_overwrite_and_leaves_files_untouched(tmp_path):
    rows = _rows()
    paths = write_lesion_table(tmp_path / "s", rows, None)
    assert set(paths) == {"lesions_csv", "json"}
    before = {k: p.read_bytes() for k, p in paths.items()}
    recist = recist_from_measurements(rows)
    with pytest.raises(OutputExistsError, match="s_lesions.csv"):
        write_lesion_table(tmp_path / "s", rows[:1], recist)
    assert {k: p.read_bytes() for k, p in paths.items()} == before
    assert not (tmp_path / "s_recist.csv").exists()  # nothing new written either
    write_lesion_table(tmp_path / "s", rows[:1], recist, overwrite=True)
    assert (tmp_path / "s_recist.csv").exists()
    assert len(json.loads(paths["json"].read_text())["lesions"]) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

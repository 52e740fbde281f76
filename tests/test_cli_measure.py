"""`lesionlocator measure`: lesion table + RECIST from files and from a study folder, against exact truth."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from napari_lesionlocator.cli import main
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.io.images import write_image, write_label_map

GEOM = Geometry((6, 40, 60), spacing=(2.0, 0.8, 0.5), origin=(10.0, -20.0, 5.0))
# Lesions are one-voxel-thick lines along x (length = n voxels x 0.5 mm, exactly), one per slice.
LENGTHS = [  # (lesion 1 voxels, lesion 2 voxels) per timepoint -> mm: (20, 15), (13, 5), (20, 10)
    (40, 30),
    (26, 10),
    (40, 20),
]


def _timepoint(k: int) -> tuple[Image, LabelMap]:
    arr = np.full(GEOM.shape, 40.0, np.float32)
    arr[:, :2] = -1000.0  # some air: it is CT in HU
    lab = np.zeros(GEOM.shape, np.uint16)
    n1, n2 = LENGTHS[k]
    lab[2, 10, 5:5 + n1] = 1
    lab[4, 30, 8:8 + n2] = 2
    arr[lab == 1] = 100.0
    arr[lab == 2] = 60.0
    return Image(arr, GEOM, name=f"pt_tp{k}"), LabelMap(lab, GEOM)


@pytest.fixture
def files(tmp_path):
    imgs, labs = [], []
    for k in range(3):
        img, lab = _timepoint(k)
        imgs.append(write_image(img, tmp_path / "in" / f"pt_tp{k}.nii"))
        labs.append(write_label_map(lab, tmp_path / "in" / f"pt_tp{k}_lab.nii"))
    return imgs, labs


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _check_tables(prefix):
    with open(f"{prefix}_lesions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    by = {(int(r["timepoint"]), int(r["lesion_id"])): r for r in rows}
    for k, (n1, n2) in enumerate(LENGTHS):
        for lid, n in ((1, n1), (2, n2)):
            r = by[(k, lid)]
            assert float(r["long_axis_mm"]) == pytest.approx(n * 0.5)
            assert float(r["short_axis_mm"]) == pytest.approx(0.8)
            assert float(r["volume_ml"]) == pytest.approx(n * 2.0 * 0.8 * 0.5 / 1000, rel=1e-5)
            assert float(r["mean_hu"]) == pytest.approx(100.0 if lid == 1 else 60.0)
            assert float(r["std_hu"]) == pytest.approx(0.0, abs=1e-6)
    r = by[(0, 1)]
    assert r["name"] == "Lesion 1"
    centroid = GEOM.index_to_world([2, 10, 5 + (40 - 1) / 2])
    assert [float(r[f"centroid_{a}_mm"]) for a in "zyx"] == pytest.approx(list(centroid), abs=1e-4)
    with open(f"{prefix}_recist.csv", newline="") as fh:
        rec = list(csv.DictReader(fh))
    assert [r["response"] for r in rec] == ["baseline", "PR", "PD"]
    assert [float(r["sum_mm"]) for r in rec] == pytest.approx([35.0, 18.0, 30.0])
    assert float(rec[1]["change_vs_baseline_pct"]) == pytest.approx(100 * (18 - 35) / 35, abs=1e-3)
    assert float(rec[2]["change_vs_nadir_pct"]) == pytest.approx(100 * 12 / 18, abs=1e-3)
    doc = json.loads(Path(f"{prefix}.json").read_text())
    assert doc["recist"]["targets"] == [1, 2] and len(doc["lesions"]) == 6


def test_measure_files(files, tmp_path, capsys):
    imgs, labs = files
    prefix = tmp_path / "out" / "pt"
    code, out, err = _run(capsys, "measure", "-i", *imgs, "-l", *labs, "-o", prefix, "--targets", "1,2")
    assert code == 0, err
    _check_tables(prefix)
    assert "-> PD" in out
    # Exists -> exit 3, untouched; --overwrite replaces.
    before = (tmp_path / "out" / "pt.json").read_bytes()
    code, _, err = _run(capsys, "measure", "-i", *imgs, "-l", *labs, "-o", prefix, "--nodes", "2")
    assert code == 3 and (tmp_path / "out" / "pt.json").read_bytes() == before
    code, _, err = _run(capsys, "measure", "-i", *imgs, "-l", *labs, "-o", prefix, "--overwrite", "--targets", "1",
                        "2", "--nodes", "2", "--dates", "2024-01-01", "2024-03-01", "2024-06-01")
    assert code == 0, err
    doc = json.loads((tmp_path / "out" / "pt.json").read_text())
    assert doc["recist"]["nodes"] == [2]
    # Node 2 counts with its short axis (0.8 mm): sums 20.8, 13.8, 20.8.
    assert [t["sum_mm"] for t in doc["recist"]["timepoints"]] == pytest.approx([20.8, 13.8, 20.8])
    assert [t["date"] for t in doc["recist"]["timepoints"]] == ["2024-01-01", "2024-03-01", "2024-06-01"]


def test_measure_study_folder(tmp_path, capsys):
    from napari_lesionlocator.io.study_layout import write_study_layout

    tps = [_timepoint(k) for k in range(3)]
    write_study_layout(tmp_path / "study", tps, case="pt", dates=["2024-01-01", "2024-02-01", "2024-03-01"])
    prefix = tmp_path / "res"
    code, _, err = _run(capsys, "measure", "--study", tmp_path / "study", "-o", prefix, "-q")
    assert code == 0, err
    _check_tables(prefix)  # both lesions are measurable (>= 10 mm): chosen automatically


def test_measure_bad_inputs_exit_2(files, tmp_path, capsys):
    imgs, labs = files
    other = write_label_map(LabelMap(np.zeros((6, 40, 60), np.uint8), Geometry((6, 40, 60))), tmp_path / "o.nii")
    cases = [
        (["-i", *imgs, "-l", *labs[:2]], "one label map per image"),
        (["-i", imgs[0], "-l", other], "not on the same voxel grid"),
        (["-i", *imgs, "-l", *labs, "--targets", "7"], "in no label map"),
        (["-i", *imgs, "-l", *labs, "--targets", "x"], "not a lesion id"),
        (["-i", *imgs, "-l", *labs, "--dates", "2024-01-01"], "--dates"),
        (["-i", tmp_path / "missing.nii", "-l", labs[0]], "no such file"),
        (["-l", labs[0]], "-i IMAGE"),
        (["-i", imgs[0], imgs[0], "-l", labs[0], labs[0]], "pt_tp0"),  # two timepoints with one name
    ]
    for extra, message in cases:
        code, _, err = _run(capsys, "measure", *extra, "-o", tmp_path / "x")
        assert code == 2, (extra, err)
        assert message in err, err
    assert not list(tmp_path.glob("x*"))

"""Batch building blocks without a cluster: manifests, the per-study pipeline, done markers, tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_lesionlocator.batch import EngineConfig, ManifestError, check_study_output, load_manifest, study_dir
from napari_lesionlocator.batch.cluster import run_study_task
from napari_lesionlocator.batch.cohort import write_cohort
from napari_lesionlocator.batch.manifest import input_fingerprint, write_manifest_csv
from napari_lesionlocator.batch.pipeline import DONE_MARKER, read_study_record
from napari_lesionlocator.batch.runner import plan_batch
from napari_lesionlocator.batch.tables import read_table_csv, write_tables
from napari_lesionlocator.io.images import read_image, read_label_map

CLASSICAL = EngineConfig("classical")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, 3, timepoints=2, half_extent_mm=(25.0, 35.0, 35.0))
    return root


def _run(spec, out, config=CLASSICAL, **kw):
    return run_study_task(spec.to_dict(), str(out), input_fingerprint(spec, config.result_settings()), config, **kw)


# ----------------------------------------------------------------------------- manifests
def test_layout_folder_manifest_lists_every_case_with_dates_truth_and_prompts(cohort):
    specs = load_manifest(cohort)
    assert [s.study_id for s in specs] == sorted(s.study_id for s in specs) and len(specs) == 3
    for s in specs:
        assert len(s.timepoints) == 2
        assert [t.date for t in s.timepoints] == ["2024-01-15", "2024-04-16"]
        assert all(Path(t.image).is_file() and Path(t.ground_truth).is_file() for t in s.timepoints)
        assert s.prompts == s.timepoints[0].ground_truth and s.prompt_type == "box"
    assert load_manifest(cohort, prompt_type="prev_mask")[0].prompt_type == "prev_mask"


def test_csv_manifest_round_trip_orders_by_timepoint_and_resolves_relative_paths(cohort, tmp_path):
    specs = load_manifest(cohort)
    path = write_manifest_csv(specs, tmp_path / "m.csv")
    assert load_manifest(path) == [type(s)(**{**s.__dict__, "source": load_manifest(path)[i].source})
                                   for i, s in enumerate(specs)]
    # relative paths, rows out of order, prompt on the follow-up row: all allowed
    (tmp_path / "rel").mkdir()
    rel = tmp_path / "rel" / "m.csv"
    s = specs[0]
    rel.write_text("patient,timepoint,date,image,prompts,prompt_type\n"
                   f"P1,1,2024-04-16,{os.path.relpath(s.timepoints[1].image, rel.parent)},,\n"
                   f"P1,0,2024-01-15,{os.path.relpath(s.timepoints[0].image, rel.parent)},"
                   f"{os.path.relpath(s.prompts, rel.parent)},point\n")
    (got,) = load_manifest(rel)
    assert got.study_id == "P1" and got.prompt_type == "point"
    assert [t.image for t in got.timepoints] == [s.timepoints[0].image, s.timepoints[1].image]
    assert got.timepoints[0].ground_truth is None


def test_json_manifest_with_baseline_mask_means_prev_mask(cohort, tmp_path):
    s = load_manifest(cohort)[0]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"studies": [{"patient": "A b/c", "baseline_mask": s.prompts,
                                             "timepoints": [t.image for t in s.timepoints]}]}))
    (got,) = load_manifest(path)
    assert got.prompt_type == "prev_mask" and got.study_id == "A_b_c" and got.patient == "A b/c"


@pytest.mark.parametrize("text, match", [
    ("patient,date\nP1,2024-01-01\n", "missing column"),
    ("patient,image,prompt_type\nP1,a.nii.gz,lasso\n", "prompt_type"),
    ("patient,image\nP1,a.nii.gz\n", "no prompts"),
    ("patient,image,timepoint,prompts\nP1,a.nii.gz,0,p.json\nP1,b.nii.gz,0,\n", "repeat"),
    ("patient,study,image,prompts\nP1,S,a.nii.gz,p.json\nP2,S,b.nii.gz,\n", "mixes patients"),
    ("patient,image,date,prompts\nP1,a.nii.gz,15/01/2024,p.json\n", "m.csv line.*YYYY-MM-DD"),
])
def test_bad_manifests_are_refused_before_anything_runs(tmp_path, text, match):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ManifestError, match=match):
        load_manifest(path)


def test_duplicate_study_ids_are_refused(tmp_path):
    path = tmp_path / "m.json"
    study = {"patient": "P", "prompts": "p.json", "timepoints": ["a.nii.gz"]}
    path.write_text(json.dumps([study, study]))
    with pytest.raises(ManifestError, match="appears twice"):
        load_manifest(path)


# ----------------------------------------------------------------------------- one study
def test_one_study_outputs_are_exact_checksummed_and_measured(cohort, tmp_path):
    spec = load_manifest(cohort)[1]
    result = _run(spec, tmp_path)
    assert result["status"] == "done", result["reason"]
    folder = study_dir(tmp_path, spec.study_id)
    assert check_study_output(folder, input_fingerprint(spec, CLASSICAL.result_settings())) == ("done", "")
    done = json.loads((folder / DONE_MARKER).read_text())
    assert set(done["files"]) == {p.name for p in folder.iterdir()} - {DONE_MARKER}
    rows = read_study_record(folder)["rows"]
    assert {(r["timepoint"], r["lesion_id"]) for r in rows} == {(k, lid) for k in (0, 1)
                                                               for lid in {r["lesion_id"] for r in rows}}
    for k, tp in enumerate(spec.timepoints):
        image = read_image(tp.image)
        inst = read_label_map(folder / f"{spec.study_id}_tp{k}_lesions.nii.gz")
        assert inst.geometry.same_grid(image.geometry)  # the source grid exactly
        assert np.allclose(inst.geometry.origin, image.geometry.origin, atol=1e-4)
        truth = read_label_map(tp.ground_truth)
        for r in (r for r in rows if r["timepoint"] == k):
            own = read_label_map(folder / f"{spec.study_id}_tp{k}_lesion_{r['lesion_id']}.nii.gz").array > 0
            assert r["voxel_count"] == int(own.sum())
            assert r["volume_ml"] == pytest.approx(own.sum() * np.prod(image.geometry.spacing) / 1000.0)
            gt = truth.array == r["lesion_id"]
            expected = 2 * (own & gt).sum() / (own.sum() + gt.sum())
            assert r["dice"] == pytest.approx(expected)
            assert r["status"] in ("ok", "check", "empty", "lost") and r["source"] == ("segmented" if k == 0
                                                                                        else "tracked")
    main = next(r for r in rows if r["lesion_id"] == int(spec.study_id.split("l")[-1]))
    assert main["dice"] > 0.5 and main["long_axis_mm"] > 5.0
    # the published folder and its files get the umask's mode, not mkdtemp's/mkstemp's 0700/0600
    mask = os.umask(0)
    os.umask(mask)
    assert (folder.stat().st_mode & 0o777) == 0o777 & ~mask
    assert ((folder / "study.json").stat().st_mode & 0o777) == 0o666 & ~mask


def test_a_study_without_its_done_marker_or_with_a_damaged_file_is_not_done(cohort, tmp_path):
    spec = load_manifest(cohort)[0]
    fp = input_fingerprint(spec, CLASSICAL.result_settings())
    assert _run(spec, tmp_path)["status"] == "done"
    folder = study_dir(tmp_path, spec.study_id)
    victim = folder / f"{spec.study_id}_tp1_lesions.nii.gz"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a half-written file
    state, why = check_study_output(folder, fp)
    assert state == "incomplete" and victim.name in why
    victim.write_bytes(data)
    assert check_study_output(folder, fp)[0] == "done"
    assert check_study_output(folder, "another fingerprint")[0] == "stale"
    (folder / DONE_MARKER).unlink()
    assert check_study_output(folder, fp) == ("incomplete", f"no {DONE_MARKER} (interrupted)")
    plan = plan_batch([spec], tmp_path, CLASSICAL)
    assert [s.study_id for s, _fp, _note in plan.run] == [spec.study_id] and "interrupted" in plan.run[0][2]
    # redoing it replaces the unfinished folder
    assert _run(spec, tmp_path)["status"] == "done"
    assert check_study_output(folder, fp)[0] == "done"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_changed_inputs_or_settings_are_never_overwritten_silently(cohort, tmp_path):
    spec = load_manifest(cohort)[0]
    assert _run(spec, tmp_path)["status"] == "done"
    other = EngineConfig("classical", tta=True)  # a result-changing setting
    plan = plan_batch([spec], tmp_path, other)
    assert not plan.run and "overwrite" in plan.refused[0].reason
    before = (study_dir(tmp_path, spec.study_id) / DONE_MARKER).read_text()
    failed = _run(spec, tmp_path, other)
    assert failed["status"] == "failed" and failed["reason"].startswith("outputs exist")
    assert (study_dir(tmp_path, spec.study_id) / DONE_MARKER).read_text() == before
    assert _run(spec, tmp_path, other, overwrite=True)["status"] == "done"
    assert check_study_output(study_dir(tmp_path, spec.study_id),
                              input_fingerprint(spec, other.result_settings()))[0] == "done"


def test_prev_mask_study_tracks_the_given_masks(cohort, tmp_path):
    spec = load_manifest(cohort, prompt_type="prev_mask")[2]
    result = _run(spec, tmp_path)
    assert result["status"] == "done", result["reason"]
    base = [r for r in result["rows"] if r["timepoint"] == 0]
    assert base and all(r["source"] == "given" and r["dice"] == pytest.approx(1.0) for r in base)


@pytest.mark.parametrize("breakage, reason", [
    ("corrupt", "bad input"), ("missing", "bad input"), ("outside", "bad prompt"), ("kind", "bad prompt"),
])
def test_failing_studies_report_why_and_publish_nothing(cohort, tmp_path, breakage, reason):
    spec = load_manifest(cohort)[0]
    d = tmp_path / "in"
    d.mkdir()
    image, prompts, kind = spec.timepoints[1].image, spec.prompts, "box"
    if breakage == "corrupt":
        image = str(d / "fu.nii.gz")
        Path(image).write_bytes(Path(spec.timepoints[1].image).read_bytes()[:300])
    elif breakage == "missing":
        image = str(d / "nope.nii.gz")
    elif breakage == "outside":
        prompts, kind = str(d / "p.json"), "point"
        Path(prompts).write_text(json.dumps({"1": {"point": [500, 5, 5]}}))
    else:
        prompts = str(d / "p.json")
        Path(prompts).write_text(json.dumps({"1": {"point": [5, 5, 5]}}))
    m = d / "m.json"
    m.write_text(json.dumps([{"patient": "X", "prompts": prompts, "prompt_type": kind,
                              "timepoints": [spec.timepoints[0].image, image]}]))
    (bad,) = load_manifest(m)
    result = _run(bad, tmp_path / "out")
    assert result["status"] == "failed" and result["reason"].startswith(reason), result["reason"]
    assert not study_dir(tmp_path / "out", "X").exists()
    assert not list((tmp_path / "out" / "studies").iterdir())  # no staging folder left


def test_an_engine_that_cannot_be_built_fails_the_study_with_the_reason(cohort, tmp_path):
    spec = load_manifest(cohort)[0]
    result = _run(spec, tmp_path, EngineConfig("no-such-engine"))
    assert result["status"] == "failed" and result["reason"].startswith("engine error") and "no-such-engine" in \
        result["reason"]


def test_tables_round_trip_as_csv_and_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"study_id": "a", "timepoint": 0, "lesion_id": 3, "present": True, "volume_ml": 1.5, "dice": float("nan"),
             "status": "ok"}]
    paths = write_tables(tmp_path, rows, [{"study_id": "a", "status": "failed", "reason": "bad input: x, y"}])
    back = read_table_csv(paths["lesions_csv"])
    assert back[0]["lesion_id"] == 3 and back[0]["present"] is True and back[0]["dice"] is None
    assert read_table_csv(paths["studies_csv"])[0]["reason"] == "bad input: x, y"
    table = pq.read_table(paths["lesions_parquet"])
    assert table.column("volume_ml").to_pylist() == [1.5] and str(table.schema.field("lesion_id").type) == "int64"


def test_batch_imports_without_qt_napari_or_torch():
    code = ("import sys, napari_lesionlocator.batch, napari_lesionlocator.cli.batch; "
            "bad = [m for m in ('napari', 'qtpy', 'PySide6', 'torch') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- the command
def test_batch_command_exit_codes_bad_manifest_missing_checkpoint_and_failed_studies(cohort, tmp_path, capsys,
                                                                                  no_user_checkpoint):
    from napari_lesionlocator.cli import main

    assert main(["batch", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "o")]) == 2
    assert "manifest not found" in capsys.readouterr().err
    assert main(["batch", str(cohort), "-o", str(tmp_path / "o"), "--engine", "lesionlocator", "-m",
                 str(tmp_path / "no-ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    spec = load_manifest(cohort)[0]
    m = tmp_path / "m.json"
    m.write_text(json.dumps([{"patient": "gone", "prompts": spec.prompts,
                              "timepoints": [spec.timepoints[0].image, str(tmp_path / "missing.nii.gz")]}]))
    code = main(["batch", str(m), "-o", str(tmp_path / "o"), "--engine", "classical", "--workers", "1", "-q",
                 "--dashboard-address", "none"])
    assert code == 4
    err = capsys.readouterr().err
    assert "failed: gone: bad input" in err and "missing.nii.gz" in err
    (row,) = read_table_csv(tmp_path / "o" / "studies.csv")
    assert row["status"] == "failed" and "missing.nii.gz" in row["reason"]

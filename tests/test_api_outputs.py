"""api: a case's outputs (each lesion's own mask, display map, summary; staged, replaced as a whole) and the
engine settings every front end resolves the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_lesionlocator import api
from napari_lesionlocator.core.errors import CheckpointError, OutputExistsError
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.results import LesionMask, LesionResult
from napari_lesionlocator.io.images import read_label_map

GEO = Geometry((10, 12, 14), spacing=(2.0, 0.5, 0.5), origin=(1.0, -2.0, 3.0))


def _cube(lo, hi) -> LesionMask:
    full = np.zeros(GEO.shape, bool)
    full[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return LesionMask.from_full(GEO, full)


def _lesions():
    return {
        4: LesionResult(4, _cube((1, 1, 1), (5, 6, 6)), "ok"),
        9: LesionResult(9, _cube((3, 4, 4), (7, 9, 9)), "check", ["weak edge"]),
        11: LesionResult(11, LesionMask.empty(GEO), "empty", ["nothing found"]),
    }


def test_case_files_hold_each_lesions_own_mask_and_the_summary(tmp_path):
    lesions = _lesions()
    files = api.write_case_outputs(tmp_path, "c", lesions, GEO, new_candidates=[
        {"centroid_mm": np.array([1.0, 2.0, 3.0]), "box": [1, 2, 3, 4, 5, 6], "score": np.float32(0.5)}])
    assert [p.name for p in files] == ["c_lesion_4.nii.gz", "c_lesion_9.nii.gz", "c_lesion_11.nii.gz",
                                       "c_lesions.nii.gz", "c_summary.json"]
    for lid, r in lesions.items():
        got = read_label_map(tmp_path / f"c_lesion_{lid}.nii.gz")
        assert got.geometry == GEO and np.array_equal(got.array == 1, r.mask.to_full())
    shared = lesions[4].mask.overlap_voxels(lesions[9].mask)
    assert shared == 2 * 2 * 2
    display = read_label_map(tmp_path / "c_lesions.nii.gz").array
    assert np.all(display[lesions[4].mask.to_full() & lesions[9].mask.to_full()] == 9)
    doc = json.loads((tmp_path / "c_summary.json").read_text())
    assert doc["overlaps"] == [{"ids": [4, 9], "voxels": 8}]
    assert [(e["id"], e["status"], e["voxels"], e["messages"]) for e in doc["lesions"]] == [
        (4, "ok", 100, []), (9, "check", 100, ["weak edge"]), (11, "empty", 0, ["nothing found"])]
    assert doc["lesions"][0]["volume_ml"] == pytest.approx(100 * 0.5 / 1000)
    assert doc["new_candidates"] == [{"centroid_mm": [1.0, 2.0, 3.0], "box": [1, 2, 3, 4, 5, 6], "score": 0.5}]
    assert api.case_is_complete(tmp_path, "c", [4, 9, 11], GEO)
    assert not api.case_is_complete(tmp_path, "c", [4, 9], GEO)
    back = api.read_case_lesions(tmp_path, "c", GEO)
    assert sorted(back) == [4, 9, 11]
    for lid, r in lesions.items():
        assert np.array_equal(back[lid].mask.to_full(), r.mask.to_full())
        assert back[lid].status == r.status and back[lid].messages == r.messages


def test_replacing_a_case_removes_its_old_lesions_only_at_the_end(tmp_path):
    api.write_case_outputs(tmp_path, "c", _lesions(), GEO)
    api.write_case_outputs(tmp_path, "c_b", {1: LesionResult(1, _cube((0, 0, 0), (2, 2, 2)))}, GEO)  # another case
    with pytest.raises(OutputExistsError):
        api.CaseWriter(tmp_path, "c", GEO, [4])
    w = api.CaseWriter(tmp_path, "c", GEO, [4], replace=True)
    w.add(LesionResult(4, _cube((0, 0, 0), (3, 3, 3))))
    assert (tmp_path / "c_lesion_9.nii.gz").exists() and (tmp_path / "c_summary.json").exists()  # old case intact
    assert read_label_map(tmp_path / "c_lesion_4.nii.gz").array.sum() == 100  # new file not in place yet
    w.finish()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["c_b_lesion_1.nii.gz", "c_b_lesions.nii.gz", "c_b_summary.json",
                     "c_lesion_4.nii.gz", "c_lesions.nii.gz", "c_summary.json"]
    assert read_label_map(tmp_path / "c_lesion_4.nii.gz").array.sum() == 27


def test_a_resumed_writer_keeps_finished_lesions_of_the_same_job_only(tmp_path):
    w = api.CaseWriter(tmp_path, "c", GEO, [4, 9], run_key="job-a")
    w.add(_lesions()[4])
    assert (tmp_path / "c.partial").is_dir() and not (tmp_path / "c_lesion_4.nii.gz").exists()
    with (tmp_path / "c.partial" / "progress.jsonl").open("a") as fh:
        fh.write('{"id": 9, "sta')  # a line cut by a crash
    again = api.CaseWriter(tmp_path, "c", GEO, [4, 9], replace=True, resume=True, run_key="job-a")
    assert again.resumed == [4] and again.pending == [9]
    assert np.array_equal(again.done[4].mask.to_full(), _lesions()[4].mask.to_full())
    other = api.CaseWriter(tmp_path, "c", GEO, [4, 9], replace=True, resume=True, run_key="job-b")
    assert other.resumed == [] and other.pending == [4, 9] and not (tmp_path / "c.partial").exists()


def test_a_writer_that_never_finished_a_lesion_leaves_nothing(tmp_path):
    api.CaseWriter(tmp_path, "c", GEO, [1, 2])
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# ---------------------------------------------------------------- engine settings, one place
def test_engine_settings_defaults(no_user_checkpoint, tmp_path, monkeypatch):
    r = api.engine_settings()
    assert r.name == "classical" and r.settings.checkpoint is None and r.notes == []
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    r = api.engine_settings(checkpoint=ckpt, allow_unsafe=True, folds=(0, 2))
    assert r.name == "lesionlocator" and r.settings.tta is True  # the official tool mirrors by default
    assert r.settings.device in ("cpu", "cuda", "mps") and r.settings.folds == [0, 2]
    assert r.settings.extra["allow_unsafe"] is True
    assert "TTA on" in r.describe()
    assert api.engine_settings("lesionlocator", checkpoint=ckpt, tta=False, device="cpu").settings.tta is False
    assert any("slow" in n for n in api.engine_settings("lesionlocator", checkpoint=ckpt, device="cpu").notes)
    # consent to an unsafe load is tied to a chosen checkpoint; classical ignores checkpoints
    assert api.engine_settings("classical", checkpoint=ckpt, allow_unsafe=True).settings.extra == {}
    monkeypatch.setenv("LESIONLOCATOR_CHECKPOINT", str(ckpt))
    assert api.engine_settings().name == "lesionlocator"
    with pytest.raises(CheckpointError, match="does not exist"):
        api.engine_settings(checkpoint=tmp_path / "nope")


def test_lesionlocator_without_checkpoint_is_a_clear_error(no_user_checkpoint):
    with pytest.raises(CheckpointError, match="download-weights"):
        api.engine_settings("lesionlocator")


def test_auto_device_without_gpu_is_cpu(monkeypatch):
    from napari_lesionlocator.api import settings

    assert settings.resolve_device_choice("cuda") == "cuda"  # an explicit choice is kept (the engine checks it)
    pytest.importorskip("torch")
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert settings.resolve_device_choice("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert settings.resolve_device_choice(None) == "cuda"


def test_measure_timepoints_sites_apply_the_two_per_organ_and_node_rules():
    import numpy as np

    from napari_lesionlocator import api
    from napari_lesionlocator.core.geometry import Geometry
    from napari_lesionlocator.core.image import Image, LabelMap

    geo = Geometry((40, 80, 80), (1.0, 1.0, 1.0))
    zz, yy, xx = np.indices(geo.shape)
    arr = np.zeros(geo.shape, np.uint16)
    for lid, (cy, cx, r) in {1: (20, 20, 9), 2: (20, 60, 8), 3: (60, 20, 7), 4: (60, 60, 6)}.items():
        arr[(zz - 20) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = lid
    image = Image(np.zeros(geo.shape, np.int16), geo, "ct")
    labels = LabelMap(arr, geo)
    plain = api.measure_timepoints([(image, labels)])
    assert plain.targets == [1, 2, 3, 4]
    # three lung lesions: the two largest; node 4 is 12 mm short axis (< 15 mm): not a target
    sited = api.measure_timepoints([(image, labels)], sites={1: "lung", 2: "lung", 3: "lung", 4: "lymph node"})
    assert sited.targets == [1, 2]

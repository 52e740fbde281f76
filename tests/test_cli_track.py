"""`lesionlocator track` end to end: classical engine on the synthetic study, plus a fast stand-in engine
(resampling in world space) for file handling, resume and exit codes."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from napari_lesionlocator.cli import main
from napari_lesionlocator.core.image import LabelMap
from napari_lesionlocator.core.results import LesionMask, LesionResult, compose_label_map
from napari_lesionlocator.engines import base as engine_base
from napari_lesionlocator.io.images import read_label_map, write_image, write_label_map
from napari_lesionlocator.io.resample import resample_label_map_to

sitk = pytest.importorskip("SimpleITK")

pytestmark = pytest.mark.usefixtures("no_user_checkpoint")




@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Synthetic study as uncompressed NIfTI: tp0..tp2 images, ground-truth instance maps, single-lesion masks."""
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    s = make_synthetic_study(seed=0, size="small")
    root = tmp_path_factory.mktemp("trackstudy")
    p = {}
    for k, (img, lab) in enumerate(zip(s.images, s.labels)):
        p[f"img{k}"] = write_image(img, root / f"case0_tp{k}.nii")
        p[f"gt{k}"] = write_label_map(lab, root / "gt" / f"case0_tp{k}.nii")
    for lid in (1, 5):
        p[f"mask{lid}"] = write_label_map((s.labels[0].array == lid).astype(np.uint8), root / "m" / f"m{lid}.nii",
                                          geometry=s.labels[0].geometry)
    p["points"] = root / "points.json"
    centre = np.round(np.argwhere(s.labels[0].array == 1).mean(axis=0)).astype(int).tolist()
    p["points"].write_text(json.dumps({"1": {"point": centre}}))
    return types.SimpleNamespace(paths=p, study=s)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _same_geometry(path, ref):
    a, b = sitk.ReadImage(str(path)), sitk.ReadImage(str(ref))
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


# ------------------------------------------------------------ classical engine (real tracking)
@pytest.mark.slow
def test_track_prev_mask_classical(study, tmp_path, capsys):
    p = study.paths
    code, _, err = _run(capsys, "track", "-bl", p["img0"], "-fu", p["img1"], "-p", p["mask1"], "-t", "prev_mask",
                        "-o", tmp_path, "--threads", "1")
    assert code == 0, err
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "case0_tp0_track_summary.json", "case0_tp1_lesion_1.nii.gz", "case0_tp1_lesions.nii.gz",
        "case0_tp1_summary.json"]
    assert _same_geometry(tmp_path / "case0_tp1_lesions.nii.gz", p["img1"])
    assert _same_geometry(tmp_path / "case0_tp1_lesion_1.nii.gz", p["img1"])
    got = read_label_map(tmp_path / "case0_tp1_lesions.nii.gz")
    assert got.ids == [1]
    # Engine quality is tested with the engine; here: the right lesion, found and written in place.
    assert _dice(got.array == 1, study.study.labels[1].array == 1) > 0.5


@pytest.mark.slow
def test_track_from_point_prompt_classical(study, tmp_path, capsys):
    p = study.paths
    code, _, err = _run(capsys, "track", "-bl", p["img0"], "-fu", p["img1"], "-p", p["points"], "-t", "point",
                        "-o", tmp_path, "-q", "--threads", "1")
    assert code == 0, err
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "case0_tp0_lesion_1.nii.gz", "case0_tp0_lesions.nii.gz", "case0_tp0_summary.json",
        "case0_tp0_track_summary.json",
        "case0_tp1_lesion_1.nii.gz", "case0_tp1_lesions.nii.gz", "case0_tp1_summary.json",
    ]
    assert _same_geometry(tmp_path / "case0_tp0_lesions.nii.gz", p["img0"])
    base = read_label_map(tmp_path / "case0_tp0_lesions.nii.gz").array == 1
    fu = read_label_map(tmp_path / "case0_tp1_lesions.nii.gz").array == 1
    assert _dice(base, study.study.labels[0].array == 1) > 0.5
    assert _dice(fu, study.study.labels[1].array == 1) > 0.5


# ------------------------------------------------------------ stand-in engine (fast): files, resume, errors
class _WorldCopyEngine:
    """Tracks by copying each lesion to the follow-up grid in world space (no registration)."""

    name = "worldcopy"
    calls: list = []
    prompts: list = []

    def __init__(self, settings):
        pass

    def prepare(self, image):
        pass

    def segment(self, image, prompts, *, on_progress=None, cancel=None):
        lesions = {}
        for pr in prompts:
            z, y, x = pr.zyx
            crop = np.ones((5, 5, 5), bool)
            lesions[pr.lesion_id] = LesionResult(pr.lesion_id, LesionMask(image.geometry, (z - 2, y - 2, x - 2), crop))
        return engine_base.SegmentationResult(compose_label_map(lesions, image.geometry), lesions=lesions)

    def track(self, baseline, baseline_labels, followup, *, on_progress=None, cancel=None):
        own = engine_base.as_lesion_masks(baseline_labels)  # each lesion's own whole mask, moved on its own
        type(self).calls.append((baseline.name, followup.name, sorted(own)))
        type(self).prompts.append({k: m.to_full() for k, m in own.items()})
        lesions = {}
        for lid, m in own.items():
            moved = resample_label_map_to(LabelMap(m.to_full().astype(np.uint8), baseline.geometry), followup.geometry)
            mask = LesionMask.from_full(followup.geometry, moved.array > 0)
            lesions[lid] = LesionResult(lid, mask, "ok" if not mask.is_empty else "lost")
        labels = compose_label_map(lesions, followup.geometry)
        lost = [i for i, r in lesions.items() if r.status == "lost"]
        return engine_base.TrackingResult(labels, lost_ids=lost, lesions=lesions)


@pytest.fixture
def copy_engine(monkeypatch):
    mod = types.ModuleType("_lesionlocator_track_test_engines")
    mod.WorldCopyEngine = _WorldCopyEngine
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(engine_base.ENGINE_TABLE, "classical", f"{mod.__name__}:WorldCopyEngine")
    _WorldCopyEngine.calls = []
    _WorldCopyEngine.prompts = []
    return _WorldCopyEngine


def test_several_binary_masks_become_ids_in_order(study, tmp_path, capsys, copy_engine):
    p = study.paths
    code, _, err = _run(capsys, "track", "-bl", p["img0"], "-fu", p["img1"], p["img2"], "-p", p["mask5"], p["mask1"],
                        "-t", "prev_mask", "-o", tmp_path, "-q")
    assert code == 0, err
    for k in (1, 2):
        inst = read_label_map(tmp_path / f"case0_tp{k}_lesions.nii.gz")
        assert inst.ids == [1, 2]
        assert _same_geometry(tmp_path / f"case0_tp{k}_lesions.nii.gz", p[f"img{k}"])
        for lid in (1, 2):
            assert (tmp_path / f"case0_tp{k}_lesion_{lid}.nii.gz").exists()
    # id 1 is the first mask given (lesion 5 of the ground truth), id 2 the second (lesion 1).
    tp1 = read_label_map(tmp_path / "case0_tp1_lesions.nii.gz").array
    gt0 = study.study.labels[0]
    expected = resample_label_map_to(LabelMap((gt0.array == 5).astype(np.uint16), gt0.geometry),
                                     study.study.images[1].geometry).array > 0
    assert np.array_equal(tp1 == 1, expected)
    # Autoregressive: tp2 was tracked from tp1's result.
    assert [c[:2] for c in copy_engine.calls] == [("case0_tp0", "case0_tp1"), ("case0_tp1", "case0_tp2")]


def test_continue_prediction_resumes_after_the_last_finished_followup(study, tmp_path, capsys, copy_engine):
    p = study.paths
    args = ["track", "-bl", p["img0"], "-fu", p["img1"], p["img2"], "-p", p["gt0"], "-t", "prev_mask", "-o", tmp_path,
            "-q"]
    assert _run(capsys, *args)[0] == 0
    tp1 = tmp_path / "case0_tp1_lesions.nii.gz"
    stamp = tp1.stat().st_mtime_ns
    code, _, err = _run(capsys, *args)
    assert code == 3 and "--continue_prediction" in err
    (tmp_path / "case0_tp2_lesions.nii.gz").unlink()
    copy_engine.calls = []
    assert _run(capsys, *args, "--continue_prediction")[0] == 0
    assert [c[:2] for c in copy_engine.calls] == [("case0_tp1", "case0_tp2")]  # resumed from tp1's file
    assert tp1.stat().st_mtime_ns == stamp
    assert (tmp_path / "case0_tp2_lesions.nii.gz").exists()
    copy_engine.calls = []
    code, _, err = _run(capsys, *args, "--continue_prediction")
    assert code == 0 and copy_engine.calls == []
    # Ids are kept (gaps allowed, never renumbered) at every follow-up.
    assert read_label_map(tmp_path / "case0_tp2_lesions.nii.gz").ids == study.study.labels[0].ids


def test_point_prompts_write_the_baseline_and_resume_from_it(study, tmp_path, capsys, copy_engine):
    p = study.paths
    args = ["track", "-bl", p["img0"], "-fu", p["img1"], "-p", p["points"], "-t", "point", "-o", tmp_path, "-q"]
    assert _run(capsys, *args)[0] == 0
    assert (tmp_path / "case0_tp0_lesion_1.nii.gz").exists() and (tmp_path / "case0_tp1_lesion_1.nii.gz").exists()
    (tmp_path / "case0_tp1_lesions.nii.gz").unlink()
    copy_engine.calls = []
    assert _run(capsys, *args, "--c")[0] == 0
    assert len(copy_engine.calls) == 1 and (tmp_path / "case0_tp1_lesions.nii.gz").exists()


def test_track_bad_inputs_exit_2(study, tmp_path, capsys, copy_engine):
    p = study.paths
    empty = write_label_map(np.zeros(study.study.labels[0].array.shape, np.uint8), tmp_path / "empty.nii",
                            geometry=study.study.labels[0].geometry)
    cases = [
        (["-fu", p["img1"], "-p", p["gt1"], "-t", "prev_mask"], "not on the same voxel grid"),
        (["-fu", p["img1"], "-p", empty, "-t", "prev_mask"], "empty"),
        (["-fu", p["img1"], "-p", p["points"], p["points"], "-t", "point"], "one prompt file"),
        (["-fu", tmp_path / "nope.nii.gz", "-p", p["mask1"], "-t", "prev_mask"], "no such file"),
        (["-fu", p["img1"], "-p", tmp_path / "nope.nii.gz", "-t", "prev_mask"], "not found"),
    ]
    for extra, message in cases:
        code, _, err = _run(capsys, "track", "-bl", p["img0"], *extra, "-o", tmp_path / "o")
        assert code == 2, (extra, err)
        assert message in err, err
    assert not (tmp_path / "o").exists()


def test_track_same_case_names_are_told_apart_by_timepoint(study, tmp_path, capsys, copy_engine):
    """The LesionLocator dataset layout names every timepoint's file alike (Baseline/images/case.nii.gz,
    Synthetic_Follow_Up/images/case.nii.gz): outputs get a _tp<k> suffix instead of colliding."""
    p = study.paths
    layout = tmp_path / "layout"
    for k, key in enumerate(("img0", "img1")):
        folder = layout / ("Baseline" if k == 0 else "Synthetic_Follow_Up") / "images"
        folder.mkdir(parents=True)
        (folder / "case.nii.gz").write_bytes(Path(p[key]).read_bytes())
    out = tmp_path / "o"
    code, _, err = _run(capsys, "track", "-bl", layout / "Baseline/images/case.nii.gz",
                        "-fu", layout / "Synthetic_Follow_Up/images/case.nii.gz",
                        "-p", p["mask1"], "-t", "prev_mask", "-o", out)
    assert code == 0, err
    assert (out / "case_tp1_lesions.nii.gz").exists()
    assert (out / "case_tp1_lesion_1.nii.gz").exists()


def test_no_new_lesions_flag_reaches_the_engine_settings(no_user_checkpoint):
    from napari_lesionlocator.cli import build_parser
    from napari_lesionlocator.cli.common import resolve_engine

    base = ["track", "-bl", "b.nii.gz", "-fu", "f.nii.gz", "-p", "m.nii.gz", "-t", "prev_mask", "-o", "out"]
    on = resolve_engine(build_parser().parse_args(base))
    off = resolve_engine(build_parser().parse_args([*base, "--no-new-lesions"]))
    assert on.settings.extra.get("new_candidates", True) is True
    assert off.settings.extra["new_candidates"] is False

"""`lesionlocator segment` end to end (classical engine) + exit codes, help and engine selection."""

from __future__ import annotations

import argparse
import json
import sys
import types

import numpy as np
import pytest

from napari_lesionlocator.cli import build_parser, main
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.core.prompts import prompts_from_label_map
from napari_lesionlocator.core.results import LesionMask, LesionResult, compose_label_map
from napari_lesionlocator.engines import base as engine_base
from napari_lesionlocator.io.images import read_label_map, write_image, write_label_map
from napari_lesionlocator.io.prompt_files import write_prompt_json

sitk = pytest.importorskip("SimpleITK")

pytestmark = pytest.mark.usefixtures("no_user_checkpoint")




@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The small synthetic study written as files: images/, gt/ (instance maps), prompts/.

    Inputs are uncompressed .nii (writing .nii.gz costs seconds here); outputs are always .nii.gz.
    """
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    s = make_synthetic_study(seed=0, size="small")
    root = tmp_path_factory.mktemp("study")
    (root / "images").mkdir()
    (root / "gt").mkdir()
    paths = {}
    for k, (img, lab) in enumerate(zip(s.images, s.labels)):
        paths[f"img{k}"] = write_image(img, root / "images" / f"case0_tp{k}.nii")
        paths[f"gt{k}"] = write_label_map(lab, root / "gt" / f"case0_tp{k}.nii")
    points = [p for p in prompts_from_label_map(s.labels[0].array, "point") if p.lesion_id in (1, 5)]
    paths["points"] = write_prompt_json(points, root / "prompts" / "case0_tp0.json")
    return types.SimpleNamespace(root=root, paths=paths, study=s)


def _tiny_ct(direction=None, modality="CT", offset=0.0) -> Image:
    """24 x 48 x 48 soft tissue (40 HU) in air with a 130 HU sphere, on an oblique, anisotropic grid."""
    rng = np.random.default_rng(1)
    geom = Geometry((24, 48, 48), spacing=(2.0, 0.9, 0.8), origin=(-30.0, 12.5, -7.25),
                    direction=direction or (1.0, 0, 0, 0, 0.96, -0.28, 0, 0.28, 0.96))
    zz, yy, xx = np.indices(geom.shape)
    arr = np.full(geom.shape, -1000.0, np.float32)
    arr[:, 4:44, 4:44] = 40.0
    arr[(zz - 12) ** 2 * 4 + (yy - 24) ** 2 * 0.81 + (xx - 24) ** 2 * 0.64 <= 64] = 130.0
    arr += rng.normal(0, 5, geom.shape).astype(np.float32) + offset
    return Image(np.round(arr), geom, name="tiny", modality=modality)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_same_geometry(path_a, path_b):
    a, b = sitk.ReadImage(str(path_a)), sitk.ReadImage(str(path_b))
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def _dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ---------------------------------------------------------------- segment
def test_segment_points_end_to_end(study, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "segment", "-i", study.paths["img0"], "-p", study.paths["points"], "-t", "point",
                        "-o", out)
    assert code == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["case0_tp0_lesion_1.nii.gz", "case0_tp0_lesion_5.nii.gz", "case0_tp0_lesions.nii.gz",
                     "case0_tp0_summary.json"]
    summary = json.loads((out / "case0_tp0_summary.json").read_text())
    assert [e["id"] for e in summary["lesions"]] == [1, 5] and "overlaps" in summary
    gt = study.study.labels[0].array
    inst = read_label_map(out / "case0_tp0_lesions.nii.gz")
    assert inst.ids == [1, 5]
    for lid in (1, 5):
        f = out / f"case0_tp0_lesion_{lid}.nii.gz"
        _assert_same_geometry(f, study.paths["img0"])
        img = sitk.ReadImage(str(f))
        assert img.GetPixelID() == sitk.sitkUInt8
        arr = sitk.GetArrayFromImage(img)
        assert set(np.unique(arr)) <= {0, 1}
        assert np.array_equal(arr == 1, inst.array == lid)
        # The right lesion, found and written in place (engine quality is tested with the engine).
        assert _dice(arr == 1, gt == lid) > 0.5
    _assert_same_geometry(out / "case0_tp0_lesions.nii.gz", study.paths["img0"])
    assert "engine: classical" in err


def test_segment_boxes_from_a_label_map(study, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "segment", "-i", study.paths["img0"], "-p", study.paths["gt0"], "-t", "box",
                        "-o", out, "-q")
    assert code == 0, err
    gt = study.study.labels[0]
    inst = read_label_map(out / "case0_tp0_lesions.nii.gz")
    for lid in gt.ids:
        assert (out / f"case0_tp0_lesion_{lid}.nii.gz").exists()
    assert _dice(inst.array == 1, gt.array == 1) > 0.5
    assert _dice(inst.array == 5, gt.array == 5) > 0.5
    _assert_same_geometry(out / "case0_tp0_lesions.nii.gz", study.paths["img0"])


def test_output_geometry_of_an_oblique_grid(tmp_path, capsys):
    img = _tiny_ct()
    src = write_image(img, tmp_path / "obl.nii.gz")
    write_prompt_json(prompts_from_label_map((img.array > 100).astype(np.uint8), "box"), tmp_path / "obl.json")
    code, _, err = _run(capsys, "segment", "-i", src, "-p", tmp_path / "obl.json", "-t", "box", "-o", tmp_path / "o")
    assert code == 0, err
    _assert_same_geometry(tmp_path / "o" / "obl_lesion_1.nii.gz", src)
    _assert_same_geometry(tmp_path / "o" / "obl_lesions.nii.gz", src)
    assert read_label_map(tmp_path / "o" / "obl_lesions.nii.gz").array.sum() > 50


def test_segment_a_dicom_folder(tmp_path, capsys):
    from napari_lesionlocator.io.dicom import write_dicom_series

    img = _tiny_ct()
    write_dicom_series(img, tmp_path / "scan1")
    (tmp_path / "p.json").write_text(json.dumps({"1": {"point": [12, 24, 24]}}))
    code, _, err = _run(capsys, "segment", "-i", tmp_path / "scan1", "-p", tmp_path / "p.json", "-t", "point",
                        "-o", tmp_path / "o", "-q")
    assert code == 0, err
    out = sitk.ReadImage(str(tmp_path / "o" / "scan1_lesions.nii.gz"))
    assert out.GetSize() == tuple(reversed(img.shape))
    assert np.allclose(out.GetDirection(), img.geometry.to_itk()["direction"], atol=1e-5)
    assert np.allclose(out.GetOrigin(), img.geometry.to_itk()["origin"], atol=1e-3)
    assert (tmp_path / "o" / "scan1_lesion_1.nii.gz").exists()


def test_folder_mode_pairs_by_name_and_reports_mismatches(tmp_path, capsys):
    img = _tiny_ct()
    (tmp_path / "imgs").mkdir()
    (tmp_path / "prm").mkdir()
    for name in ("a_0000", "b", "c"):
        write_image(img, tmp_path / "imgs" / f"{name}.nii.gz")
    point = {"1": {"point": [12, 24, 24]}}
    for name in ("a", "b", "ghost"):  # a <-> a_0000 (nnU-Net channel suffix); c has no prompt; ghost no image
        (tmp_path / "prm" / f"{name}.json").write_text(json.dumps(point))
    args = ["segment", "-i", tmp_path / "imgs", "-p", tmp_path / "prm", "-t", "point", "-o", tmp_path / "o"]
    code, _, err = _run(capsys, *args)
    assert code == 2
    assert "images without a prompt: c.nii.gz" in err and "prompts without an image: ghost.json" in err
    assert not (tmp_path / "o").exists()
    code, _, err = _run(capsys, *args, "--skip_unmatched", "-q")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "a_lesion_1.nii.gz", "a_lesions.nii.gz", "a_summary.json",
        "b_lesion_1.nii.gz", "b_lesions.nii.gz", "b_summary.json"]
    # Two images that map to one case name would overwrite each other's outputs: refused.
    write_image(img, tmp_path / "imgs" / "b_0000.nii.gz")
    code, _, err = _run(capsys, *args, "--skip_unmatched", "--overwrite")
    assert code == 2 and "b.nii.gz, b_0000.nii.gz" in err


def test_existing_outputs_refuse_continue_and_overwrite(tmp_path, capsys):
    img = _tiny_ct()
    src = write_image(img, tmp_path / "t.nii.gz")
    (tmp_path / "t.json").write_text(json.dumps({"2": {"point": [12, 24, 24]}}))
    args = ["segment", "-i", src, "-p", tmp_path / "t.json", "-t", "point", "-o", tmp_path / "o", "-q"]
    assert _run(capsys, *args)[0] == 0
    files = sorted((tmp_path / "o").iterdir())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    code, _, err = _run(capsys, *args)
    assert code == 3 and "--continue_prediction" in err and "Traceback" not in err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    code, _, err = _run(capsys, *args[:-1], "--continue_prediction")
    assert code == 0 and "skipped" in err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    # An interrupted case (one file missing) is redone with --c.
    (tmp_path / "o" / "t_lesions.nii.gz").unlink()
    assert _run(capsys, *args, "--c")[0] == 0
    assert (tmp_path / "o" / "t_lesions.nii.gz").exists()
    code, _, _ = _run(capsys, *args, "--overwrite")
    assert code == 0
    assert (tmp_path / "o" / "t_lesion_2.nii.gz").stat().st_mtime_ns >= before[tmp_path / "o" / "t_lesion_2.nii.gz"][1]


@pytest.mark.parametrize(
    ("prompt", "kind", "message"),
    [
        ({"1": {"point": [12, 24, 99]}}, "point", "outside the volume"),
        ({"1": {"box": [5, 5, 10, 20, 10, 20]}}, "box", "empty along z"),
        ({"1": {"box": [30, 40, 10, 20, 10, 20]}}, "box", "entirely outside"),
        ({"1": {"box": [5, 9, 10, 20, 10, 20]}}, "point", "are box prompts but -t point"),
        ({"x": {"point": [1, 2, 3]}}, "point", "not a lesion id"),
    ],
)
def test_bad_prompts_exit_2_with_one_line(tmp_path, capsys, prompt, kind, message):
    src = write_image(_tiny_ct(), tmp_path / "t.nii.gz")
    (tmp_path / "t.json").write_text(json.dumps(prompt))
    code, _, err = _run(capsys, "segment", "-i", src, "-p", tmp_path / "t.json", "-t", kind, "-o", tmp_path / "o")
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "o").exists()


def test_bad_files_exit_2(tmp_path, capsys):
    img = _tiny_ct()
    src = write_image(img, tmp_path / "t.nii.gz")
    other = LabelMap(np.ones((24, 48, 48), np.uint8), Geometry((24, 48, 48), spacing=(2.0, 1.0, 1.0)))
    write_label_map(other, tmp_path / "other_grid.nii.gz")
    (tmp_path / "t.json").write_text(json.dumps({"1": {"point": [1, 2, 3]}}))
    (tmp_path / "bad.json").write_text("{not json")
    cases = [
        (["-i", tmp_path / "missing.nii.gz", "-p", tmp_path / "t.json"], "no such image"),
        (["-i", src, "-p", tmp_path / "missing.json"], "no such prompt"),
        (["-i", src, "-p", tmp_path / "other_grid.nii.gz"], "not on the same voxel grid"),
        (["-i", src, "-p", tmp_path / "bad.json"], "not valid JSON"),
    ]
    for extra, message in cases:
        code, _, err = _run(capsys, "segment", *extra, "-t", "point", "-o", tmp_path / "o")
        assert code == 2, (extra, err)
        assert message in err
    # argparse usage errors are exit 2 too.
    assert _run(capsys, "segment", "-i", src)[0] == 2
    assert _run(capsys, "segment", "-i", src, "-p", tmp_path / "t.json", "-t", "lasso", "-o", tmp_path)[0] == 2


def test_non_ct_image_is_a_warning_not_an_error(tmp_path, capsys):
    src = write_image(_tiny_ct(modality=None, offset=1100.0), tmp_path / "mr.nii.gz")  # no value below -50
    (tmp_path / "mr.json").write_text(json.dumps({"1": {"point": [12, 24, 24]}}))
    code, _, err = _run(capsys, "segment", "-i", src, "-p", tmp_path / "mr.json", "-t", "point", "-o",
                        tmp_path / "o", "-q")
    assert code == 0
    assert "warning:" in err and "may not be CT" in err


# ---------------------------------------------------------------- engines, errors, exit codes
class _RecordingEngine:
    """Stands in for the LesionLocator engine: records its settings, 'segments' a cube per prompt."""

    name = "recording"
    last_settings = None
    fail: BaseException | None = None
    fail_at: dict = {}  # lesion id -> exception raised when that lesion's turn comes
    calls: list = []  # lesion ids segmented, in order
    half: int = 1  # half size of the cube

    def __init__(self, settings):
        type(self).last_settings = settings

    def prepare(self, image):
        pass

    def segment(self, image, prompts, *, on_progress=None, cancel=None):
        if type(self).fail is not None:
            raise type(self).fail
        lesions = {}
        for p in prompts:
            if p.lesion_id in type(self).fail_at:
                raise type(self).fail_at[p.lesion_id]
            type(self).calls.append(p.lesion_id)
            z, y, x = p.zyx
            h = type(self).half
            full = np.zeros(image.shape, bool)
            full[max(z - h, 0):z + h + 1, max(y - h, 0):y + h + 1, max(x - h, 0):x + h + 1] = True
            lesions[p.lesion_id] = LesionResult(p.lesion_id, LesionMask.from_full(image.geometry, full))
        return engine_base.SegmentationResult(compose_label_map(lesions, image.geometry), lesions=lesions)

    def track(self, *a, **k):  # pragma: no cover - not used here
        raise NotImplementedError


@pytest.fixture
def fake_engines(monkeypatch):
    mod = types.ModuleType("_lesionlocator_test_engines")
    mod.RecordingEngine = _RecordingEngine
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(engine_base.ENGINE_TABLE, "lesionlocator", f"{mod.__name__}:RecordingEngine")
    monkeypatch.setitem(engine_base.ENGINE_TABLE, "classical", f"{mod.__name__}:RecordingEngine")
    _RecordingEngine.last_settings = None
    _RecordingEngine.fail = None
    _RecordingEngine.fail_at = {}
    _RecordingEngine.calls = []
    _RecordingEngine.half = 1
    return _RecordingEngine


def _tiny_case(tmp_path):
    src = tmp_path / "t.nii.gz"
    if not src.exists():
        write_image(_tiny_ct(), src)
    (tmp_path / "t.json").write_text(json.dumps({"1": {"point": [12, 24, 24]}}))
    return ["segment", "-i", src, "-p", tmp_path / "t.json", "-t", "point", "-o", tmp_path / "o", "-q"]


def test_checkpoint_selects_lesionlocator_with_tta_on_by_default(tmp_path, capsys, monkeypatch, fake_engines):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    args = _tiny_case(tmp_path)
    assert _run(capsys, *args, "-m", ckpt, "-f", "0", "2", "-device", "cpu")[0] == 0
    s = fake_engines.last_settings
    assert s.checkpoint == str(ckpt) and s.tta is True and list(s.folds) == [0, 2] and s.device == "cpu"
    monkeypatch.setenv("LESIONLOCATOR_CHECKPOINT", str(ckpt))
    assert _run(capsys, *args, "--overwrite", "--disable_tta", "-device", "cpu")[0] == 0
    assert fake_engines.last_settings.checkpoint == str(ckpt) and fake_engines.last_settings.tta is False
    # --engine classical wins over a configured checkpoint.
    assert _run(capsys, *args, "--overwrite", "--engine", "classical")[0] == 0
    assert fake_engines.last_settings.checkpoint is None


class _LabelPromptEngine(_RecordingEngine):
    """Like the LesionLocator engine: derives its own prompts from a label-map prompt."""

    label_calls: list = []

    def label_map_prompts(self, image, labels, kind):
        type(self).label_calls.append((image.name, sorted(labels.ids), kind))
        # its own derivation (here: centroid points whatever the kind), one prompt per lesion
        return prompts_from_label_map(labels.array, "point"), {}


def test_label_map_prompts_go_to_engines_that_derive_their_own(tmp_path, capsys, monkeypatch, fake_engines):
    sys.modules["_lesionlocator_test_engines"].LabelPromptEngine = _LabelPromptEngine
    monkeypatch.setitem(engine_base.ENGINE_TABLE, "lesionlocator", "_lesionlocator_test_engines:LabelPromptEngine")
    _LabelPromptEngine.label_calls = []
    img = _tiny_ct()
    src = write_image(img, tmp_path / "t.nii.gz")
    lab = np.zeros(img.shape, np.uint16)
    lab[10:14, 20:28, 20:28] = 4
    lab[2:4, 5:8, 5:8] = 300  # ids > 255 and gaps are kept
    write_label_map(LabelMap(lab, img.geometry), tmp_path / "lab.nii.gz")
    (tmp_path / "ckpt").mkdir()
    code, _, err = _run(capsys, "segment", "-i", src, "-p", tmp_path / "lab.nii.gz", "-t", "box", "-o",
                        tmp_path / "o", "-m", tmp_path / "ckpt", "-device", "cpu", "-q")
    assert code == 0, err
    assert _LabelPromptEngine.label_calls == [("t", [4, 300], "box")]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "t_lesion_300.nii.gz", "t_lesion_4.nii.gz", "t_lesions.nii.gz", "t_summary.json"]
    assert read_label_map(tmp_path / "o" / "t_lesions.nii.gz").ids == [4, 300]


def test_lesionlocator_without_checkpoint_and_missing_checkpoint_are_usage_errors(tmp_path, capsys):
    args = _tiny_case(tmp_path)
    code, _, err = _run(capsys, *args, "--engine", "lesionlocator")
    assert code == 2 and "download-weights" in err
    code, _, err = _run(capsys, *args, "-m", tmp_path / "nope")
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (engine_base.EngineError("device 'cuda' was requested but torch sees no CUDA GPU"), 1, "error: device"),
        (RuntimeError("boom"), 1, "internal error: RuntimeError: boom"),
        (KeyboardInterrupt(), 130, "cancelled"),
    ],
)
def test_runtime_errors_and_cancel_exit_codes(tmp_path, capsys, fake_engines, exc, code, text):
    fake_engines.fail = exc
    got, _, err = _run(capsys, *_tiny_case(tmp_path))
    assert got == code and text in err and "Traceback" not in err
    assert not any((tmp_path / "o").glob("*.nii.gz")) if (tmp_path / "o").exists() else True
    got, _, err = _run(capsys, *_tiny_case(tmp_path), "--debug")
    assert got == code and "Traceback" in err


@pytest.mark.parametrize("command", ["segment", "track", "measure", "download-weights", "generate-checkpoint"])
def test_help_for_every_subcommand(capsys, command):
    code, out, _ = _run(capsys, command, "--help")
    assert code == 0
    assert "exit codes:" in out
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        for opt in action.option_strings:
            assert opt in out
        assert action.help, f"{command}: {action.dest} has no help"


def test_top_level_help_and_version(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "130" in out and "download-weights" in out
    assert _run(capsys, "--version")[0] == 0
    assert _run(capsys)[0] == 2  # a subcommand is required


def test_entry_point_is_declared_and_runs_without_gui_or_torch():
    import subprocess
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "lesionlocator"]
    assert eps and eps[0].value == "napari_lesionlocator.cli:main"
    code = ("import sys; from napari_lesionlocator.cli import main; rc = main(['segment', '--help']); "
            "bad = [m for m in ('napari', 'qtpy', 'torch') if m in sys.modules]; print('LOADED', bad); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout and "--continue_prediction" in proc.stdout


# ---------------------------------------------------------------- per-lesion outputs, overwrite, resume (issue 16.5)
def _three_lesions(tmp_path, ids=(1, 2, 5)):
    src = tmp_path / "t.nii.gz"
    if not src.exists():
        write_image(_tiny_ct(), src)
    centres = {1: [12, 20, 20], 2: [12, 22, 22], 5: [8, 30, 30]}  # 1 and 2 overlap with half >= 1
    (tmp_path / "t.json").write_text(json.dumps({str(i): {"point": centres[i]} for i in ids}))
    return ["segment", "-i", src, "-p", tmp_path / "t.json", "-t", "point", "-o", tmp_path / "o", "-q"]


def test_overlapping_lesions_keep_their_own_files_and_the_summary_reports_it(tmp_path, capsys, fake_engines):
    fake_engines.half = 2
    assert _run(capsys, *_three_lesions(tmp_path))[0] == 0
    out = tmp_path / "o"
    one = read_label_map(out / "t_lesion_1.nii.gz").array == 1
    two = read_label_map(out / "t_lesion_2.nii.gz").array == 1
    assert one.sum() == two.sum() == 125  # whole cubes, neither cut by the other
    shared = one & two
    assert shared.sum() == 45  # 5 x 3 x 3
    assert np.all(read_label_map(out / "t_lesions.nii.gz").array[shared] == 2)
    summary = json.loads((out / "t_summary.json").read_text())
    assert summary["overlaps"] == [{"ids": [1, 2], "voxels": 45}]
    assert [(e["id"], e["status"], e["voxels"]) for e in summary["lesions"]] == [(1, "ok", 125), (2, "ok", 125),
                                                                                (5, "ok", 125)]


def test_overwrite_replaces_a_case_as_a_whole(tmp_path, capsys, fake_engines):
    assert _run(capsys, *_three_lesions(tmp_path))[0] == 0
    out = tmp_path / "o"
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    # a failing --overwrite run with fewer prompts: the old case stays whole, nothing is half replaced
    fake_engines.fail_at = {2: RuntimeError("boom")}
    args = _three_lesions(tmp_path, ids=(1, 2))
    code, _, err = _run(capsys, *args, "--overwrite")
    assert code == 1 and "boom" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == old
    assert (out / "t.partial" / "t_lesion_1.nii.gz").exists()  # the finished lesion is kept aside
    # the same run again: old lesion_5 removed only now, after the new files are in place
    fake_engines.fail_at = {}
    assert _run(capsys, *args, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["t_lesion_1.nii.gz", "t_lesion_2.nii.gz", "t_lesions.nii.gz",
                                                     "t_summary.json"]
    assert read_label_map(out / "t_lesions.nii.gz").ids == [1, 2]
    assert [e["id"] for e in json.loads((out / "t_summary.json").read_text())["lesions"]] == [1, 2]


def test_cancelled_run_keeps_finished_lesions_and_continue_resumes(tmp_path, capsys, fake_engines):
    args = _three_lesions(tmp_path)
    fake_engines.fail_at = {5: KeyboardInterrupt()}
    code, _, err = _run(capsys, *args)
    assert code == 130 and "--continue_prediction" in err and ".partial" in err
    out = tmp_path / "o"
    assert sorted(p.name for p in out.iterdir()) == ["t.partial"]  # no final file of an unfinished case
    assert (out / "t.partial" / "t_lesion_1.nii.gz").exists() and (out / "t.partial" / "t_lesion_2.nii.gz").exists()
    code, _, err = _run(capsys, *args)
    assert code == 3 and "t.partial" in err
    fake_engines.fail_at, fake_engines.calls = {}, []
    code, _, err = _run(capsys, *args[:-1], "--continue_prediction")
    assert code == 0, err
    assert fake_engines.calls == [5]  # only the unfinished lesion was run again
    assert "2 lesion(s) finished by the interrupted run are kept" in err
    assert sorted(p.name for p in out.iterdir()) == ["t_lesion_1.nii.gz", "t_lesion_2.nii.gz", "t_lesion_5.nii.gz",
                                                     "t_lesions.nii.gz", "t_summary.json"]
    assert read_label_map(out / "t_lesions.nii.gz").ids == [1, 2, 5]
    # a partial run of other prompts is not resumed
    fake_engines.fail_at = {5: KeyboardInterrupt()}
    assert _run(capsys, *args, "--overwrite")[0] == 130
    (tmp_path / "t.json").write_text(json.dumps({"1": {"point": [5, 5, 5]}, "2": {"point": [6, 6, 6]},
                                                 "5": {"point": [8, 30, 30]}}))
    fake_engines.fail_at, fake_engines.calls = {}, []
    assert _run(capsys, *args, "--continue_prediction")[0] == 0
    assert fake_engines.calls == [1, 2, 5]


def test_continue_prediction_redoes_a_case_with_a_damaged_file(tmp_path, capsys, fake_engines):
    args = _three_lesions(tmp_path)
    assert _run(capsys, *args)[0] == 0
    damaged = tmp_path / "o" / "t_lesion_2.nii.gz"
    damaged.write_bytes(damaged.read_bytes()[:40])  # truncated
    fake_engines.calls = []
    code, _, err = _run(capsys, *args[:-1], "--continue_prediction")
    assert code == 0 and "skipped" not in err
    assert fake_engines.calls == [1, 2, 5]
    assert read_label_map(damaged).array.sum() == 27


def test_cli_is_a_package_one_module_per_command_and_runs_with_python_m():
    """Every subcommand comes from its own module of ``napari_lesionlocator.cli`` (add_parser + run),
    and ``python -m napari_lesionlocator.cli`` is the same command line."""
    import importlib
    import subprocess

    from napari_lesionlocator.cli import COMMANDS

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    for command, module in COMMANDS.items():
        mod = importlib.import_module(f"napari_lesionlocator.cli.{module}")
        assert callable(mod.add_parser) and callable(mod.run), command
        # every command shares the kit: the common flags and the exit-code epilog
        assert {"--debug", "--quiet"} <= set(sub.choices[command]._option_string_actions), command
    proc = subprocess.run([sys.executable, "-m", "napari_lesionlocator.cli", "report", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "SESSION_DIR" in proc.stdout and "--relocate" in proc.stdout and "--title" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "napari_lesionlocator.cli", "session", "/nonexistent/session",
                           "--relocate", "no-equals-sign"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "TIMEPOINT=NEW_PATH" in proc.stderr

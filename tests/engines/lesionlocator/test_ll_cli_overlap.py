"""`lesionlocator segment/track --engine lesionlocator` with overlapping lesions (issue 11, CLI level).

Each ``<case>_lesion_<N>`` file must be that lesion's own whole mask (equal to the lesion segmented or
tracked alone through the engine), never a cut of the merged instance map; the summary reports the
overlap; at follow-up k+1 each lesion is tracked from its own file at follow-up k; every
``-t prev_mask`` file is its own lesion. Tiny generated checkpoint (all three parts).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")
pytest.importorskip("unigradicon")

import _ll_helpers as H  # noqa: E402

from napari_lesionlocator import api  # noqa: E402
from napari_lesionlocator.cli import main  # noqa: E402
from napari_lesionlocator.core.image import LabelMap  # noqa: E402
from napari_lesionlocator.core.prompts import PointPrompt  # noqa: E402
from napari_lesionlocator.core.results import LesionMask  # noqa: E402
from napari_lesionlocator.engines.base import EngineSettings, create_engine  # noqa: E402
from napari_lesionlocator.io.images import read_image, read_label_map, write_image, write_label_map  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("no_user_checkpoint")]

POINTS = {"1": {"point": [12, 24, 24]}, "2": {"point": [12, 28, 28]}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("llcli")
    paths = {}
    for img in H.timepoints():
        paths[img.name] = write_image(img, root / f"{img.name}.nii")
    (root / "points.json").write_text(json.dumps(POINTS))
    paths["points"] = root / "points.json"
    return paths


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return code, err


def _engine(tta: bool):
    return create_engine("lesionlocator", EngineSettings(checkpoint=str(H.tiny_full_checkpoint()), folds=[0], tta=tta))


def _file_mask(path) -> np.ndarray:
    arr = read_label_map(path).array
    assert set(np.unique(arr)) <= {0, 1}
    return arr == 1


def _ll_args(tta: bool):
    return ["-m", H.tiny_full_checkpoint(), "-f", "0", "-device", "cpu", "--threads", "1", "-q",
            *([] if tta else ["--disable_tta"])]


@pytest.mark.parametrize("tta", [False, True], ids=["no-tta", "tta"])
def test_segment_files_are_each_lesions_own_mask(files, tmp_path, capsys, tta):
    out = tmp_path / "o"
    code, err = _run(capsys, "segment", "-i", files["base"], "-p", files["points"], "-t", "point", "-o", out,
                     *_ll_args(tta))
    assert code == 0, err
    image = read_image(files["base"])
    eng = _engine(tta)
    alone = {lid: eng.segment(image, [PointPrompt(lid, tuple(v["point"]))]).lesions[lid].mask.to_full()
             for lid, v in ((int(k), v) for k, v in POINTS.items())}
    shared = alone[1] & alone[2]
    assert shared.any(), "the test needs overlapping masks"
    for lid in (1, 2):
        assert np.array_equal(_file_mask(out / f"base_lesion_{lid}.nii.gz"), alone[lid]), lid
    display = read_label_map(out / "base_lesions.nii.gz").array
    assert np.all(display[shared] == 2)  # display map: later lesion wins
    summary = json.loads((out / "base_summary.json").read_text())
    assert [e["id"] for e in summary["lesions"]] == [1, 2]
    assert summary["overlaps"] == [{"ids": [1, 2], "voxels": int(shared.sum())}]
    for e in summary["lesions"]:
        assert e["voxels"] == int(alone[e["id"]].sum()) and e["status"] in ("ok", "check")
        assert e["volume_ml"] == pytest.approx(e["voxels"] * 1.5 * 0.8 * 0.8 / 1000, abs=1e-4)


def test_segment_label_map_prompt_files_are_each_lesions_own_mask(files, tmp_path, capsys):
    image = read_image(files["base"])
    lab = np.zeros(image.shape, np.uint16)
    lab[8:15, 14:26, 14:26] = 3
    lab[9:16, 26:36, 27:37] = 40
    labels = LabelMap(lab, image.geometry)
    write_label_map(labels, tmp_path / "base.nii.gz")
    out = tmp_path / "o"
    code, err = _run(capsys, "segment", "-i", files["base"], "-p", tmp_path / "base.nii.gz", "-t", "box", "-o", out,
                     *_ll_args(False))
    assert code == 0, err
    eng = _engine(False)
    pps, _ = eng.label_map_prompts(image, labels, "box")
    alone = {p.lesion_id: eng.segment(image, [p]).lesions[p.lesion_id].mask.to_full() for p in pps}
    assert (alone[3] & alone[40]).any()
    for lid in (3, 40):
        assert np.array_equal(_file_mask(out / f"base_lesion_{lid}.nii.gz"), alone[lid]), lid


def test_track_every_file_is_its_own_lesion_and_prompts_the_next_followup(files, tmp_path, capsys):
    out = tmp_path / "o"
    code, err = _run(capsys, "track", "-bl", files["base"], "-fu", files["fu1"], files["fu2"], "-p", files["points"],
                     "-t", "point", "-o", out, *_ll_args(False))
    assert code == 0, err
    base, fu1, fu2 = (read_image(files[n]) for n in ("base", "fu1", "fu2"))
    eng = _engine(False)
    own0 = {lid: LesionMask.from_full(base.geometry, _file_mask(out / f"base_lesion_{lid}.nii.gz")) for lid in (1, 2)}
    assert own0[1].overlap_voxels(own0[2]) > 0
    for lid in (1, 2):
        # each lesion tracked alone from its own baseline file, then from its own fu1 file
        one = eng.track(base, {lid: own0[lid]}, fu1).lesions[lid]
        assert np.array_equal(_file_mask(out / f"fu1_lesion_{lid}.nii.gz"), one.mask.to_full()), lid
        own1 = LesionMask.from_full(fu1.geometry, _file_mask(out / f"fu1_lesion_{lid}.nii.gz"))
        if own1.is_empty:
            continue
        two = eng.track(fu1, {lid: own1}, fu2).lesions[lid]
        assert np.array_equal(_file_mask(out / f"fu2_lesion_{lid}.nii.gz"), two.mask.to_full()), lid
    track = json.loads((out / "base_track_summary.json").read_text())
    assert track["followups"] == ["fu1", "fu2"]
    assert [(e["case"], e["id"]) for e in track["lesions"]] == [("fu1", 1), ("fu1", 2), ("fu2", 1), ("fu2", 2)]
    per_fu = json.loads((out / "fu1_summary.json").read_text())
    assert per_fu["case"] == "fu1" and "new_candidates" in per_fu


def test_prev_mask_files_overlap_and_each_is_its_own_lesion(files, tmp_path, capsys):
    base, fu1 = read_image(files["base"]), read_image(files["fu1"])
    m1 = np.zeros(base.shape, np.uint8)
    m1[8:16, 16:30, 16:30] = 1
    m2 = np.zeros(base.shape, np.uint8)
    m2[10:18, 24:38, 24:38] = 1  # overlaps m1: neither is cut
    p1 = write_label_map(m1, tmp_path / "m1.nii.gz", geometry=base.geometry)
    p2 = write_label_map(m2, tmp_path / "m2.nii.gz", geometry=base.geometry)
    out = tmp_path / "o"
    code, err = _run(capsys, "track", "-bl", files["base"], "-fu", files["fu1"], "-p", p1, p2, "-t", "prev_mask",
                     "-o", out, *_ll_args(False))
    assert code == 0, err
    eng = _engine(False)
    for lid, m in ((1, m1), (2, m2)):
        one = eng.track(base, {lid: LesionMask.from_full(base.geometry, m.astype(bool))}, fu1).lesions[lid]
        assert np.array_equal(_file_mask(out / f"fu1_lesion_{lid}.nii.gz"), one.mask.to_full()), lid
    # the api's own writer reads the case back as each lesion's own mask
    back = api.read_case_lesions(out, "fu1", fu1.geometry)
    assert sorted(back) == [1, 2]

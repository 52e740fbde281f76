"""Session folders: save -> restore is voxel-equal with equal metadata; images moved or changed are
refused by name and can be re-pointed; saves are atomic; autosave and recovery (also after a kill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_lesionlocator.core.errors import OutputExistsError
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image
from napari_lesionlocator.core.prompts import BoxPrompt, PointPrompt
from napari_lesionlocator.core.results import LesionMask, LesionResult
from napari_lesionlocator.core.study import Study, Timepoint
from napari_lesionlocator.io.images import read_image, write_image
from napari_lesionlocator.io.session import (
    SESSION_FILE,
    SessionError,
    SessionImageError,
    autosave,
    check_images,
    discard_recovery,
    find_recoveries,
    latest_recovery,
    load_session,
    read_session_info,
    repoint_session,
    save_session,
)

GEOMS = [
    Geometry((12, 40, 36), (2.5, 0.8, 0.9), (-10.0, 5.0, 3.0)),
    Geometry((14, 38, 40), (2.0, 0.8, 0.8), (-12.0, 4.0, 2.0), (1, 0, 0, 0, 0.6, -0.8, 0, 0.8, 0.6)),
]


def _ball(geom: Geometry, centre, radius_vox: float) -> LesionMask:
    zz, yy, xx = np.indices(geom.shape)
    full = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius_vox ** 2
    return LesionMask.from_full(geom, full)


def _images(folder: Path | None, seed: int = 0) -> list[Image]:
    rng = np.random.default_rng(seed)
    out = []
    for k, g in enumerate(GEOMS):
        img = Image(rng.integers(-1000, 400, g.shape).astype(np.float32), g, name=f"pt_tp{k}",
                    acquisition_date=f"2024-0{k + 2}-10", modality="CT")
        if folder is not None:
            path = write_image(img, folder / f"pt_tp{k}.nii.gz")
            img = read_image(path, name=f"pt_tp{k}")
            img.acquisition_date = f"2024-0{k + 2}-10"
        out.append(img)
    return out


def _review(images: list[Image]) -> Study:
    s = Study([Timepoint(img) for img in images], patient_id="pt")
    s.engine = {"name": "classical", "settings": {"threads": 2, "tta": False, "extra": {"radius_mm": 40}}}
    a = s.new_lesion("RUL nodule", site="lung")
    b = s.new_lesion("node", site="lymph node")
    c = s.new_lesion("scratch")
    s.remove_lesion(c)  # id 3 is used up
    base, fu = s.names
    s.set_result(a, base, LesionResult(a, _ball(GEOMS[0], (6, 20, 18), 5), provenance={"engine": "classical",
                 "parameters": {"radius_mm": 40}}), prompts=[PointPrompt(a, (6, 20, 18))])
    s.set_result(b, base, _ball(GEOMS[0], (6, 24, 22), 4), prompts=[BoxPrompt(b, (3, 9, 20, 29, 18, 27))])
    assert s.mask(a, base).overlap_voxels(s.mask(b, base)) > 0  # overlapping masks
    s.set_result(a, fu, LesionResult(a, _ball(GEOMS[1], (7, 19, 20), 6), "check", ["weak edge"]), tracked_from=base)
    s.set_result(b, fu, LesionResult(b, LesionMask.empty(GEOMS[1]), "lost"), tracked_from=base)
    s.set_review(b, fu, "disappeared")
    d = s.new_lesion("new one", site="liver")
    s.set_result(d, fu, _ball(GEOMS[1], (4, 10, 30), 3))
    edited = s[base].labels.array.copy()
    edited[6, 20, 10:14] = a
    s.apply_label_edit(base, edited, user="reader", when="2024-06-01T09:00:00+00:00")
    s.set_lesion_info(a, role="target")
    s.set_lesion_info(b, role="non-target")
    s.set_not_evaluable(b, base, False)
    s.notes["comment"] = "checked twice"
    s.set_candidates(fu, [{"centroid_mm": [1.0, 2.0, 3.0], "box": [1, 3, 2, 6, 2, 6], "score": 0.5},
                          {"centroid_mm": [4.0, 5.0, 6.0], "box": [5, 7, 9, 12, 9, 12], "score": 0.3}])
    s.dismiss_candidate(fu, 1)
    return s


def _metadata(study: Study) -> dict:
    state = study.snapshot_state()
    for obs in state["observations"]:
        mask = obs.pop("mask")
        obs["mask"] = (mask.start, mask.array.shape, mask.voxels)
    tps = [{k: v for k, v in tp.items() if k != "image"} for tp in state["timepoints"]]
    state["timepoints"] = tps
    state.pop("revision")
    return state


def _assert_same_review(a: Study, b: Study) -> None:
    assert _metadata(a) == _metadata(b)
    assert a.names == b.names and a.next_lesion_id() == b.next_lesion_id()
    for name in a.names:
        for lid, obs in a.observations(name).items():
            other = b.observation(lid, name)
            assert other.mask.start == obs.mask.start
            np.testing.assert_array_equal(other.mask.array, obs.mask.array)
            assert other.mask.geometry.same_grid(obs.mask.geometry)
            assert other.prompts == obs.prompts
        np.testing.assert_array_equal(a[name].labels.array, b[name].labels.array)
        np.testing.assert_array_equal(a[name].image.array, b[name].image.array)
        assert a[name].acquisition_date == b[name].acquisition_date


def test_save_restore_is_voxel_equal_with_equal_metadata(tmp_path) -> None:
    study = _review(_images(tmp_path / "scans"))
    folder = save_session(study, tmp_path / "review")
    doc = json.loads((folder / SESSION_FILE).read_text())
    assert doc["next_id"] == 5 and [tp["image"]["embedded"] for tp in doc["timepoints"]] == [False, False]
    assert doc["timepoints"][0]["image"]["file_sha256"].startswith("sha256:")
    back = load_session(folder)
    _assert_same_review(study, back)
    assert back.observation(1, back.names[0]).provenance.edits == 1
    assert back.observation(1, back.names[1]).result.messages == ["weak edge"]
    assert back.table_status(2, back.names[1]) == "disappeared" and back.role(1) == "target"
    assert back.engine == study.engine and back.session_id == study.session_id
    assert [c["state"] for c in back.candidates(back.names[1], state=None)] == ["proposed", "dismissed"]
    assert back.new_lesion() == 5  # the counter survives: 3 (deleted) and 4 are never reused
    info = read_session_info(folder)
    assert info.patient_id == "pt" and len(info.lesions) == 3 and info.unverified == [(1, study.names[1])]
    # files carry the user's umask, not 0600
    mode = (folder / SESSION_FILE).stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_in_memory_images_are_embedded_and_relinked(tmp_path) -> None:
    study = _review(_images(None))
    first = save_session(study, tmp_path / "s1")
    assert (first / "images" / "tp000.nii.gz").is_file()
    _assert_same_review(study, load_session(first))
    # a second save next to it reuses the embedded images by hard link (no re-encoding)
    second = save_session(study, tmp_path / "s2", reuse_from=[first])
    assert os.stat(second / "images/tp001.nii.gz").st_ino == os.stat(first / "images/tp001.nii.gz").st_ino
    _assert_same_review(study, load_session(second))


def test_changed_image_is_refused_by_name(tmp_path) -> None:
    scans = tmp_path / "scans"
    study = _review(_images(scans))
    folder = save_session(study, tmp_path / "review")
    changed = study[1].image.with_array(study[1].image.array + 1.0)
    write_image(changed, scans / "pt_tp1.nii.gz", overwrite=True)
    with pytest.raises(SessionImageError, match=r"pt_tp1\.nii\.gz has changed since the session was saved") as info:
        load_session(folder)
    assert [p.timepoint for p in info.value.problems] == ["pt_tp1"] and "--relocate pt_tp1=" in str(info.value)
    assert [c.status for c in check_images(folder)] == ["ok", "changed"]


def test_moved_images_are_refused_then_repointed(tmp_path) -> None:
    scans = tmp_path / "scans"
    study = _review(_images(scans))
    folder = save_session(study, tmp_path / "review")
    moved = tmp_path / "archive"
    moved.mkdir()
    for f in scans.iterdir():
        f.rename(moved / f.name)
    with pytest.raises(SessionImageError, match=r"pt_tp0\.nii\.gz not found \(moved or deleted\)"):
        load_session(folder)
    # one at a time by name, or by searching a folder
    with pytest.raises(SessionImageError, match="pt_tp1"):
        load_session(folder, relocate={"pt_tp0": str(moved / "pt_tp0.nii.gz")})
    _assert_same_review(study, load_session(folder, search=[moved]))
    # pointing a timepoint at the other scan is refused (different image)
    with pytest.raises(SessionImageError, match="has changed"):
        load_session(folder, relocate={"pt_tp0": str(moved / "pt_tp1.nii.gz")}, search=[moved])
    repoint_session(folder, search=[moved])
    _assert_same_review(study, load_session(folder))
    # a re-encoded file with the same voxels is accepted (uncompressed NIfTI instead of .nii.gz)
    other = write_image(read_image(moved / "pt_tp1.nii.gz"), tmp_path / "pt_tp1.nii")
    checks = check_images(folder, relocate={"pt_tp1": str(other)}, load=True)
    assert [c.status for c in checks] == ["ok", "same voxels"]
    _assert_same_review(study, load_session(folder, relocate={"pt_tp1": str(other)}))


def test_save_is_atomic_and_never_replaces_by_surprise(tmp_path, monkeypatch) -> None:
    import napari_lesionlocator.io.session as session_mod

    study = _review(_images(None))
    folder = save_session(study, tmp_path / "review")
    with pytest.raises(OutputExistsError, match="already holds a session"):
        save_session(study, folder)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a session folder"):
        save_session(study, tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    before = (folder / SESSION_FILE).read_text()
    study.rename_lesion(1, "renamed")

    def broken(state, tmp, *args):
        (tmp / "masks").mkdir()
        (tmp / "masks" / "tp000.npz").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(session_mod, "_write_state", broken)
    with pytest.raises(OSError, match="No space"):
        save_session(study, folder, overwrite=True)
    monkeypatch.undo()
    assert (folder / SESSION_FILE).read_text() == before  # the previous save is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "review"]  # no temp folder left
    save_session(study, folder, overwrite=True)
    assert load_session(folder).lesion_name(1) == "renamed"
    # a crash between "move the old save aside" and "rename the new one in": the old one is found
    os.rename(folder, tmp_path / ".review.old-deadbeef")
    assert load_session(folder).lesion_name(1) == "renamed"


def test_damaged_sessions_name_the_file(tmp_path) -> None:
    study = _review(_images(None))
    folder = save_session(study, tmp_path / "review")
    (folder / "masks" / "tp001.npz").write_bytes(b"not a zip")
    with pytest.raises(SessionError, match=r"tp001\.npz"):
        load_session(folder)
    (folder / SESSION_FILE).write_text("{")
    with pytest.raises(SessionError, match=r"session\.json is not valid JSON"):
        load_session(folder)
    with pytest.raises(SessionError, match="not found"):
        load_session(tmp_path / "nowhere")


def test_autosave_recovery_and_discard(tmp_path) -> None:
    root = tmp_path / "recovery"
    study = _review(_images(None))
    assert latest_recovery(root) is None
    t0 = time.perf_counter()
    first = autosave(study.snapshot_state(), root)
    study.rename_lesion(1, "after first autosave")
    second = autosave(study.snapshot_state(), root)
    third = autosave(study, root, keep=2)
    elapsed = time.perf_counter() - t0
    assert not first.exists() and second.exists() and third.exists()  # keeps the newest two
    assert os.stat(third / "images/tp000.nii.gz").st_ino == os.stat(second / "images/tp000.nii.gz").st_ino
    rec = latest_recovery(root)
    assert rec.folder == third and rec.session_id == study.session_id and "pt" in rec.describe()
    assert latest_recovery(root, exclude=[study.session_id]) is None
    back = load_session(rec.folder)
    _assert_same_review(study, back)
    assert back.lesion_name(1) == "after first autosave"
    assert discard_recovery(study.session_id, root) and find_recoveries(root) == []
    assert elapsed < 20  # three autosaves of a small study (the first encodes the images)


_CHILD = r"""
import sys, time
sys.path.insert(0, {tests!r})
from test_session import _images, _review
from napari_lesionlocator.io.session import autosave
study = _review(_images(None))
k = 0
while True:
    study.rename_lesion(1, f"edit {{k}}")
    autosave(study.snapshot_state(), {root!r})
    print(k, flush=True)
    k += 1
"""


def test_a_review_killed_mid_save_restores_from_its_last_autosave(tmp_path) -> None:
    """SIGKILL while autosaving in a loop: the newest complete autosave restores, at most one edit lost."""
    root = tmp_path / "recovery"
    code = _CHILD.format(tests=str(Path(__file__).parent), root=str(root))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    done = []
    try:
        deadline = time.monotonic() + 120
        while len(done) < 4 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            done.append(int(line))
        time.sleep(0.05)  # land the kill inside a save
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(done) >= 4, "the child did not autosave"
    rec = latest_recovery(root)
    back = load_session(rec.folder)
    k = int(back.lesion_name(1).split()[1])
    assert k >= done[-1]  # nothing reported as saved was lost
    assert back.next_lesion_id() == 5 and len(back.lesion_ids) == 3


def test_dicom_series_images_round_trip(tmp_path) -> None:
    """A timepoint read from a DICOM folder is saved by folder checksum and read back by series."""
    from napari_lesionlocator.io.dicom import write_dicom_series
    from napari_lesionlocator.io.volumes import read_volume

    images = _images(None)
    write_dicom_series(images[0], tmp_path / "dcm0", acquisition_date="2024-02-10", series_description="base")
    dcm = read_volume(tmp_path / "dcm0")
    dcm.name = "pt_tp0"
    study = _review([dcm, images[1]])
    folder = save_session(study, tmp_path / "review")
    doc = json.loads((folder / SESSION_FILE).read_text())
    assert doc["timepoints"][0]["image"]["kind"] == "folder" and doc["timepoints"][1]["image"]["embedded"]
    back = load_session(folder)
    _assert_same_review(study, back)
    assert back[0].image.source == str((tmp_path / "dcm0").resolve())
    # one slice rewritten with other values: the folder checksum and the voxels change -> refused
    first = sorted((tmp_path / "dcm0").iterdir())[0]
    import pydicom

    ds = pydicom.dcmread(first)
    arr = ds.pixel_array.copy()
    arr[0, 0] += 7
    ds.PixelData = arr.tobytes()
    ds.save_as(first)
    with pytest.raises(SessionImageError, match="dcm0 has changed"):
        load_session(folder)


def test_session_and_scans_moved_together_are_found_by_relative_path(tmp_path) -> None:
    project = tmp_path / "project"
    study = _review(_images(project / "scans"))
    save_session(study, project / "reviews" / "r1")
    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    project.rename(moved)  # e.g. copied to another machine: absolute paths are gone, relative ones hold
    back = load_session(moved / "reviews" / "r1")
    _assert_same_review(study, back)
    assert back[0].image.source == str(moved / "scans" / "pt_tp0.nii.gz")

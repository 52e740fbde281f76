"""The one atomic-write helper: umask, verification before the rename, never replacing, cleanup, disk full."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_lesionlocator.core.errors import OutputExistsError, OutputPathError, OutputWriteError
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.io import atomic
from napari_lesionlocator.io.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    current_umask,
    require_output_folder,
)
from napari_lesionlocator.io.images import read_label_map, write_image, write_label_map


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _labels(shape=(12, 20, 24), seed=0) -> LabelMap:
    rng = np.random.default_rng(seed)
    return LabelMap(rng.integers(0, 4, shape).astype(np.uint16), Geometry(shape, (2.0, 0.8, 0.8), (1.0, 2.0, 3.0)),
                    "lab")


def _only_final_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_every_writer_honours_the_umask(tmp_path, mask):
    with _umask(mask):
        assert current_umask() == mask
        want = 0o666 & ~mask
        img = Image(np.zeros((4, 5, 6), np.float32), Geometry((4, 5, 6), (1.0, 1.0, 1.0)), "ct")
        paths = [
            write_image(img, tmp_path / "a.nii.gz"),
            write_image(img, tmp_path / "b.mhd"),
            write_label_map(_labels(), tmp_path / "c.nrrd"),
            atomic_write_text(tmp_path / "d.txt", "x"),
            tmp_path / "b.zraw",
        ]
        from napari_lesionlocator.core.prompts import PointPrompt
        from napari_lesionlocator.io.prompt_files import write_prompt_json

        paths.append(write_prompt_json([PointPrompt(1, (1, 2, 3))], tmp_path / "p.json"))
        for p in paths:
            assert (p.stat().st_mode & 0o777) == want, (p.name, oct(p.stat().st_mode & 0o777), oct(want))


def test_umask_is_read_without_being_changed_in_a_child_process(tmp_path):
    code = "import os; os.umask(0o037); from napari_lesionlocator.io.atomic import current_umask as c; print(oct(c()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "0o37"


def test_existing_file_is_refused_before_writing_and_kept(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(OutputExistsError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    atomic_write_text(target, "new", overwrite=True)
    assert target.read_text() == "new"
    assert _only_final_names(tmp_path) == ["t.txt"]


def test_a_file_that_appears_while_writing_is_never_replaced(tmp_path):
    target = tmp_path / "race.txt"
    with pytest.raises(OutputExistsError, match="appeared while"), atomic_write(target) as tmp:
        tmp.write_text("ours")
        target.write_text("someone else's")  # another process wins the race
    assert target.read_text() == "someone else's"
    assert _only_final_names(tmp_path) == ["race.txt"]


def test_failure_inside_the_block_cleans_up(tmp_path):
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "x.nii.gz") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "y.mhd", detached=(".raw",)) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert _only_final_names(tmp_path) == []


def test_verification_failure_leaves_no_final_file(tmp_path):
    def reject(path):
        raise OutputWriteError("not right")

    with pytest.raises(OutputWriteError, match="not right"), atomic_write(tmp_path / "v.bin", verify=reject) as tmp:
        tmp.write_bytes(b"abc")
    with pytest.raises(OutputWriteError, match="empty"), atomic_write(tmp_path / "e.bin") as tmp:
        tmp.write_bytes(b"")
    assert _only_final_names(tmp_path) == []


def test_injected_enospc_exits_cleanly_and_keeps_earlier_outputs(tmp_path, monkeypatch):
    first = atomic_write_text(tmp_path / "first.txt", "kept")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OutputWriteError, match="no space left"):
        atomic_write_text(tmp_path / "second.txt", "lost")
    with pytest.raises(OutputWriteError, match="no space left"):
        write_label_map(_labels(), tmp_path / "mask.nii.gz")
    assert first.read_text() == "kept"
    assert _only_final_names(tmp_path) == ["first.txt"]


def _truncating_writer(fraction):
    real = sitk.WriteImage

    def write(img, path, *args, **kwargs):  # what SimpleITK's NIfTI writer does on a full disk: no error
        real(img, path, *args, **kwargs)
        size = os.path.getsize(path)
        with open(path, "r+b") as fh:
            fh.truncate(int(size * fraction))

    return write


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.97])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_silently_truncated_image_is_caught_before_the_rename(tmp_path, monkeypatch, fraction, suffix):
    earlier = write_label_map(_labels(seed=1), tmp_path / f"earlier{suffix}")
    monkeypatch.setattr(sitk, "WriteImage", _truncating_writer(fraction))
    with pytest.raises(OutputWriteError, match="could not write .*nothing was saved"):
        write_label_map(_labels(), tmp_path / f"new{suffix}")
    assert _only_final_names(tmp_path) == [earlier.name]
    assert read_label_map(earlier).array.max() > 0


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or sys.platform != "linux":
        return False
    folder.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                         capture_output=True, timeout=20)
    return res.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    if not _mount_tmpfs(folder, "96k"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=20)


def test_full_disk_for_real_nifti_and_tables(small_disk):
    small = _labels((4, 8, 8))
    kept = write_label_map(small, small_disk / "small.nii.gz")
    rng = np.random.default_rng(3)
    big = LabelMap(rng.integers(0, 60000, (40, 64, 64)).astype(np.uint16), Geometry((40, 64, 64)), "big")
    for name in ("big.nii.gz", "big.nii", "big.nrrd", "big.mha"):
        with pytest.raises(OutputWriteError, match="could not write"):
            write_label_map(big, small_disk / name)
    with pytest.raises(OutputWriteError):
        atomic_write_bytes(small_disk / "blob.bin", os.urandom(200_000))
    assert _only_final_names(small_disk) == ["small.nii.gz"]
    assert np.array_equal(read_label_map(kept).array, small.array)


def test_require_output_folder(tmp_path):
    assert not require_output_folder(tmp_path / "new" / "deep").exists()  # checked, nothing created
    assert list(tmp_path.iterdir()) == []
    assert require_output_folder(tmp_path / "new" / "deep", create=True).is_dir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        require_output_folder(afile)
    with pytest.raises(OutputPathError, match="is a file"):
        require_output_folder(afile / "sub" / "deeper")


def test_read_only_output_folder_is_found_first(tmp_path):
    folder = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    if os.geteuid() == 0:
        if not _mount_tmpfs(folder, "64k"):
            pytest.skip("cannot mount a read-only tmpfs here")
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True, timeout=20)
    else:
        folder.mkdir()
        folder.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="cannot write into"):
            require_output_folder(folder)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=20)
        else:
            folder.chmod(0o755)


def test_cli_results_tables_and_masks_get_the_umask_and_log_lines(tmp_path, capsys, no_user_checkpoint):
    """Issue 10 item 9: every file the command line writes has ``0o666 & ~umask``; on a stream that is not a
    terminal the progress is whole lines (no carriage returns)."""
    import json

    from napari_lesionlocator.cli import main

    shape = (12, 32, 32)
    arr = np.full(shape, -1000.0, np.float32)
    arr[:, 3:-3, 3:-3] = 40.0
    arr[4:8, 12:20, 12:20] = 150.0
    img = write_image(Image(arr, Geometry(shape, (2.0, 0.8, 0.8)), "ct"), tmp_path / "ct.nii.gz")
    (tmp_path / "ct.json").write_text(json.dumps({"1": {"point": [6, 16, 16]}, "2": {"point": [6, 5, 5]}}))
    with _umask(0o027):
        assert main(["segment", "-i", str(img), "-p", str(tmp_path / "ct.json"), "-t", "point",
                     "-o", str(tmp_path / "out")]) == 0
        assert main(["measure", "-i", str(img), "-l", str(tmp_path / "out" / "ct_lesions.nii.gz"),
                     "-o", str(tmp_path / "out" / "table")]) == 0
    err = capsys.readouterr().err
    written = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert len(written) >= 5, written
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: "0o640" for p in written}
    assert "\r" not in err
    assert any("segment" in line or "ct:" in line for line in err.splitlines())

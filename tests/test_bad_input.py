"""Bad input, table-driven: every case is (input, expected exit code, words in the message, files left).

Each row builds its inputs in a fresh folder, runs the ``lesionlocator`` command line in-process,
and checks three things: the exit code, that the message on stderr holds the expected words (and
none of the forbidden ones, e.g. "internal error"), and which files exist afterwards. "Files
left" compares the folder after the run with the folder before it: every new or changed file
must match one of the row's patterns, every pattern must match one, and no temp file
(``.*.tmp*``) may remain. Downloads go to a server on 127.0.0.1.

The README's "Bad input" table is generated from :data:`CASES` (classes and counts);
``test_readme_table_matches`` keeps the two in step.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_lesionlocator.cli import main
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.io.dicom import write_dicom_series
from napari_lesionlocator.io.images import read_label_map, write_image, write_label_map

pytestmark = pytest.mark.usefixtures("no_user_checkpoint")

README = Path(__file__).resolve().parents[1] / "README.md"
ALWAYS_FORBIDDEN = ("internal error", "Traceback")


# ------------------------------------------------------------------ inputs
SHAPE = (12, 32, 32)
SPACING = (2.0, 0.8, 0.75)


def _ct_array(shape=SHAPE) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    arr = np.full(shape, -1000.0, np.float32)
    arr[:, 3:-3, 3:-3] = 40.0
    c = np.array(shape) / 2
    arr[((zz - c[0]) / 3) ** 2 + ((yy - c[1]) / 5) ** 2 + ((xx - c[2]) / 5) ** 2 <= 1] = 140.0
    return arr


def ct(d: Path, name: str = "ct.nii.gz", shape=SHAPE, spacing=SPACING, origin=(0.0, 0.0, 0.0)) -> Path:
    return write_image(Image(_ct_array(shape), Geometry(shape, spacing, origin), "ct"), d / name)


def prompt(d: Path, data, name: str = "ct.json") -> Path:
    path = d / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


POINT = {"1": {"point": [6, 16, 16]}}


def seg(d: Path, *extra: str, prompts=POINT, kind="point") -> list[str]:
    """``segment`` on a fresh small CT with ``prompts``."""
    return ["segment", "-i", str(ct(d)), "-p", str(prompt(d, prompts)), "-t", kind, "-o", str(d / "out"), *extra]


def _sitk_file(d: Path, name: str, img) -> Path:
    sitk.WriteImage(img, str(d / name), useCompression=False)
    return d / name


def _int16_nifti(d: Path, name: str = "img.nii") -> bytearray:
    img = sitk.GetImageFromArray(np.round(_ct_array()).astype(np.int16))
    img.SetSpacing(SPACING[::-1])
    _sitk_file(d, name, img)
    return bytearray((d / name).read_bytes())


def nifti_patched(d: Path, name: str, patch: Callable[[bytearray], None], gz: bool = False) -> Path:
    raw = _int16_nifti(d, "plain.nii")
    (d / "plain.nii").unlink()
    patch(raw)
    path = d / name
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return path


def _set_pixdim(axis: int, value: float):
    def patch(raw: bytearray) -> None:
        raw[76 + 4 * axis: 80 + 4 * axis] = struct.pack("<f", value)
    return patch


def _huge_header(raw: bytearray) -> None:
    raw[42:48] = struct.pack("<3h", 1500, 1500, 1500)
    del raw[352 + 4096:]  # keep about 4 kB of voxels, as the probed file had


def text_header_patched(d: Path, name: str, line_re: str, new: str) -> Path:
    img = sitk.GetImageFromArray(np.round(_ct_array()).astype(np.int16))
    img.SetSpacing(SPACING[::-1])
    path = _sitk_file(d, name, img)
    data = path.read_bytes()
    cut = data.index(b"\n\n") if name.endswith(".nrrd") else data.index(b"ElementDataFile")
    head = re.sub(line_re, new, data[:cut].decode("latin-1"), flags=re.M)
    path.write_bytes(head.encode("latin-1") + data[cut:])
    return path


def image_case(make: Callable[[Path], Path]) -> Callable:
    def build(d: Path) -> list[str]:
        return ["segment", "-i", str(make(d)), "-p", str(prompt(d, POINT, "img.json")), "-t", "point",
                "-o", str(d / "out")]
    return build


def _write(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


def _truncated_gz(d: Path) -> Path:
    path = ct(d, "img.nii.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _vector_image(d: Path) -> Path:
    img = sitk.Compose([sitk.GetImageFromArray(np.zeros(SHAPE, np.uint8))] * 3)
    return _sitk_file(d, "img.nii", img)


def _complex_image(d: Path) -> Path:
    arr = sitk.GetImageFromArray(np.zeros(SHAPE, np.float32))
    img = sitk.RealAndImaginaryToComplex(arr, arr)
    return _sitk_file(d, "img.mha", img)


def _four_d(d: Path) -> Path:
    return _sitk_file(d, "img.nii", sitk.GetImageFromArray(np.zeros((2, *SHAPE), np.int16), isVector=False))


def _two_d(d: Path) -> Path:
    return _sitk_file(d, "img.nii", sitk.GetImageFromArray(np.zeros(SHAPE[1:], np.int16)))


def _single_slice(d: Path) -> Path:
    return ct(d, "img.nii.gz", shape=(1, 32, 32))


# ------------------------------------------------------------------ DICOM
def _dicom_folder(d: Path, *, two_series=False, truncate_slice=None, zero_spacing=False) -> Path:
    folder = d / "dicom"
    img = Image(_ct_array(), Geometry(SHAPE, SPACING), "ct")
    write_dicom_series(img, folder, series_description="CT chest", series_number=1)
    if two_series:
        write_dicom_series(img, folder, series_description="CT chest lung kernel", series_number=2, prefix="lung")
    if truncate_slice is not None:
        victim = sorted(folder.glob("slice_*.dcm"))[truncate_slice]
        data = victim.read_bytes()
        victim.write_bytes(data[: int(len(data) * 0.8)])
    if zero_spacing:
        import pydicom

        for f in folder.glob("*.dcm"):
            ds = pydicom.dcmread(f)
            ds.PixelSpacing = [0.0, 0.0]
            ds.save_as(f)
    return folder


def dicom_case(**kw) -> Callable:
    def build(d: Path) -> list[str]:
        return ["segment", "-i", str(_dicom_folder(d, **kw)), "-p", str(prompt(d, POINT, "dicom.json")), "-t",
                "point", "-o", str(d / "out")]
    return build


def dicom_with_series(d: Path) -> list[str]:
    return dicom_case(two_series=True)(d) + ["--series", "1"]


# ------------------------------------------------------------------ outputs
def existing_outputs(d: Path) -> list[str]:
    argv = seg(d)
    assert main(argv + ["-q"]) == 0
    return argv


def output_is_a_file(d: Path) -> list[str]:
    argv = seg(d)
    (d / "out").write_text("a file, not a folder")
    return argv


def output_below_a_file(d: Path) -> list[str]:
    (d / "afile").write_text("x")
    argv = seg(d)
    argv[argv.index("-o") + 1] = str(d / "afile" / "out")
    return argv


@contextlib.contextmanager
def _mounted(folder: Path, size: str, ro: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    ok = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if ro else ""), "tmpfs", str(folder)],
        capture_output=True, timeout=20).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=20)


def read_only_output(d: Path, stack: contextlib.ExitStack) -> list[str]:
    out = d / "ro"
    if os.geteuid() == 0:
        if not stack.enter_context(_mounted(out, "64k", ro=True)):
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        out.mkdir()
        out.chmod(0o555)
        stack.callback(out.chmod, 0o755)
    argv = seg(d)
    argv[argv.index("-o") + 1] = str(out)
    return argv


def disk_full_keeps_earlier_outputs(d: Path, stack: contextlib.ExitStack) -> list[str]:
    """A real, small file system: the first run fits, then the disk is filled and --overwrite must
    fail with exit 1 and leave the first run's files as they were."""
    disk = d / "disk"
    if not stack.enter_context(_mounted(disk, "1m")):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    argv = seg(d)
    argv[argv.index("-o") + 1] = str(disk)
    assert main(argv + ["-q"]) == 0
    free = shutil.disk_usage(disk).free
    with open(disk / "filler.bin", "wb") as fh, contextlib.suppress(OSError):  # fill it to the last block
        fh.write(b"\0" * free)
    return argv + ["--overwrite"]


def _truncating_writer(monkeypatch) -> None:
    real = sitk.WriteImage

    def write(img, path, *args, **kwargs):  # SimpleITK's NIfTI writer on a full disk: no error, short file
        real(img, path, *args, **kwargs)
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)

    monkeypatch.setattr(sitk, "WriteImage", write)


def silent_short_write(d: Path, monkeypatch) -> list[str]:
    argv = seg(d)
    _truncating_writer(monkeypatch)
    return argv


def _enospc(monkeypatch) -> None:
    from napari_lesionlocator.io import atomic

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)


def injected_enospc(d: Path, monkeypatch) -> list[str]:
    argv = seg(d)
    _enospc(monkeypatch)
    return argv


def continue_after_truncated_output(d: Path) -> list[str]:
    argv = seg(d)
    assert main(argv + ["-q"]) == 0
    f = d / "out" / "ct_lesion_1.nii.gz"
    f.write_bytes(f.read_bytes()[:40])  # a kill -9 or a full disk before the checks existed
    return argv + ["--continue_prediction"]


def continue_after_output_on_another_grid(d: Path) -> list[str]:
    argv = seg(d)
    assert main(argv + ["-q"]) == 0
    f = d / "out" / "ct_lesion_1.nii.gz"
    f.unlink()
    write_label_map(LabelMap(np.zeros((4, 5, 6), np.uint8), Geometry((4, 5, 6)), "x"), f)
    return argv + ["--continue_prediction"]


def continue_skips_valid_outputs(d: Path) -> list[str]:
    argv = seg(d)
    assert main(argv + ["-q"]) == 0
    return argv + ["--continue_prediction"]


def label_prompt_other_grid(d: Path) -> list[str]:
    lab = LabelMap(np.zeros((12, 30, 30), np.uint8), Geometry((12, 30, 30), SPACING), "ct")
    lab.array[5:8, 10:20, 10:20] = 1
    return ["segment", "-i", str(ct(d)), "-p", str(write_label_map(lab, d / "ct_labels.nii.gz")), "-t", "box",
            "-o", str(d / "out")]


def label_prompt_empty(d: Path) -> list[str]:
    lab = LabelMap(np.zeros(SHAPE, np.uint8), Geometry(SHAPE, SPACING), "ct")
    return ["segment", "-i", str(ct(d)), "-p", str(write_label_map(lab, d / "ct_labels.nii.gz")), "-t", "box",
            "-o", str(d / "out")]


def unmatched_folder(d: Path) -> list[str]:
    (d / "imgs").mkdir()
    (d / "prm").mkdir()
    ct(d / "imgs", "a.nii.gz")
    ct(d / "imgs", "b.nii.gz")
    prompt(d / "prm", POINT, "a.json")
    prompt(d / "prm", POINT, "c.json")
    return ["segment", "-i", str(d / "imgs"), "-p", str(d / "prm"), "-t", "point", "-o", str(d / "out")]


def measure_labels_other_grid(d: Path) -> list[str]:
    lab = LabelMap(np.zeros((12, 30, 30), np.uint8), Geometry((12, 30, 30), SPACING), "l")
    return ["measure", "-i", str(ct(d)), "-l", str(write_label_map(lab, d / "l.nii.gz")), "-o", str(d / "t" / "x")]


def measure_prefix_below_a_file(d: Path) -> list[str]:
    lab = LabelMap(np.zeros(SHAPE, np.uint8), Geometry(SHAPE, SPACING), "l")
    (d / "afile").write_text("x")
    return ["measure", "-i", str(ct(d)), "-l", str(write_label_map(lab, d / "l.nii.gz")),
            "-o", str(d / "afile" / "x")]


def track_followup_huge_header(d: Path) -> list[str]:
    huge = nifti_patched(d, "fu.nii.gz", _huge_header, gz=True)
    return ["track", "-bl", str(ct(d)), "-fu", str(huge), "-p", str(prompt(d, POINT)), "-t", "point",
            "-o", str(d / "out")]


# ------------------------------------------------------------------ checkpoints (torch)
def _ckpt_copy(d: Path, ctx) -> Path:
    root = d / "ckpt"
    shutil.copytree(ctx.checkpoint, root, symlinks=True)
    return root


def ckpt_case(mutate: Callable[[Path], None]) -> Callable:
    def build(d: Path, ctx) -> list[str]:
        root = _ckpt_copy(d, ctx)
        mutate(root / "LesionLocatorSeg" / "point_optimized")
        return seg(d, "--engine", "lesionlocator", "-m", str(root), "-f", "0", "--disable_tta", "-device", "cpu")
    return build


def _random_bytes(part: Path) -> None:
    (part / "fold_0" / "checkpoint_final.pth").write_bytes(np.random.default_rng(0).bytes(20_000))


def _truncated_torch_zip(part: Path) -> None:
    f = part / "fold_0" / "checkpoint_final.pth"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_pickle(part: Path) -> None:
    import torch

    marker = part.parents[2] / "PWNED"
    torch.save({"trainer_name": _Evil(str(marker))}, part / "fold_0" / "checkpoint_final.pth")


def _plans_without_architecture(part: Path) -> None:
    plans = json.loads((part / "plans.json").read_text())
    for conf in plans["configurations"].values():
        conf.pop("architecture", None)
    (part / "plans.json").write_text(json.dumps(plans))


def _no_folds(part: Path) -> None:
    shutil.rmtree(part / "fold_0")


# ------------------------------------------------------------------ archives (127.0.0.1)
def _zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in entries:
            if isinstance(payload, tuple):  # ("link", target)
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, payload[1])
            else:
                zf.writestr(name, payload)
    return buf.getvalue()


def _tar(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, payload in entries:
            info = tarfile.TarInfo(name)
            if isinstance(payload, tuple):
                info.type = {"link": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                             "dev": tarfile.CHRTYPE}[payload[0]]
                info.linkname = payload[1]
                tf.addfile(info)
            else:
                data = payload.encode() if isinstance(payload, str) else payload
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


CK = "LesionLocatorCheckpoint"
GOOD_ZIP = _zip([(f"{CK}/LesionLocatorSeg/point_optimized/plans.json", "{}"),
                 (f"{CK}/LesionLocatorTrack/plans.json", "{}")])
CHAIN = [("p", ".."), ("q", "p/.."), ("r", "q/.."), ("s", "r/..")]
ARCHIVES = {
    "/good.zip": GOOD_ZIP,
    "/slip.zip": _zip([(f"{CK}/LesionLocatorSeg/plans.json", "{}"), ("../../escaped.txt", "x")]),
    "/abs.zip": _zip([(f"{CK}/LesionLocatorSeg/plans.json", "{}"), ("/tmp/abs_escaped.txt", "x")]),
    "/chain.zip": _zip([(f"{CK}/LesionLocatorSeg/plans.json", "{}")]
                       + [(f"{CK}/{n}", ("link", t)) for n, t in CHAIN] + [(f"{CK}/s/marker.txt", "outside")]),
    "/chain.tar.gz": _tar([(f"{CK}/LesionLocatorSeg/plans.json", "{}")]
                          + [(f"{CK}/{n}", ("link", t)) for n, t in CHAIN] + [(f"{CK}/s/marker.txt", "outside")]),
    "/through.tar.gz": _tar([(f"{CK}/LesionLocatorSeg/plans.json", "{}"), (f"{CK}/l", ("link", "LesionLocatorSeg")),
                             (f"{CK}/l/marker.txt", "through a link")]),
    "/abslink.tar.gz": _tar([(f"{CK}/LesionLocatorSeg/plans.json", "{}"), (f"{CK}/l", ("link", "/etc"))]),
    "/hard.tar.gz": _tar([(f"{CK}/LesionLocatorSeg/plans.json", "{}"), (f"{CK}/h", ("hard", "/etc/passwd"))]),
    "/fifo.tar.gz": _tar([(f"{CK}/LesionLocatorSeg/plans.json", "{}"), (f"{CK}/f", ("fifo", ""))]),
    "/notanarchive.zip": b"<html>Zenodo is down</html>",
    "/other.zip": _zip([("something/else.txt", "x")]),
}


class _Server:
    def __init__(self) -> None:
        self.cut: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                data = ARCHIVES.get(self.path.split("?")[0])
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng else 0
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut is not None:
                    body, server.cut = body[: server.cut], None
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


def download(path: str, *extra: str) -> Callable:
    def build(d: Path, ctx) -> list[str]:
        return ["download-weights", "--url", ctx.server.url(path), "--dest", str(d / "dest"), *extra]
    return build


def interrupted_download(d: Path, ctx) -> list[str]:
    ctx.server.cut = 100
    return download("/good.zip", "--sha256", hashlib.sha256(GOOD_ZIP).hexdigest())(d, ctx)


def bad_cached_archive(d: Path, ctx) -> list[str]:
    cached = d / "dest" / "downloads" / "good.zip"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(GOOD_ZIP[:50])
    return download("/good.zip", "--md5", hashlib.md5(GOOD_ZIP).hexdigest())(d, ctx)


def dest_is_a_file(d: Path, ctx) -> list[str]:
    (d / "dest").write_text("x")
    return download("/good.zip")(d, ctx)


# ------------------------------------------------------------------ more rows: tracking, measuring, interrupts
def track(d: Path, *extra: str, followups=("fu.nii.gz",), prompts=None, kind="point") -> list[str]:
    fus = [str(ct(d, name) if name.endswith(".nii.gz") and not name.startswith("missing") else d / name)
           for name in followups]
    prm = prompts if prompts is not None else [str(prompt(d, POINT))]
    return ["track", "-bl", str(ct(d)), "-fu", *fus, "-p", *prm, "-t", kind, "-o", str(d / "out"), *extra]


def _mask_file(d: Path, name: str, fill: bool) -> str:
    lab = LabelMap(np.zeros(SHAPE, np.uint8), Geometry(SHAPE, SPACING), "m")
    if fill:
        lab.array[5:8, 14:18, 14:18] = 1
    return str(write_label_map(lab, d / name))


def track_prev_mask_empty(d: Path) -> list[str]:
    return track(d, prompts=[_mask_file(d, "m.nii.gz", False)], kind="prev_mask")


def track_two_prompt_files(d: Path) -> list[str]:
    return track(d, prompts=[str(prompt(d, POINT)), str(prompt(d, POINT, "b.json"))])


def label_map_fractional(d: Path) -> list[str]:
    img = sitk.GetImageFromArray(np.full(SHAPE, 0.5, np.float32))
    img.SetSpacing(SPACING[::-1])
    return ["segment", "-i", str(ct(d)), "-p", str(_sitk_file(d, "ct_labels.nii", img)), "-t", "box",
            "-o", str(d / "out")]


def label_map_negative(d: Path) -> list[str]:
    img = sitk.GetImageFromArray(np.full(SHAPE, -2, np.int16))
    img.SetSpacing(SPACING[::-1])
    return ["segment", "-i", str(ct(d)), "-p", str(_sitk_file(d, "ct_labels.nii", img)), "-t", "box",
            "-o", str(d / "out")]


def measure(d: Path, *extra: str, n_labels: int = 1) -> list[str]:
    labs = [_mask_file(d, f"l{k}.nii.gz", True) for k in range(n_labels)]
    return ["measure", "-i", str(ct(d)), "-l", *labs, "-o", str(d / "t" / "x"), *extra]


def interrupted_write(d: Path, monkeypatch) -> list[str]:
    argv = seg(d)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sitk, "WriteImage", ctrl_c)
    return argv


def _empty_file(name: str) -> Callable[[Path], None]:
    def mutate(part: Path) -> None:
        (part / name).write_bytes(b"")
    return mutate


def _remove(name: str) -> Callable[[Path], None]:
    def mutate(part: Path) -> None:
        (part / name).unlink()
    return mutate


def _plans_not_json(part: Path) -> None:
    (part / "plans.json").write_text("{configurations: oops")



# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Case:
    id: str
    klass: str
    build: Callable
    code: int
    words: tuple[str, ...]
    left: tuple[str, ...] = ()  # patterns (relative to the case folder) for new/changed files afterwards
    forbidden: tuple[str, ...] = ()
    needs: tuple[str, ...] = field(default=())  # "torch", "server", "monkeypatch", "stack", "env:K=V"


def C(*args, **kw) -> Case:
    return Case(*args, **kw)


NIFTI = "image files"
HDR = "image headers (size, spacing)"
DCM = "DICOM folders"
PRM = "prompts"
OUT = "outputs and disk"
CKP = "checkpoints"
ARC = "archives and downloads"
USE = "usage"

OUTS = ("out/ct_lesion_1.nii.gz", "out/ct_lesions.nii.gz", "out/ct_summary.json")

CASES: list[Case] = [
    # --- image files
    C("missing-image", NIFTI, lambda d: ["segment", "-i", str(d / "none.nii.gz"), "-p", str(prompt(d, POINT)),
                                         "-t", "point", "-o", str(d / "out")], 2, ("no such",)),
    C("empty-file", NIFTI, image_case(lambda d: _write(d, "img.nii.gz", b"")), 2, ("empty (0 bytes)",)),
    C("text-named-nii", NIFTI, image_case(lambda d: _write(d, "img.nii", b"hello, not an image\n" * 30)), 2,
      ("img.nii",)),
    C("truncated-gzip", NIFTI, image_case(_truncated_gz), 2, ("truncated",)),
    C("corrupt-gzip", NIFTI, image_case(lambda d: _write(d, "img.nii.gz", b"\x1f\x8b\x08\x00" + b"\x07" * 300)), 2,
      ("img.nii.gz",)),
    C("2d-image", NIFTI, image_case(_two_d), 2, ("2D",)),
    C("4d-image", NIFTI, image_case(_four_d), 2, ("4D",)),
    C("rgb-image", NIFTI, image_case(_vector_image), 2, ("3 values per voxel",)),
    C("complex-image", NIFTI, image_case(_complex_image), 2, ("img.mha",)),
    C("single-slice", NIFTI, image_case(_single_slice), 2, ("single slice",)),
    C("folder-without-images", NIFTI, lambda d: ["segment", "-i", str((d / "empty").mkdir() or d / "empty"),
                                                 "-p", str(prompt(d, POINT)), "-t", "point", "-o", str(d / "out")],
      2, ("neither image files",)),
    # --- headers
    C("huge-declared-header", HDR, image_case(lambda d: nifti_patched(d, "img.nii.gz", _huge_header, gz=True)), 2,
      ("1500x1500x1500", "6.8 GB", "holds only", "nothing was read")),
    C("huge-declared-header-plain", HDR, image_case(lambda d: nifti_patched(d, "img.nii", _huge_header)), 2,
      ("1500x1500x1500", "holds only")),
    C("huge-declared-header-nrrd", HDR, image_case(lambda d: text_header_patched(
        d, "img.nrrd", r"^sizes: .*$", "sizes: 1500 1500 1500")), 2, ("1500x1500x1500", "holds only")),
    C("huge-declared-header-mha", HDR, image_case(lambda d: text_header_patched(
        d, "img.mha", r"^DimSize = .*$", "DimSize = 1500 1500 1500")), 2, ("1500x1500x1500", "holds only")),
    C("huge-header-as-follow-up", HDR, track_followup_huge_header, 2, ("fu.nii.gz", "1500x1500x1500")),
    C("over-memory-bound", HDR, lambda d: seg(d), 2, ("needs about", "only 100.0 kB is available", "Crop"),
      needs=("env:LESIONLOCATOR_MEMORY_LIMIT=100000",)),
    C("nifti-spacing-0", HDR, image_case(lambda d: nifti_patched(d, "img.nii", _set_pixdim(1, 0.0))), 2,
      ("spacing", "(0, ", "positive")),
    C("nifti-spacing-nan", HDR, image_case(lambda d: nifti_patched(d, "img.nii.gz", _set_pixdim(2, float("nan")),
                                                                   gz=True)), 2, ("spacing", "nan")),
    C("nifti-spacing-inf", HDR, image_case(lambda d: nifti_patched(d, "img.nii", _set_pixdim(3, float("inf")))), 2,
      ("spacing", "inf")),
    C("nrrd-spacing-0", HDR, image_case(lambda d: text_header_patched(
        d, "img.nrrd", r"^space directions:.*$", "space directions: (0,0,0) (0,0.8,0) (0,0,2)")), 2, ("spacing",)),
    C("mha-spacing-0", HDR, image_case(lambda d: text_header_patched(
        d, "img.mha", r"^ElementSpacing = .*$", "ElementSpacing = 0 0.8 2")), 2, ("spacing",)),
    C("mha-spacing-nan", HDR, image_case(lambda d: text_header_patched(
        d, "img.mha", r"^ElementSpacing = .*$", "ElementSpacing = nan 0.8 2")), 2, ("spacing",)),
    # --- DICOM
    C("dicom-two-series", DCM, dicom_case(two_series=True), 2, ("holds 2 volumes", "--series", "CT chest lung")),
    C("dicom-two-series-chosen", DCM, dicom_with_series, 0, (), left=("out/*_lesion_1.nii.gz", "out/*_lesions.nii.gz",
                                                                      "out/*_summary.json")),
    C("dicom-truncated-slice", DCM, dicom_case(truncate_slice=4), 2, ("slice_0004.dcm", "truncated")),
    C("dicom-zero-pixel-spacing", DCM, dicom_case(zero_spacing=True), 2, ("spacing",)),
    # --- prompts
    C("prompt-missing", PRM, lambda d: ["segment", "-i", str(ct(d)), "-p", str(d / "none.json"), "-t", "point",
                                        "-o", str(d / "out")], 2, ("no such prompt",)),
    C("prompt-not-json", PRM, lambda d: seg(d, prompts="{not json"), 2, ("not valid JSON",)),
    C("prompt-list-not-object", PRM, lambda d: seg(d, prompts=[1, 2]), 2, ("expected an object",)),
    C("prompt-empty-object", PRM, lambda d: seg(d, prompts={}), 2, ("holds no lesion",)),
    C("point-outside", PRM, lambda d: seg(d, prompts={"1": {"point": [50, 1, 1]}}), 2, ("outside the volume",)),
    C("point-negative", PRM, lambda d: seg(d, prompts={"1": {"point": [-1, 1, 1]}}), 2, ("outside the volume",)),
    C("point-nan", PRM, lambda d: seg(d, prompts='{"1": {"point": [NaN, 1, 1]}}'), 2, ("non-numeric",)),
    C("point-as-string", PRM, lambda d: seg(d, prompts={"1": {"point": "123"}}), 2, ("must be a list",)),
    C("point-two-coords", PRM, lambda d: seg(d, prompts={"1": {"point": [1, 2]}}), 2, ("3 coordinates",)),
    C("point-text-coords", PRM, lambda d: seg(d, prompts={"1": {"point": ["a", 1, 2]}}), 2, ("non-numeric",)),
    C("box-empty", PRM, lambda d: seg(d, prompts={"1": {"box": [3, 3, 1, 5, 1, 5]}}, kind="box"), 2,
      ("empty along z",)),
    C("box-outside", PRM, lambda d: seg(d, prompts={"1": {"box": [100, 110, 1, 5, 1, 5]}}, kind="box"), 2,
      ("entirely outside",)),
    C("wrong-prompt-type", PRM, lambda d: seg(d, kind="box"), 2, ("are point prompts", "-t box")),
    C("no-point-or-box", PRM, lambda d: seg(d, prompts={"1": {"circle": [1, 2, 3]}}), 2, ("needs a 'point' or",)),
    C("id-not-integer", PRM, lambda d: seg(d, prompts={"one": {"point": [6, 16, 16]}}), 2, ("not a lesion id",)),
    C("id-zero", PRM, lambda d: seg(d, prompts={"0": {"point": [6, 16, 16]}}), 2, ("1 to 4294967295",)),
    C("id-negative", PRM, lambda d: seg(d, prompts={"-3": {"point": [6, 16, 16]}}), 2, ("1 to 4294967295",)),
    C("id-2^32", PRM, lambda d: seg(d, prompts={str(2**32): {"point": [6, 16, 16]}}), 2,
      ("4294967296", "out of range", "1 to 4294967295")),
    C("id-30-digits", PRM, lambda d: seg(d, prompts={"1" * 30: {"point": [6, 16, 16]}}), 2,
      ("(30 digits)", "out of range", "1 to 4294967295")),
    C("id-duplicate", PRM, lambda d: seg(d, prompts={"1": {"point": [1, 2, 3]}, "01": {"point": [4, 5, 6]}}), 2,
      ("both name lesion 1",)),
    C("label-prompt-other-grid", PRM, label_prompt_other_grid, 2, ("grid",)),
    C("label-prompt-empty", PRM, label_prompt_empty, 2, ("empty",)),
    C("measure-labels-other-grid", PRM, measure_labels_other_grid, 2, ("grid",)),
    # --- outputs and disk
    C("outputs-exist", OUT, existing_outputs, 3, ("already exist", "--overwrite")),
    C("continue-skips-valid", OUT, continue_skips_valid_outputs, 0, ()),
    C("continue-redoes-truncated", OUT, continue_after_truncated_output, 0, (), left=OUTS),
    C("continue-redoes-other-grid", OUT, continue_after_output_on_another_grid, 0, (), left=OUTS),
    C("output-is-a-file", OUT, output_is_a_file, 2, ("is a file",)),
    C("output-below-a-file", OUT, output_below_a_file, 2, ("is a file",)),
    C("measure-prefix-below-a-file", OUT, measure_prefix_below_a_file, 2, ("is a file",)),
    C("output-read-only", OUT, read_only_output, 2, ("cannot write into",), needs=("stack",)),
    C("disk-full-real", OUT, disk_full_keeps_earlier_outputs, 1, ("could not write",), needs=("stack",),
      left=("disk/filler.bin",)),
    C("disk-full-silent-short-write", OUT, silent_short_write, 1, ("could not write", "nothing was saved"),
      needs=("monkeypatch",), left=("out/ct.partial/*",)),  # the run's progress note, for a resume
    C("disk-full-enospc", OUT, injected_enospc, 1, ("no space left",), needs=("monkeypatch",)),
    # --- checkpoints
    C("checkpoint-random-bytes", CKP, ckpt_case(_random_bytes), 2, ("is not a checkpoint", "neither"),
      forbidden=("allow-unsafe",), needs=("torch",)),
    C("checkpoint-truncated-zip", CKP, ckpt_case(_truncated_torch_zip), 2, ("checkpoint_final.pth",),
      forbidden=("allow-unsafe",), needs=("torch",)),
    C("checkpoint-malicious-pickle", CKP, ckpt_case(_malicious_pickle), 2, ("refuses", "posix.system"),
      needs=("torch",)),
    C("plans-without-architecture", CKP, ckpt_case(_plans_without_architecture), 2, ("architecture", "plans.json"),
      needs=("torch",)),
    C("checkpoint-without-folds", CKP, ckpt_case(_no_folds), 2, ("no fold",), needs=("torch",)),
    C("over-engine-memory-bound", HDR, ckpt_case(lambda part: None), 2,
      ("lesionlocator engine needs about", "only 160.0 kB is available", "Crop"),
      needs=("torch", "env:LESIONLOCATOR_MEMORY_LIMIT=160000")),
    C("checkpoint-folder-missing", CKP, lambda d: seg(d, "--engine", "lesionlocator", "-m", str(d / "none")), 2,
      ("does not exist",)),
    # --- archives and downloads
    C("zip-slip", ARC, download("/slip.zip"), 1, ("climbs out",), needs=("server",)),
    C("zip-absolute-path", ARC, download("/abs.zip"), 1, ("absolute path",), needs=("server",)),
    C("zip-symlink-chain", ARC, download("/chain.zip"), 1, ("refusing symbolic link", "deleted"), needs=("server",)),
    C("tar-symlink-chain", ARC, download("/chain.tar.gz"), 1, ("resolves outside", "deleted"), needs=("server",)),
    C("tar-write-through-link", ARC, download("/through.tar.gz"), 1, ("written through",), needs=("server",)),
    C("tar-absolute-link", ARC, download("/abslink.tar.gz"), 1, ("absolute",), needs=("server",)),
    C("tar-hard-link", ARC, download("/hard.tar.gz"), 1, ("hard link",), needs=("server",)),
    C("tar-fifo", ARC, download("/fifo.tar.gz"), 1, ("special file",), needs=("server",)),
    C("not-an-archive", ARC, download("/notanarchive.zip"), 1, ("neither a zip nor a tar",), needs=("server",)),
    C("archive-without-checkpoint", ARC, download("/other.zip"), 2, ("does not hold a LesionLocator",),
      needs=("server",)),
    C("checksum-mismatch", ARC, download("/good.zip", "--sha256", "ab" * 32), 1, ("checksum mismatch",),
      needs=("server",)),
    C("http-404", ARC, download("/none.zip"), 1, ("HTTP 404",), needs=("server",)),
    C("interrupted-download", ARC, interrupted_download, 1, ("run the same command again to resume",),
      left=("dest/downloads/good.zip.part",), needs=("server",)),
    C("bad-cached-archive", ARC, bad_cached_archive, 0, ("not usable", "downloading afresh"),
      left=(f"dest/{CK}/*/*/plans.json", f"dest/{CK}/*/plans.json"), needs=("server",)),
    C("url-without-checksum", ARC, download("/good.zip", "-q"), 0, ("NOT be verified",),
      left=(f"dest/{CK}/*/*/plans.json", f"dest/{CK}/*/plans.json"), needs=("server",)),
    C("dest-is-a-file", ARC, dest_is_a_file, 2, ("is a file",), needs=("server",)),
    # --- usage
    C("unmatched-names", USE, unmatched_folder, 2, ("cannot pair", "b.nii.gz", "c.json")),
    C("unknown-series", USE, lambda d: dicom_case(two_series=True)(d) + ["--series", "MR brain"], 2,
      ("no volume 'MR brain'",)),
    # --- more rows of classes that already passed when probed
    C("prompt-binary-garbage", PRM, lambda d:
      ["segment", "-i", str(ct(d)), "-p", str(_write(d, "ct.json", bytes(range(256)) * 4)), "-t", "point",
       "-o", str(d / "out")], 2, ("not valid JSON",)),
    C("prompt-nested-too-deep", PRM, lambda d: seg(d, prompts="[" * 100_000 + "]" * 100_000), 2, ("ct.json",)),
    C("prompt-ids-with-gaps", PRM, lambda d: seg(d, prompts={"3": {"point": [6, 16, 16]},
                                                             "70000": {"point": [6, 10, 10]}}), 0, (),
      left=("out/ct_lesion_3.nii.gz", "out/ct_lesion_70000.nii.gz", "out/ct_lesions.nii.gz", "out/ct_summary.json")),
    C("label-prompt-fractional", PRM, label_map_fractional, 2, ("whole numbers",)),
    C("label-prompt-negative", PRM, label_map_negative, 2, ("negative",)),
    C("track-followup-missing", USE, lambda d: track(d, followups=("missing.nii.gz",)), 2, ("no such",)),
    C("track-prev-mask-empty", PRM, track_prev_mask_empty, 2, ("empty",)),
    C("track-two-prompt-files", USE, track_two_prompt_files, 2, ("one prompt file",)),
    C("track-followup-spacing-0", HDR, lambda d: ["track", "-bl", str(ct(d)), "-fu",
                                                  str(nifti_patched(d, "fu.nii", _set_pixdim(2, 0.0))), "-p",
                                                  str(prompt(d, POINT)), "-t", "point", "-o", str(d / "out")],
      2, ("fu.nii", "spacing")),
    C("measure-count-mismatch", USE, lambda d: measure(d, n_labels=2), 2, ("1 image(s) but 2 label map(s)",)),
    C("measure-dates-mismatch", USE, lambda d: measure(d, "--dates", "2020-01-01", "2020-02-02"), 2, ("--dates",)),
    C("measure-bad-target-id", USE, lambda d: measure(d, "--targets", "x"), 2, ("--targets",)),
    C("ctrl-c-while-writing", OUT, interrupted_write, 130, ("cancelled",), needs=("monkeypatch",),
      left=("out/ct.partial/*",)),
    C("checkpoint-empty-file", CKP, ckpt_case(_empty_file("fold_0/checkpoint_final.pth")), 2,
      ("checkpoint_final.pth",), forbidden=("allow-unsafe",), needs=("torch",)),
    C("checkpoint-plans-not-json", CKP, ckpt_case(_plans_not_json), 2, ("plans.json", "not valid JSON"),
      needs=("torch",)),
    C("checkpoint-without-dataset-json", CKP, ckpt_case(_remove("dataset.json")), 2, ("dataset.json",),
      needs=("torch",)),
]


# ------------------------------------------------------------------ running the table
def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                out[p.relative_to(folder).as_posix()] = hashlib.sha1(p.read_bytes()).hexdigest()
            except OSError:
                continue
    return out


@pytest.fixture(scope="module")
def server():
    srv = _Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("torch")
    try:
        import napari_lesionlocator.engines.lesionlocator.generate  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"needs torch and nnunetv2: {exc}")
    out = tmp_path_factory.mktemp("tinyckpt")
    assert main(["generate-checkpoint", str(out), "--tiny", "--parts", "point", "bbox", "-q"]) == 0
    return out / CK


@dataclass
class _Ctx:
    server: object = None
    checkpoint: Path | None = None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys, monkeypatch, request):
    d = tmp_path / f"c-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    ctx = _Ctx()
    extra: list = []
    for need in case.needs:
        if need == "torch":
            ctx.checkpoint = request.getfixturevalue("checkpoint")
            extra = [ctx]
        elif need == "server":
            ctx.server = request.getfixturevalue("server")
            extra = [ctx]
        elif need.startswith("env:"):
            key, _, value = need[4:].partition("=")
            monkeypatch.setenv(key, value)
    with contextlib.ExitStack() as stack:
        if "monkeypatch" in case.needs:
            argv = case.build(d, monkeypatch)
        elif "stack" in case.needs:
            argv = case.build(d, stack)
        else:
            argv = case.build(d, *extra)
        before = _snapshot(d)
        capsys.readouterr()
        code = main([str(a) for a in argv])
        _, err = capsys.readouterr()
        monkeypatch.undo()
        after = _snapshot(d)
        _check(case, d, code, err, before, after)  # inside: a mounted test disk is still there


def _check(case: Case, d: Path, code: int, err: str, before: dict, after: dict) -> None:
    assert code == case.code, f"exit {code}, expected {case.code}; stderr:\n{err}"
    for word in case.words:
        assert word.lower() in err.lower(), f"{word!r} not in the message:\n{err}"
    for word in (*ALWAYS_FORBIDDEN, *case.forbidden):
        assert word.lower() not in err.lower(), f"{word!r} in the message:\n{err}"
    changed = sorted(k for k, v in after.items() if before.get(k) != v)
    removed = sorted(k for k in before if k not in after)
    assert not [k for k in after if fnmatch.fnmatch(Path(k).name, ".*.tmp*")], after
    assert not removed or case.code == 0 or case.id in ("bad-cached-archive",), f"inputs removed: {removed}"
    unexpected = [k for k in changed if not any(fnmatch.fnmatch(k, pat) for pat in case.left)]
    assert not unexpected, f"files written or changed that should not be: {unexpected}"
    for pat in case.left:
        assert any(fnmatch.fnmatch(k, pat) for k in after), f"expected a file matching {pat}; have {sorted(after)}"
    _extra_checks(case, d, err)


def _extra_checks(case: Case, d: Path, err: str) -> None:
    if case.id == "checkpoint-malicious-pickle":
        assert not list(d.rglob("PWNED")), "the pickle's code ran"
    if case.id.startswith("continue-redoes"):
        lab = read_label_map(d / "out" / "ct_lesion_1.nii.gz")
        assert lab.array.shape == SHAPE and lab.array.any()
    if case.id == "disk-full-real":
        lab = read_label_map(d / "disk" / "ct_lesion_1.nii.gz")  # the first run's result, still whole
        assert lab.array.shape == SHAPE and lab.array.any()
    if case.id in ("zip-symlink-chain", "tar-symlink-chain", "tar-write-through-link"):
        assert not list(d.parent.rglob("marker.txt"))
    if case.id == "zip-slip":
        assert not list(d.parent.rglob("escaped.txt"))


# ------------------------------------------------------------------ the napari reader, same checks
@pytest.mark.parametrize(("make", "words"), [
    (lambda d: nifti_patched(d, "img.nii.gz", _huge_header, gz=True), ("1500x1500x1500", "holds only")),
    (lambda d: nifti_patched(d, "img.nii", _set_pixdim(1, 0.0)), ("spacing",)),
    (lambda d: text_header_patched(d, "img.nrrd", r"^space directions:.*$",
                                   "space directions: (0,0,0) (0,0.8,0) (0,0,2)"), ("spacing",)),
])
def test_napari_reader_refuses_with_the_same_message(tmp_path, make, words):
    """The reader claims the file (so napari does not fall back to a reader that takes 1 mm) and
    raises the message napari shows as a notification."""
    pytest.importorskip("napari")
    from napari_lesionlocator.core.errors import InputImageError
    from napari_lesionlocator.gui._reader import get_reader

    path = make(tmp_path)
    reader = get_reader(str(path))
    assert reader is not None
    with pytest.raises(InputImageError) as info:
        reader(str(path))
    for word in words:
        assert word in str(info.value)


def test_napari_reader_memory_bound(tmp_path, monkeypatch):
    pytest.importorskip("napari")
    from napari_lesionlocator.core.errors import ResourceLimitError
    from napari_lesionlocator.gui._reader import get_reader

    path = ct(tmp_path, "img.nii.gz")
    monkeypatch.setenv("LESIONLOCATOR_MEMORY_LIMIT", "100000")
    reader = get_reader(str(path))
    assert reader is not None
    with pytest.raises(ResourceLimitError, match="needs about .* only 100.0 kB is available"):
        reader(str(path))


# ------------------------------------------------------------------ README table
def readme_table() -> str:
    counts = Counter(c.klass for c in CASES)
    lines = ["| class | cases |", "|---|---|"]
    for klass in dict.fromkeys(c.klass for c in CASES):
        lines.append(f"| {klass} | {counts[klass]} |")
    lines.append(f"| **total** | **{len(CASES)}** |")
    return "\n".join(lines)


def test_readme_table_matches():
    text = README.read_text(encoding="utf-8")
    assert readme_table() in text, "README's bad-input table is stale; paste:\n" + readme_table()


if __name__ == "__main__":  # print the README table
    print(readme_table())
    sys.exit(0)


@pytest.mark.gui
@pytest.mark.skipif(not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")),
                    reason="needs a display (run under xvfb-run, as make test does)")
def test_napari_file_open_shows_the_refusal(tmp_path, make_napari_viewer):
    """File > Open on a forged header: napari gets our message (it shows reader errors as a
    notification) and no layer is added."""
    from napari.errors import ReaderPluginError

    from napari_lesionlocator.core.errors import InputImageError

    viewer = make_napari_viewer()
    path = nifti_patched(tmp_path, "img.nii.gz", _huge_header, gz=True)
    with pytest.raises((ReaderPluginError, InputImageError)) as info:
        viewer.open(str(path), plugin="napari-lesionlocator")
    text = f"{info.value} {info.value.__cause__}"
    assert "1500x1500x1500" in text and "holds only" in text
    assert len(viewer.layers) == 0

"""`lesionlocator download-weights` and `generate-checkpoint` end to end (local HTTP server, never the internet)."""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from napari_lesionlocator.cli import main


def _zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, payload in entries:
            zf.writestr(name, payload)
    return buf.getvalue()


GOOD = _zip([("LesionLocatorCheckpoint/LesionLocatorSeg/point_optimized/plans.json", "{}"),
             ("LesionLocatorCheckpoint/LesionLocatorSeg/point_optimized/fold_0/checkpoint_final.pth", b"w" * 300_000),
             ("LesionLocatorCheckpoint/LesionLocatorTrack/plans.json", "{}")])
EVIL = _zip([("LesionLocatorCheckpoint/LesionLocatorSeg/plans.json", "{}"), ("../../escaped.txt", "owned")])


@pytest.fixture
def server():
    state = {"files": {"/good.zip": GOOD, "/LesionLocatorCheckpoint.zip": EVIL}, "cut": None, "ranges": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            data = state["files"].get(self.path.split("?")[0])
            if data is None:
                self.send_error(404)
                return
            rng = self.headers.get("Range")
            state["ranges"].append(rng)
            start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng else 0
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if state["cut"] is not None:
                body, state["cut"] = body[: state["cut"]], None
                self.close_connection = True
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state["url"] = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_download_resume_checksum_and_reuse(server, tmp_path, capsys):
    sha = hashlib.sha256(GOOD).hexdigest()
    args = ["download-weights", "--url", server["url"]("/good.zip?download=1"), "--dest", tmp_path / "d",
            "--sha256", sha]
    server["cut"] = 100_000
    code, _, err = _run(capsys, *args)
    assert code == 1 and "run the same command again to resume" in err and "Traceback" not in err
    assert (tmp_path / "d" / "downloads" / "good.zip.part").stat().st_size == 100_000
    code, out, err = _run(capsys, *args)
    assert code == 0, err
    assert server["ranges"][-1] == "bytes=100000-"
    root = tmp_path / "d" / "LesionLocatorCheckpoint"
    assert out.strip() == str(root)
    assert (root / "LesionLocatorSeg" / "point_optimized" / "fold_0" / "checkpoint_final.pth").read_bytes() \
        == b"w" * 300_000
    assert "-m " + str(root) in err and "LESIONLOCATOR_CHECKPOINT" in err
    assert not (tmp_path / "d" / "downloads").exists()
    # Installed already: exit 0 without downloading again.
    n = len(server["ranges"])
    code, out, err = _run(capsys, *args)
    assert code == 0 and "already installed" in err and len(server["ranges"]) == n


def test_set_default_stores_the_checkpoint_in_the_user_config(server, tmp_path, capsys, monkeypatch):
    import json

    from napari_lesionlocator.engines.lesionlocator import config

    cfg = tmp_path / "cfg" / "config.json"
    monkeypatch.setattr(config, "config_file", lambda: cfg)
    code, out, err = _run(capsys, "download-weights", "--url", server["url"]("/good.zip"), "--dest", tmp_path / "d",
                          "--set-default", "-q")
    assert code == 0, err
    assert json.loads(cfg.read_text())["checkpoint"] == str((tmp_path / "d" / "LesionLocatorCheckpoint").resolve())
    assert out.strip() == str(tmp_path / "d" / "LesionLocatorCheckpoint")


def test_checksum_mismatch_exit_1_nothing_unpacked(server, tmp_path, capsys):
    code, _, err = _run(capsys, "download-weights", "--url", server["url"]("/good.zip"), "--dest", tmp_path,
                        "--sha256", "ab" * 32, "-q")
    assert code == 1 and "checksum mismatch" in err
    assert not (tmp_path / "LesionLocatorCheckpoint").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_zip_slip_refused_exit_1_nothing_left(server, tmp_path, capsys):
    dest = tmp_path / "a" / "b"
    code, _, err = _run(capsys, "download-weights", "--url", server["url"]("/LesionLocatorCheckpoint.zip"),
                        "--dest", dest, "-q")
    assert code == 1 and "climbs out" in err
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (dest / "LesionLocatorCheckpoint").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".extract")]


def test_http_404_exit_1(server, tmp_path, capsys):
    code, _, err = _run(capsys, "download-weights", "--url", server["url"]("/none.zip"), "--dest", tmp_path, "-q")
    assert code == 1 and "HTTP 404" in err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random checkpoint written by the CLI (segmentation parts only: the tracker embeds
    uniGradICON, 70 M parameters, seconds to build)."""
    pytest.importorskip("torch")
    try:
        import napari_lesionlocator.engines.lesionlocator.generate  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"generate-checkpoint needs torch/nnunetv2 and the generator module: {exc}")
    out = tmp_path_factory.mktemp("ckpt")
    code = main(["generate-checkpoint", str(out), "--tiny", "--parts", "point", "bbox", "-q"])
    assert code == 0
    return out


@pytest.mark.torch
def test_generate_checkpoint_tiny(tiny_checkpoint, capsys):
    root = tiny_checkpoint / "LesionLocatorCheckpoint"
    assert (root / "LesionLocatorSeg" / "point_optimized" / "fold_0" / "checkpoint_final.pth").is_file()
    assert (root / "LesionLocatorSeg" / "bbox_optimized" / "plans.json").is_file()
    code, _, err = _run(capsys, "generate-checkpoint", tiny_checkpoint, "--tiny")
    assert code == 3 and "--overwrite" in err
    code, _, err = _run(capsys, "generate-checkpoint", tiny_checkpoint, "--tiny", "--plans",
                        tiny_checkpoint / "none.json", "--overwrite")
    assert code == 2 and "plans file not found" in err
    assert (root / "LesionLocatorSeg" / "point_optimized" / "plans.json").is_file()  # refused before removing


@pytest.mark.torch
def test_segment_with_the_lesionlocator_engine(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """-m selects the LesionLocator engine; its masks are written in the source geometry (random weights:
    the mask content is meaningless, the plumbing is what is checked)."""
    import json

    import numpy as np
    import SimpleITK as sitk

    from napari_lesionlocator.core.geometry import Geometry
    from napari_lesionlocator.core.image import Image

    monkeypatch.delenv("LESIONLOCATOR_CHECKPOINT", raising=False)
    geom = Geometry((20, 40, 36), spacing=(2.0, 0.9, 0.8), origin=(-30.0, 12.5, -7.25),
                    direction=(1.0, 0, 0, 0, 0.96, -0.28, 0, 0.28, 0.96))
    arr = np.random.default_rng(0).normal(0, 300, geom.shape).astype(np.float32) - 200
    from napari_lesionlocator.io.images import write_image

    src = write_image(Image(np.round(arr), geom, name="ll"), tmp_path / "ll.nii.gz")
    (tmp_path / "ll.json").write_text(json.dumps({"3": {"point": [10, 20, 18]}}))
    code, _, err = _run(capsys, "segment", "-i", src, "-p", tmp_path / "ll.json", "-t", "point", "-o", tmp_path / "o",
                        "-m", tiny_checkpoint / "LesionLocatorCheckpoint", "-device", "cpu", "--disable_tta",
                        "--threads", "1")
    assert code == 0, err
    assert "engine: lesionlocator" in err and "TTA off" in err
    assert "warning: LesionLocator on the CPU is slow" in err
    out = sitk.ReadImage(str(tmp_path / "o" / "ll_lesion_3.nii.gz"))
    ref = sitk.ReadImage(str(src))
    assert out.GetSize() == ref.GetSize() and out.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(out.GetDirection(), ref.GetDirection(), atol=1e-6)
    assert np.allclose(out.GetOrigin(), ref.GetOrigin(), atol=1e-5)
    assert np.allclose(out.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    assert (tmp_path / "o" / "ll_lesions.nii.gz").exists()


# ------------------------------------------------------------------ probing report (issue 16)
def _link_chain_zip() -> bytes:
    import stat

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("LesionLocatorCheckpoint/LesionLocatorSeg/plans.json", "{}")
        for name, target in (("p", ".."), ("q", "p/.."), ("r", "q/.."), ("s", "r/..")):
            info = zipfile.ZipInfo(f"LesionLocatorCheckpoint/{name}")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
        zf.writestr("LesionLocatorCheckpoint/s/marker.txt", "outside")
    return buf.getvalue()


def _link_chain_tar() -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        def add(name, target=None, data=b"x"):
            info = tarfile.TarInfo(f"LesionLocatorCheckpoint/{name}")
            if target is None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
        add("LesionLocatorSeg/plans.json")
        for name, target in (("p", ".."), ("q", "p/.."), ("r", "q/.."), ("s", "r/..")):
            add(name, target)
        add("s/marker.txt", data=b"outside")
    return buf.getvalue()


@pytest.mark.parametrize(("path", "payload", "words"), [
    ("/chain.zip", _link_chain_zip(), "refusing symbolic link"),
    ("/chain.tar.gz", _link_chain_tar(), "resolves outside the archive"),
])
def test_symlink_chain_archive_is_refused_through_the_cli(server, tmp_path, capsys, path, payload, words):
    server["files"][path] = payload
    dest = tmp_path / "a" / "b" / "c"
    code, out, err = _run(capsys, "download-weights", "--url", server["url"](path), "--dest", dest)
    assert code == 1, err
    assert words in err and "deleted" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("marker.txt"))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert out == ""


def test_url_without_checksum_says_nothing_was_verified_even_quiet(server, tmp_path, capsys):
    code, out, err = _run(capsys, "download-weights", "--url", server["url"]("/good.zip"), "--dest", tmp_path / "d",
                          "-q")
    assert code == 0, err
    assert "NOT be verified" in err and "--sha256" in err


def test_bad_archive_in_downloads_is_discarded_with_and_without_overwrite(server, tmp_path, capsys):
    dest = tmp_path / "d"
    cached = dest / "downloads" / "good.zip"
    for extra in ([], ["--overwrite"]):
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(b"PK\x03\x04 a broken archive from an earlier run")
        code, out, err = _run(capsys, "download-weights", "--url", server["url"]("/good.zip"), "--dest", dest,
                              "--sha256", hashlib.sha256(GOOD).hexdigest(), *extra)
        assert code == 0, err
        assert ("discarding the earlier download" in err) if extra else ("not usable" in err and "deleted" in err)
        assert (dest / "LesionLocatorCheckpoint" / "LesionLocatorTrack" / "plans.json").exists()
        assert not (dest / "downloads").exists()
        import shutil

        shutil.rmtree(dest / "LesionLocatorCheckpoint")


def test_dest_that_is_a_file_is_refused_before_downloading(server, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    n = len(server["ranges"])
    code, _, err = _run(capsys, "download-weights", "--url", server["url"]("/good.zip"), "--dest", afile)
    assert code == 2 and "is a file" in err
    assert len(server["ranges"]) == n and afile.read_text() == "keep me"

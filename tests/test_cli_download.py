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


@pytest.mark.torch
def test_generate_checkpoint_tiny(tmp_path, capsys):
    try:
        import napari_lesionlocator.engines.lesionlocator.generate  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"generate-checkpoint needs torch/nnunetv2 and the generator module: {exc}")
    # The segmentation parts only: the tracker embeds uniGradICON (70 M parameters, seconds to build).
    code, out, err = _run(capsys, "generate-checkpoint", tmp_path, "--tiny", "--parts", "point", "bbox", "-q")
    assert code == 0, err
    root = tmp_path / "LesionLocatorCheckpoint"
    assert out.strip() == str(root)
    assert (root / "LesionLocatorSeg" / "point_optimized" / "fold_0" / "checkpoint_final.pth").is_file()
    assert (root / "LesionLocatorSeg" / "bbox_optimized" / "plans.json").is_file()
    code, _, err = _run(capsys, "generate-checkpoint", tmp_path, "--tiny")
    assert code == 3 and "--overwrite" in err
    code, _, err = _run(capsys, "generate-checkpoint", tmp_path, "--tiny", "--plans", tmp_path / "none.json",
                        "--overwrite")
    assert code == 2 and "plans file not found" in err
    assert root.exists()  # the bad --plans was refused before anything was removed

"""Checkpoint download end to end against an HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from napari_lesionlocator.core.errors import CheckpointError, OutputExistsError
from napari_lesionlocator.io.archive import ArchiveError, archive_members, safe_extract
from napari_lesionlocator.io.download import (
    DownloadError,
    archive_name_from_url,
    download_file,
    download_weights,
    zenodo_md5,
)


def _checkpoint_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for sub in ("LesionLocatorSeg/point_optimized", "LesionLocatorSeg/bbox_optimized", "LesionLocatorTrack"):
            zf.writestr(f"LesionLocatorCheckpoint/{sub}/plans.json", json.dumps({"sub": sub}))
            zf.writestr(f"LesionLocatorCheckpoint/{sub}/fold_0/checkpoint_final.pth", bytes(range(256)) * 2000)
    return buf.getvalue()


class _Server:
    """Tiny HTTP server with Range support and switches to misbehave."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_after: int | None = None  # close the connection after this many body bytes (once)
        self.ignore_range = False
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append({"path": path, "range": self.headers.get("Range")})
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                start = 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    server.cut_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_archive_name_from_url():
    assert archive_name_from_url("https://zenodo.org/records/1/files/LesionLocatorCheckpoint.zip?download=1") \
        == "LesionLocatorCheckpoint.zip"


def test_download_weights_end_to_end_with_md5_from_api(server, tmp_path):
    data = _checkpoint_zip()
    server.files["/files/LesionLocatorCheckpoint.zip"] = data
    md5 = hashlib.md5(data).hexdigest()
    server.files["/api/records/1"] = json.dumps(
        {"files": [{"key": "LesionLocatorCheckpoint.zip", "checksum": f"md5:{md5}"}]}).encode()
    assert zenodo_md5(server.url("/api/records/1"), "LesionLocatorCheckpoint.zip") == md5
    logs: list[str] = []
    root = download_weights(server.url("/files/LesionLocatorCheckpoint.zip?download=1"), tmp_path / "data",
                            api_url=server.url("/api/records/1"), progress=False, log=logs.append)
    assert root == tmp_path / "data" / "LesionLocatorCheckpoint"
    pth = root / "LesionLocatorSeg" / "point_optimized" / "fold_0" / "checkpoint_final.pth"
    assert pth.read_bytes() == bytes(range(256)) * 2000
    assert any(md5 in line for line in logs)
    # The archive is removed after unpacking, no staging folder is left.
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["LesionLocatorCheckpoint"]
    # A second call finds it and does not download again.
    n = len(server.requests)
    assert download_weights(server.url("/files/LesionLocatorCheckpoint.zip"), tmp_path / "data",
                            progress=False, log=logs.append) == root
    assert len(server.requests) == n


def test_interrupted_download_resumes_with_range(server, tmp_path):
    data = _checkpoint_zip()
    server.files["/c.zip"] = data
    sha = hashlib.sha256(data).hexdigest()
    server.cut_after = len(data) // 3
    dest = tmp_path / "c.zip"
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        download_file(server.url("/c.zip"), dest, sha256=sha, progress=False)
    part = tmp_path / "c.zip.part"
    assert part.stat().st_size == len(data) // 3 and not dest.exists()
    download_file(server.url("/c.zip"), dest, sha256=sha, progress=False)
    assert dest.read_bytes() == data and not part.exists()
    assert server.requests[-1]["range"] == f"bytes={len(data) // 3}-"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = b"abcdefgh" * 1000
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(b"XXXX")  # garbage prefix a resume would keep
    server.ignore_range = True
    download_file(server.url("/f.bin"), tmp_path / "f.bin", sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_complete_part_file_gets_416_and_is_verified(server, tmp_path):
    data = b"0123456789" * 100
    server.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    download_file(server.url("/f.bin"), tmp_path / "f.bin", md5=hashlib.md5(data).hexdigest(), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_checksum_mismatch_deletes_the_download_and_unpacks_nothing(server, tmp_path):
    server.files["/LesionLocatorCheckpoint.zip"] = _checkpoint_zip()
    with pytest.raises(DownloadError, match="sha256 checksum mismatch"):
        download_weights(server.url("/LesionLocatorCheckpoint.zip"), tmp_path / "d", sha256="0" * 64,
                         progress=False, log=lambda s: None)
    leftovers = [p for p in (tmp_path / "d").rglob("*") if p.is_file()]
    assert leftovers == []


def test_http_error_and_unreachable_server(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.url("/missing.zip"), tmp_path / "m.zip", progress=False)
    with pytest.raises(DownloadError, match="could not download"):
        download_file("http://127.0.0.1:9/nothing.zip", tmp_path / "n.zip", progress=False, timeout=2)


def _zip_with(names_and_data) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in names_and_data:
            zf.writestr(name, payload)
    return buf.getvalue()


def test_zip_slip_archive_is_refused_leaving_nothing_behind(server, tmp_path):
    evil = _zip_with([("LesionLocatorCheckpoint/LesionLocatorSeg/plans.json", "{}"),
                      ("LesionLocatorCheckpoint/../../evil.txt", "owned")])
    server.files["/LesionLocatorCheckpoint.zip"] = evil
    dest = tmp_path / "nested" / "d"
    with pytest.raises(ArchiveError, match=r"climbs out"):
        download_weights(server.url("/LesionLocatorCheckpoint.zip"), dest, progress=False, log=lambda s: None)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "nested" / "evil.txt").exists()
    assert not (dest / "LesionLocatorCheckpoint").exists()
    assert not [p for p in dest.rglob("*") if p.name.startswith(".extract")]


@pytest.mark.parametrize(
    ("name", "message"),
    [("/etc/passwd_copy", "absolute path"), ("C:/x.txt", "absolute path"), ("a/../../x", "climbs out")],
)
def test_unsafe_zip_names(tmp_path, name, message):
    arc = tmp_path / "a.zip"
    arc.write_bytes(_zip_with([("ok/file.txt", "x"), (name, "y")]))
    with pytest.raises(ArchiveError, match=message):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "out" / "ok").exists()


def _tar(tmp_path: Path, members) -> Path:
    arc = tmp_path / "a.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        for info, payload in members:
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return arc


def _file(name: str, payload: bytes = b"data"):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def _link(name: str, target: str, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def test_tar_links_escaping_are_refused_and_inside_links_allowed(tmp_path):
    bad = _tar(tmp_path, [_file("ck/a.txt"), _link("ck/escape", "../../outside")])
    with pytest.raises(ArchiveError, match="outside the archive"):
        safe_extract(bad, tmp_path / "o1")
    bad_abs = _tar(tmp_path, [_link("ck/abs", "/etc/passwd")])
    with pytest.raises(ArchiveError, match="absolute"):
        archive_members(bad_abs)
    hard = _tar(tmp_path, [_file("ck/a.txt"), _link("ck/h", "ck/a.txt", tarfile.LNKTYPE)])
    with pytest.raises(ArchiveError, match="hard link"):
        archive_members(hard)
    good = _tar(tmp_path, [_file("ck/a.txt", b"hello"), _link("ck/alias", "a.txt")])
    out = safe_extract(good, tmp_path / "o2")
    assert out == [tmp_path / "o2" / "ck"]
    assert (tmp_path / "o2" / "ck" / "alias").read_bytes() == b"hello"
    assert not (tmp_path / "o1").exists() or not any((tmp_path / "o1").iterdir())


def test_extract_refuses_existing_output_unless_overwrite(tmp_path):
    arc = tmp_path / "a.zip"
    arc.write_bytes(_zip_with([("ck/file.txt", "new")]))
    (tmp_path / "out" / "ck").mkdir(parents=True)
    (tmp_path / "out" / "ck" / "file.txt").write_text("old")
    with pytest.raises(OutputExistsError):
        safe_extract(arc, tmp_path / "out")
    assert (tmp_path / "out" / "ck" / "file.txt").read_text() == "old"
    safe_extract(arc, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "ck" / "file.txt").read_text() == "new"


def test_not_an_archive_and_not_a_checkpoint(server, tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not an archive")
    with pytest.raises(ArchiveError, match="neither a zip nor a tar"):
        safe_extract(junk, tmp_path / "o")
    server.files["/other.zip"] = _zip_with([("something/else.txt", "x")])
    with pytest.raises(CheckpointError, match="does not hold a LesionLocator checkpoint"):
        download_weights(server.url("/other.zip"), tmp_path / "d", progress=False, log=lambda s: None)
    assert not (tmp_path / "d" / "something").exists()


def test_not_enough_disk_space_is_refused_before_extracting(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    arc = tmp_path / "a.zip"
    arc.write_bytes(_zip_with([("ck/big.bin", b"0" * 10_000)]))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 5_000, 5_000))
    with pytest.raises(ArchiveError, match="only 0.00 GiB are free"):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "out" / "ck").exists()
    assert not list((tmp_path / "out").iterdir())


# ------------------------------------------------------------------ link chains (probing report, issue 16)
def _zip_link(zf: zipfile.ZipFile, name: str, target: str) -> None:
    import stat

    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target)


def _chain_zip(final_file: str = "ck/r/marker.txt") -> bytes:
    """Each link looks harmless on its own (``p -> ..``, ``q -> p/..``); the file goes through the last."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ck/LesionLocatorSeg/plans.json", "{}")
        _zip_link(zf, "ck/p", "..")
        _zip_link(zf, "ck/q", "p/..")
        _zip_link(zf, "ck/r", "q/..")
        zf.writestr(final_file, "written outside")
    return buf.getvalue()


def test_zip_symlinks_are_refused_even_when_each_looks_harmless(tmp_path):
    arc = tmp_path / "a.zip"
    arc.write_bytes(_chain_zip())
    with pytest.raises(ArchiveError, match="refusing symbolic link 'ck/p'.*needs none"):
        safe_extract(arc, tmp_path / "root" / "dest")
    assert not list(tmp_path.rglob("marker.txt"))
    assert not (tmp_path / "root" / "dest").exists() or not any((tmp_path / "root" / "dest").iterdir())
    one = io.BytesIO()
    with zipfile.ZipFile(one, "w") as zf:
        _zip_link(zf, "ck/alias", "plans.json")  # even a link inside the folder: a checkpoint needs none
    arc.write_bytes(one.getvalue())
    with pytest.raises(ArchiveError, match="symbolic link"):
        archive_members(arc)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        # the chain of the probing report, in tar form
        ([_file("ck/LesionLocatorSeg/plans.json"), _link("ck/p", ".."), _link("ck/q", "p/.."), _link("ck/r", "q/.."),
          _file("ck/r/marker.txt")], "resolves outside"),
        # the same chain declared in the other order (q before the p it goes through)
        ([_link("ck/q", "p/.."), _link("ck/p", ".."), _file("ck/x.txt")], "resolves outside"),
        # a link that points inside, and a file written through it
        ([_file("ck/sub/a.txt"), _link("ck/l", "sub"), _file("ck/l/b.txt")], "written through the symbolic link"),
        # a deep chain towards an absolute path
        ([_link("ck/a", "b"), _link("ck/b", "c"), _link("ck/c", "../../../../etc")], "outside"),
        # links that loop
        ([_link("ck/a", "b"), _link("ck/b", "a"), _link("ck/c", "a/x")], "loop"),
        # a file placed, then replaced by a link of the same name
        ([_file("ck/a.txt"), _link("ck/a.txt", "../b")], "twice"),
    ],
)
def test_tar_link_chains_are_resolved_as_one_tree(tmp_path, members, message):
    arc = _tar(tmp_path, members)
    dest = tmp_path / "root" / "dest"
    with pytest.raises(ArchiveError, match=message):
        safe_extract(arc, dest)
    assert not list(tmp_path.rglob("marker.txt")) and not list(tmp_path.rglob("b.txt"))
    assert not dest.exists() or not any(dest.iterdir())


def test_tar_inside_links_are_created_last_and_point_inside(tmp_path):
    arc = _tar(tmp_path, [_file("ck/sub/a.txt", b"A"), _link("ck/alias", "sub/a.txt"), _link("ck/d", "sub"),
                          _file("ck/z.txt", b"Z")])
    out = safe_extract(arc, tmp_path / "o")
    assert out == [tmp_path / "o" / "ck"]
    assert (tmp_path / "o" / "ck" / "alias").read_bytes() == b"A"
    assert (tmp_path / "o" / "ck" / "d").is_symlink() and (tmp_path / "o" / "ck" / "d" / "a.txt").read_bytes() == b"A"


def test_extracted_files_get_the_umask_mode(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        arc = tmp_path / "a.zip"
        arc.write_bytes(_zip_with([("ck/file.txt", "x")]))
        safe_extract(arc, tmp_path / "o")
    finally:
        os.umask(old)
    assert ((tmp_path / "o" / "ck" / "file.txt").stat().st_mode & 0o777) == 0o640


def test_bad_archive_kept_in_downloads_is_discarded_and_fetched_again(server, tmp_path):
    good = _checkpoint_zip()
    server.files["/LesionLocatorCheckpoint.zip"] = good
    dest = tmp_path / "d"
    cached = dest / "downloads" / "LesionLocatorCheckpoint.zip"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(good[: len(good) // 2])  # a truncated archive from an earlier, broken run
    logs: list[str] = []
    root = download_weights(server.url("/LesionLocatorCheckpoint.zip"), dest, progress=False, log=logs.append)
    assert root == dest / "LesionLocatorCheckpoint"
    assert any("not usable" in m and "deleted" in m for m in logs), logs
    assert any("NOT be verified" in m for m in logs), logs
    assert len([r for r in server.requests if r["path"].endswith(".zip")]) == 1


def test_overwrite_discards_an_earlier_download(server, tmp_path):
    good = _checkpoint_zip()
    server.files["/LesionLocatorCheckpoint.zip"] = good
    dest = tmp_path / "d"
    cached = dest / "downloads" / "LesionLocatorCheckpoint.zip"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_zip_with([("LesionLocatorCheckpoint/LesionLocatorSeg/plans.json", "old")]))
    logs: list[str] = []
    download_weights(server.url("/LesionLocatorCheckpoint.zip"), dest, progress=False, overwrite=True,
                     log=logs.append)
    assert any("--overwrite: discarding" in m for m in logs)
    assert (dest / "LesionLocatorCheckpoint" / "LesionLocatorTrack" / "plans.json").exists()


def test_refused_download_is_not_kept_for_reuse(server, tmp_path):
    server.files["/LesionLocatorCheckpoint.zip"] = _chain_zip("LesionLocatorCheckpoint/r/marker.txt")
    dest = tmp_path / "d"
    with pytest.raises(ArchiveError, match="symbolic link.*deleted"):
        download_weights(server.url("/LesionLocatorCheckpoint.zip"), dest, progress=False, log=lambda s: None)
    assert not (dest / "downloads").exists()
    assert not list(tmp_path.rglob("marker.txt"))


def test_download_progress_in_a_log_is_whole_lines(server, tmp_path, monkeypatch):
    import sys

    server.files["/big.zip"] = _checkpoint_zip()  # about 1.5 MB: two 1 MiB chunks
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)  # not a terminal
    download_file(server.url("/big.zip"), tmp_path / "big.zip", progress=True)
    text = buf.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines and "big.zip" in lines[-1] and "100%" in lines[-1]


def test_line_stream_turns_redraws_into_rate_limited_lines():
    from napari_lesionlocator.io.console import LineStream

    now = [0.0]
    out = io.StringIO()
    stream = LineStream(out, interval=10.0, clock=lambda: now[0])
    stream.write("\rdl:   0%|")
    for pct in range(1, 100):
        now[0] += 1.0
        stream.write(f"\rdl: {pct:3d}%|")
    stream.write("\rdl: 100%|\n")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "dl:   0%|" and lines[-1] == "dl: 100%|"
    assert 9 <= len(lines) <= 12  # one line per 10 s of a 100 s job, plus the last

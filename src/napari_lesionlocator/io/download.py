"""Download of the LesionLocator checkpoint (Zenodo record 15174217): resume, checksum, safe unpack.

* The archive is downloaded to ``<dest>/downloads/<name>.part`` with a tqdm progress bar on
  stderr; an interrupted download is resumed with an HTTP ``Range`` request the next time (a
  server that ignores ``Range`` makes it start over, correctly).
* The finished file is checked against a SHA-256 (``--sha256``) and/or MD5 (``--md5``, or the
  one Zenodo's API publishes for the file, fetched when the default URL is used). A mismatch
  deletes the corrupt file and fails; nothing is unpacked.
* The archive is unpacked with :func:`..archive.safe_extract` (zip-slip safe, all-or-nothing)
  into ``<dest>`` (default ``platformdirs.user_data_dir("napari-lesionlocator")``).

Only the standard library (urllib) is used for HTTP, so no extra dependency is needed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..core.errors import CheckpointError, LesionLocatorError, OutputExistsError
from .archive import ArchiveError, archive_members, safe_extract

__all__ = [
    "ZENODO_RECORD",
    "DEFAULT_URL",
    "DEFAULT_API_URL",
    "DownloadError",
    "default_data_dir",
    "archive_name_from_url",
    "download_file",
    "file_digest",
    "zenodo_md5",
    "find_checkpoint_root",
    "download_weights",
]

ZENODO_RECORD = "15174217"
DEFAULT_URL = f"https://zenodo.org/records/{ZENODO_RECORD}/files/LesionLocatorCheckpoint.zip?download=1"
DEFAULT_API_URL = f"https://zenodo.org/api/records/{ZENODO_RECORD}"
CHECKPOINT_FOLDERS = ("LesionLocatorSeg", "LesionLocatorTrack")
_CHUNK = 1 << 20
_USER_AGENT = "napari-lesionlocator-download"


class DownloadError(LesionLocatorError):
    """The download failed (network, HTTP status, incomplete transfer or checksum mismatch)."""


def default_data_dir() -> Path:
    """Per-user data folder where checkpoints are unpacked by default."""
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-lesionlocator"))


def archive_name_from_url(url: str) -> str:
    """File name of a download URL (query string removed): ``.../files/X.zip?download=1`` -> ``X.zip``."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    return name or "download"


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_size(resp, offset: int) -> int | None:
    content_range = resp.headers.get("Content-Range", "")
    m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", content_range)
    if m and m.group(3) != "*":
        return int(m.group(3))
    length = resp.headers.get("Content-Length")
    return int(length) + offset if length and length.isdigit() else None


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` when present, then verify checksums.

    Parameters
    ----------
    url : str
        HTTP(S) URL.
    dest : path
        Final file; the download goes to ``dest`` + ``.part`` and is renamed when complete and verified.
    sha256, md5 : str, optional
        Expected hex digests (case-insensitive).
    progress : bool
        Show a tqdm progress bar on stderr.
    timeout : float
        Socket timeout in seconds.

    Raises
    ------
    DownloadError
        On HTTP errors, network errors (the partial file is kept for a later resume), an
        incomplete transfer, or a checksum mismatch (the corrupt file is deleted).
    """
    from .console import progress_bar

    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    try:
        try:
            resp = _open(url, offset, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                # The partial file already holds every byte the server has: verify it below.
                resp = None
            else:
                raise
        if resp is not None:
            with resp:
                status = getattr(resp, "status", 200)
                if offset and status != 206:
                    offset = 0  # the server ignored Range: start over
                elif status == 206:
                    m = re.match(r"bytes\s+(\d+)-", resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset:
                        raise DownloadError(f"{url}: the server resumed at the wrong position "
                                            f"({resp.headers.get('Content-Range')!r}, expected byte {offset})")
                total = _total_size(resp, offset)
                written = offset
                with open(part, "ab" if offset else "wb") as fh, progress_bar(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=dest.name, stream=sys.stderr, disable=not progress, leave=False,
                ) as bar:
                    for block in iter(lambda: resp.read(_CHUNK), b""):
                        fh.write(block)
                        written += len(block)
                        bar.update(len(block))
                if total is not None and written < total:
                    raise DownloadError(
                        f"download of {dest.name} stopped at {written} of {total} bytes (connection closed); "
                        f"the partial file {part} is kept: run the same command again to resume"
                    )
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        kept = f"; the partial file {part} is kept: run the same command again to resume" if part.exists() else ""
        raise DownloadError(f"could not download {url}: {reason}{kept}") from None
    _verify(part, sha256=sha256, md5=md5, name=dest.name)
    os.replace(part, dest)
    return dest


def _verify(path: Path, *, sha256: str | None, md5: str | None, name: str) -> None:
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if not expected:
            continue
        expected = expected.strip().lower().removeprefix(f"{algorithm}:")
        got = file_digest(path, algorithm)
        if got != expected:
            path.unlink(missing_ok=True)
            raise DownloadError(
                f"{name}: {algorithm} checksum mismatch (expected {expected}, got {got}); the corrupt "
                "download was deleted, nothing was unpacked. Run the command again to download it afresh"
            )


def zenodo_md5(api_url: str, filename: str, *, timeout: float = 30.0) -> str | None:
    """MD5 of ``filename`` as Zenodo's records API lists it (``files[].checksum == "md5:..."``).

    Returns None when the record does not list the file or has no MD5.

    Raises
    ------
    DownloadError
        When the API cannot be reached or does not answer JSON.
    """
    try:
        with urllib.request.urlopen(urllib.request.Request(api_url, headers={"User-Agent": _USER_AGENT}),
                                    timeout=timeout) as resp:
            data = json.loads(resp.read().decode("utf-8"))
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError, ValueError) as exc:
        raise DownloadError(f"could not read the checksum from {api_url}: {getattr(exc, 'reason', exc)}") from None
    files = data.get("files", []) if isinstance(data, dict) else []
    if isinstance(files, dict):  # newer API: {"entries": {...}}
        files = list(files.get("entries", {}).values())
    for f in files:
        if not isinstance(f, dict):
            continue
        if f.get("key") == filename or f.get("filename") == filename:
            checksum = str(f.get("checksum", ""))
            return checksum.split(":", 1)[1] if checksum.startswith("md5:") else None
    return None


def find_checkpoint_root(folder: str | os.PathLike, max_depth: int = 3) -> Path | None:
    """The folder holding ``LesionLocatorSeg``/``LesionLocatorTrack`` at or below ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    frontier = [folder]
    for _ in range(max_depth + 1):
        nxt = []
        for d in sorted(frontier):
            if any((d / c).is_dir() for c in CHECKPOINT_FOLDERS):
                return d
            nxt.extend(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        frontier = nxt
    return None


def download_weights(
    url: str = DEFAULT_URL,
    dest: str | os.PathLike | None = None,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    api_url: str | None = None,
    overwrite: bool = False,
    keep_archive: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    log=print,
    warn=None,
) -> Path:
    """Download, verify and unpack the LesionLocator checkpoint; return the checkpoint folder.

    Parameters
    ----------
    url : str
        Archive URL (zip or tar); default: the Zenodo record's ``LesionLocatorCheckpoint.zip``.
    dest : path, optional
        Folder to unpack into (default :func:`default_data_dir`).
    sha256, md5 : str, optional
        Expected checksums of the archive.
    api_url : str, optional
        Zenodo records API URL to read the archive's MD5 from when no checksum is given
        (default: the official record's when ``url`` is the default URL; otherwise none).
    overwrite : bool
        Replace an unpacked checkpoint that is already there (default: keep it and return it).
    keep_archive : bool
        Keep the downloaded archive after unpacking (default: delete it, it is several GB).
    log, warn : callable
        Where status lines and warnings go (``warn`` defaults to ``log``; the CLI shows warnings even
        with ``--quiet``).

    Raises
    ------
    DownloadError, ArchiveError, CheckpointError, OutputExistsError
    """
    warn = warn or log
    dest = Path(dest) if dest is not None else default_data_dir()
    name = archive_name_from_url(url)
    existing = find_checkpoint_root(dest)
    if existing is not None and not overwrite:
        log(f"A checkpoint is already installed at {existing} (use --overwrite to download it again).")
        return existing
    if api_url is None and url == DEFAULT_URL:
        api_url = DEFAULT_API_URL
    if not sha256 and not md5 and api_url:
        try:
            md5 = zenodo_md5(api_url, name, timeout=timeout)
        except DownloadError as exc:
            warn(f"warning: {exc}; continuing without a checksum")
        if md5:
            log(f"Expected MD5 (from {api_url}): {md5}")
    if not sha256 and not md5:
        warn("warning: no checksum (--sha256 or --md5) was given and none is published for this URL: the "
            "download will NOT be verified; pass the archive's published checksum to verify it")
    archive = dest / "downloads" / name
    if overwrite:
        for old in (archive, archive.with_name(archive.name + ".part")):
            if old.exists():
                log(f"--overwrite: discarding the earlier download {old} and downloading afresh")
                old.unlink()
    if archive.exists():
        log(f"Reusing the downloaded archive {archive} (delete it, or pass --overwrite, to download again)")
        try:
            _verify(archive, sha256=sha256, md5=md5, name=name)
            _checkpoint_members(archive, name)
        except (DownloadError, ArchiveError, CheckpointError) as exc:
            archive.unlink(missing_ok=True)
            warn(f"warning: the earlier download is not usable ({exc}); it was deleted, downloading afresh")
    if not archive.exists():
        log(f"Downloading {url}\n         to {archive}")
        download_file(url, archive, sha256=sha256, md5=md5, progress=progress, timeout=timeout)
        try:
            _checkpoint_members(archive, name)
        except (ArchiveError, CheckpointError) as exc:
            archive.unlink(missing_ok=True)
            _remove_if_empty(archive.parent)
            raise type(exc)(f"{exc}; the downloaded archive was deleted") from None
    try:
        tops = safe_extract(archive, dest, overwrite=overwrite)
    except (ArchiveError, OutputExistsError) as exc:
        raise type(exc)(f"{exc} (the downloaded archive {archive} is kept and the next run reuses it; delete "
                        "it or pass --overwrite to download again)") from None
    root = next((r for t in tops if (r := find_checkpoint_root(t)) is not None), None)
    if root is None:  # e.g. the archive's top level is LesionLocatorSeg itself
        root = dest
    if not keep_archive:
        archive.unlink(missing_ok=True)
        _remove_if_empty(archive.parent)
    return root


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def _checkpoint_members(archive: Path, name: str) -> list[str]:
    """The archive's checked members; ArchiveError when unsafe/corrupt, CheckpointError when no checkpoint."""
    members = archive_members(archive)
    if not any(part in CHECKPOINT_FOLDERS for m in members for part in m.split("/")):
        raise CheckpointError(
            f"{name} does not hold a LesionLocator checkpoint (no {' or '.join(CHECKPOINT_FOLDERS)} folder); "
            "nothing was unpacked"
        )
    return members

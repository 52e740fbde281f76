"""Safe unpacking of zip and tar archives (downloaded checkpoints).

Every member is checked *before* anything is written: absolute paths, drive letters, ``..``
components, links pointing outside the archive root, hard links, device files and FIFOs are
refused with :class:`ArchiveError` (zip-slip / tar-slip). Extraction goes into a hidden staging
folder next to the destination, and only a complete, checked result is moved into place; on any
error the staging folder is removed, so a refused or broken archive leaves nothing behind.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ..core.errors import LesionLocatorError, OutputExistsError

__all__ = ["ArchiveError", "archive_members", "safe_extract", "unpacked_size"]


class ArchiveError(LesionLocatorError):
    """An archive is unreadable or holds an unsafe member; nothing was extracted."""


def _check_name(name: str, archive: str) -> str:
    """Normalised relative POSIX path of a member, or ArchiveError when it could escape."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise ArchiveError(f"{archive}: refusing member with an absolute path: {name!r}")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ArchiveError(f"{archive}: refusing member that climbs out of the folder ('..'): {name!r}")
    if not parts:
        return ""
    return "/".join(parts)


def _check_link(member: str, target: str, archive: str) -> None:
    """A symbolic link must stay inside the extraction root."""
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise ArchiveError(f"{archive}: refusing symbolic link {member!r} -> absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member), target))
    if resolved == ".." or resolved.startswith("../"):
        raise ArchiveError(f"{archive}: refusing symbolic link {member!r} -> {target!r} pointing outside the archive")


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def unpacked_size(path: str | os.PathLike) -> int:
    """Total size in bytes of the archive's files once unpacked (from its headers)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return sum(i.file_size for i in zf.infolist())
    with tarfile.open(path) as tf:
        return sum(m.size for m in tf.getmembers() if m.isfile())


def archive_members(path: str | os.PathLike) -> list[str]:
    """Checked member names of a zip or tar archive (ArchiveError on any unsafe member)."""
    path = Path(path)
    label = path.name
    names: list[str] = []
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    name = _check_name(info.filename, label)
                    if _zip_is_symlink(info):
                        _check_link(name, zf.read(info).decode("utf-8", "replace"), label)
                    names.append(name)
        except zipfile.BadZipFile as exc:
            raise ArchiveError(f"{label}: corrupt zip archive ({exc})") from None
        return names
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as exc:
        raise ArchiveError(f"cannot read {label}: {exc}") from None
    if not is_tar:
        raise ArchiveError(f"{label} is neither a zip nor a tar archive")
    try:
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                name = _check_name(m.name, label)
                if m.islnk():
                    raise ArchiveError(f"{label}: refusing hard link {m.name!r} (not needed by checkpoints)")
                if m.issym():
                    _check_link(name, m.linkname, label)
                elif not (m.isfile() or m.isdir()):
                    raise ArchiveError(f"{label}: refusing special file {m.name!r} (device, FIFO...)")
                names.append(name)
    except tarfile.TarError as exc:
        raise ArchiveError(f"{label}: corrupt tar archive ({exc})") from None
    return names


def _extract_into(path: Path, staging: Path) -> None:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = _check_name(info.filename, path.name)
                if not name:
                    continue
                target = staging / name
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if _zip_is_symlink(info):
                    os.symlink(zf.read(info).decode("utf-8"), target)
                    continue
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        return
    with tarfile.open(path) as tf:
        # The members were checked already; the "data" filter is a second, independent guard.
        tf.extractall(staging, filter="data")


def safe_extract(path: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Extract a zip or tar archive into ``dest``, safely and all-or-nothing.

    Parameters
    ----------
    path : path
        The archive (zip, tar, tar.gz, tar.bz2, tar.xz).
    dest : path
        Folder receiving the archive's top-level entries (created if needed).
    overwrite : bool
        Replace top-level entries that already exist in ``dest`` (otherwise OutputExistsError).

    Returns
    -------
    list of Path
        The top-level entries created in ``dest``.

    Raises
    ------
    ArchiveError
        Unsafe member, unknown format or corrupt archive (nothing is left in ``dest``).
    OutputExistsError
        A top-level entry exists and ``overwrite`` is False (nothing is changed).
    """
    path, dest = Path(path), Path(dest)
    names = archive_members(path)
    tops = sorted({n.split("/", 1)[0] for n in names if n})
    if not tops:
        raise ArchiveError(f"{path.name} is empty")
    clashes = [t for t in tops if (dest / t).exists() or (dest / t).is_symlink()]
    if clashes and not overwrite:
        raise OutputExistsError(
            f"{', '.join(str(dest / t) for t in clashes)} already exist(s); refusing to overwrite (use --overwrite)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    needed, free = unpacked_size(path), shutil.disk_usage(dest).free
    if needed > free:
        raise ArchiveError(
            f"{path.name} unpacks to {needed / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB are free in {dest}; "
            "free some space or choose another folder (--dest)"
        )
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    moved: list[Path] = []
    try:
        _extract_into(path, staging)
        for t in tops:
            final = dest / t
            if final.is_symlink() or final.is_file():
                final.unlink()
            elif final.exists():
                shutil.rmtree(final)
            os.replace(staging / t, final)
            moved.append(final)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"could not extract {path.name}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return moved

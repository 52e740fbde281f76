"""Safe unpacking of zip and tar archives (downloaded checkpoints).

Every member is checked *before* anything is written: absolute paths, drive letters, ``..``
components, hard links, device files and FIFOs are refused with :class:`ArchiveError` (zip-slip /
tar-slip). Symbolic links are refused in zips (a checkpoint needs none). In tars a link is
accepted only when its target, resolved through every other link of the archive (chains such as
``p -> ..``, ``q -> p/..``), stays inside the archive root, and no member may be written through
a link (``link/file``). Extraction goes into a hidden staging folder next to the destination:
folders and files first, each opened with ``O_NOFOLLOW | O_EXCL`` after its real path was
checked against the real staging folder, links last, so nothing is ever written through a link.
Only a complete, checked result is moved into place; on any error the staging folder is removed,
so a refused or broken archive leaves nothing behind.
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
    """A symbolic link's own text must be relative and stay inside the extraction root."""
    if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
        raise ArchiveError(f"{archive}: refusing symbolic link {member!r} -> absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member), target))
    if resolved == ".." or resolved.startswith("../"):
        raise ArchiveError(f"{archive}: refusing symbolic link {member!r} -> {target!r} pointing outside the archive")


def _resolve(path: str, links: dict[str, str], archive: str, what: str) -> str:
    """``path`` (relative to the root) with every link of the archive followed, like the OS would.

    Raises ArchiveError when any step climbs above the root or the links loop.
    """
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not done:
                raise ArchiveError(f"{archive}: refusing {what}: through its links it resolves outside the archive")
            done.pop()
            continue
        here = "/".join([*done, part])
        if here in links:
            hops += 1
            if hops > 40:
                raise ArchiveError(f"{archive}: refusing {what}: its symbolic links loop")
            target = links[here]
            if target.startswith("/") or (len(target) > 1 and target[1] == ":"):
                raise ArchiveError(f"{archive}: refusing {what}: it resolves to an absolute path")
            todo = [p for p in target.replace("\\", "/").split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return "/".join(done)


def _check_tar_links(entries: list[tuple[str, str | None]], archive: str) -> None:
    """Links of a tar (name -> target, None for files/folders), checked as one tree.

    Every link's target, followed through all the archive's links, must stay inside the root, and
    no member may sit below a link (it would be written wherever the link points).
    """
    links = {name: target for name, target in entries if target is not None}
    for name, target in entries:
        parts = name.split("/")
        for k in range(1, len(parts)):
            prefix = "/".join(parts[:k])
            if prefix in links:
                raise ArchiveError(f"{archive}: refusing member {name!r}: it would be written through the "
                                   f"symbolic link {prefix!r}")
        if target is not None:
            _resolve(posixpath.join(posixpath.dirname(name), target), links, archive,
                     f"symbolic link {name!r} -> {target!r}")
    seen: set[str] = set()
    for name, _ in entries:
        if name in seen and name in links:
            raise ArchiveError(f"{archive}: refusing member {name!r}: the archive holds it twice, once as a link")
        seen.add(name)


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
                        raise ArchiveError(f"{label}: refusing symbolic link {info.filename!r} "
                                           "(a checkpoint archive needs none)")
                    kind = stat.S_IFMT(info.external_attr >> 16)
                    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                        raise ArchiveError(f"{label}: refusing special file {info.filename!r} (device, FIFO...)")
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
        entries: list[tuple[str, str | None]] = []
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                name = _check_name(m.name, label)
                if m.islnk():
                    raise ArchiveError(f"{label}: refusing hard link {m.name!r} (not needed by checkpoints)")
                if m.issym():
                    _check_link(name, m.linkname, label)
                    if not name:
                        raise ArchiveError(f"{label}: refusing symbolic link {m.name!r} in place of the root")
                elif not (m.isfile() or m.isdir()):
                    raise ArchiveError(f"{label}: refusing special file {m.name!r} (device, FIFO...)")
                names.append(name)
                entries.append((name, m.linkname if m.issym() else None))
        _check_tar_links([e for e in entries if e[0]], label)
    except tarfile.TarError as exc:
        raise ArchiveError(f"{label}: corrupt tar archive ({exc})") from None
    return names


def _inside(root_real: str, path: Path) -> None:
    """ArchiveError unless the real (link-resolved) folder of ``path`` lies inside ``root_real``."""
    parent = os.path.realpath(path.parent)
    if parent != root_real and not parent.startswith(root_real + os.sep):
        raise ArchiveError(f"refusing to write {path.name}: its folder resolves to {parent}, outside {root_real}")


def _write_member(src, target: Path, root_real: str) -> None:
    """Create ``target`` (never following a link, never replacing anything) and copy ``src`` into it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _inside(root_real, target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(target, flags, 0o666)
    with os.fdopen(fd, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _extract_into(path: Path, staging: Path) -> None:
    """Folders and files first (each checked against the real staging folder), links last."""
    root_real = os.path.realpath(staging)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = _check_name(info.filename, path.name)
                if not name:
                    continue
                if _zip_is_symlink(info):  # archive_members refused it already; a second guard
                    raise ArchiveError(f"{path.name}: refusing symbolic link {info.filename!r}")
                target = staging / name
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    _inside(root_real, target / "x")
                    continue
                with zf.open(info) as src:
                    _write_member(src, target, root_real)
        return
    links: list[tuple[Path, str]] = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            name = _check_name(m.name, path.name)
            if not name:
                continue
            target = staging / name
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                _inside(root_real, target / "x")
            elif m.issym():
                links.append((target, m.linkname))
            elif m.isfile():
                src = tf.extractfile(m)
                if src is None:
                    raise ArchiveError(f"{path.name}: cannot read member {m.name!r}")
                with src:
                    _write_member(src, target, root_real)
            else:
                raise ArchiveError(f"{path.name}: refusing special file {m.name!r}")
    for target, link in links:  # last: nothing is written after a link exists
        target.parent.mkdir(parents=True, exist_ok=True)
        _inside(root_real, target)
        os.symlink(link, target)
    for target, _ in links:
        real = os.path.realpath(target)
        if real != root_real and not real.startswith(root_real + os.sep):
            raise ArchiveError(f"{path.name}: refusing symbolic link {target.name}: it resolves outside the archive")


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
    except FileExistsError as exc:
        raise ArchiveError(f"{path.name}: refusing member {exc.filename}: the archive holds it twice") from None
    except (zipfile.BadZipFile, tarfile.TarError, OSError, UnicodeDecodeError, EOFError) as exc:
        raise ArchiveError(f"could not extract {path.name}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return moved

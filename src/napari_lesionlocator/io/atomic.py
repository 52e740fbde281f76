"""The one way this package writes a file: atomic, verified, with the user's umask, never replacing by surprise.

Every writer (images and label maps, tables, prompt JSON, the study layout's naming.csv, the
user config) goes through :func:`atomic_write`:

1. refuse an existing target unless ``overwrite`` (before anything is written);
2. write into a temp file in the target's own folder (same file system, so the rename is atomic);
3. ``fsync`` it, then **verify** it: the size must be right and a caller-supplied check may read
   it back (images: the header and the whole compressed stream, see ``images.verify_image_file``),
   because some writers do not report a failed write (SimpleITK's NIfTI writer on a full disk
   leaves a truncated file and no error);
4. give it the mode a plain ``open()`` would (``0o666 & ~umask``; ``mkstemp`` makes 0600 files);
5. rename it onto the final name: with ``overwrite=False`` through ``os.link``, which fails if
   the name appeared meanwhile, so even a race never replaces a file; then ``fsync`` the folder.

On any failure (disk full, verification, Ctrl-C) the temp files are removed and nothing exists
under the final name that was not there before; an existing file is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..core.errors import OutputExistsError, OutputPathError, OutputWriteError

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "current_umask",
    "file_mode",
    "require_output_folder",
    "OutputPathError",
    "OutputWriteError",
]

Verifier = Callable[[Path], None]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # elsewhere: set and restore (a brief window)
    os.umask(old)
    return old


def file_mode() -> int:
    """The permission bits a new file gets from a plain ``open()``: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" ({free / 2**20:.1f} MiB free in {folder})"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported (Windows): the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move ``tmp`` onto ``target``; without ``overwrite`` never replace a file that exists now."""
    if overwrite:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise OutputExistsError(f"{target} appeared while it was being written; refusing to overwrite it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK,
                             getattr(errno, "ENOSYS", -1)):
            raise
        # A file system without hard links (FAT, some network mounts): check, then rename.
        if target.exists() or target.is_symlink():
            raise OutputExistsError(f"{target} already exists; refusing to overwrite it") from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: a folder of that name exists")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{path} already exists; refusing to overwrite it (use --overwrite)")


def _finish(tmp: Path, target: Path, verify: Verifier | None) -> None:
    """fsync, verify and chmod one written temp file (OutputWriteError when it is not right)."""
    if not tmp.exists():
        raise OutputWriteError(f"could not write {target}: the writer produced no file{_free_space(target.parent)}")
    _fsync_file(tmp)
    if tmp.stat().st_size == 0:
        raise OutputWriteError(f"could not write {target}: the file written is empty (0 bytes)"
                               f"{_free_space(target.parent)}; nothing was saved under that name")
    if verify is not None:
        verify(tmp)
    os.chmod(tmp, file_mode())


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, overwrite: bool = False, verify: Verifier | None = None,
                 detached: tuple[str, ...] = ()) -> Iterator[Path]:
    """Context manager yielding a temp path to write; on success it becomes ``path`` (see module doc).

    Parameters
    ----------
    path : path
        The final file.
    overwrite : bool
        Replace an existing file (otherwise :class:`OutputExistsError`, before anything is written).
    verify : callable, optional
        ``verify(temp_path)`` raises (:class:`OutputWriteError`) when the written file is not right.
        It runs after ``fsync`` and before the rename; for a header/data pair it gets the header.
    detached : tuple of str
        Suffixes of data files the writer puts beside the header (``.mhd`` + ``.raw``): the yielded
        path is then ``<private temp folder>/<final name>`` and every file written there is moved
        next to ``path``, data first and header last, each under the same rules.

    Raises
    ------
    OutputExistsError, OutputPathError, OutputWriteError, OSError
        OSError (e.g. ``ENOSPC``, disk full) is re-raised with the target named.
    """
    path = Path(path)
    _check_target(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(f"cannot write {path}: {path.parent} is a file, not a folder") from None
    written_ok = False
    if detached:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            try:
                yield tmpdir / path.name
            except OSError as exc:
                raise _named(exc, path) from None
            files = sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name)  # header last
            for f in files:
                target = path.parent / f.name
                if target != path:
                    _check_target(target, overwrite)
                _finish(f, target, verify if target == path else None)
            for f in files:
                _place(f, path.parent / f.name, overwrite)
            written_ok = True
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    else:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + _suffix(path), dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                yield tmp
                _finish(tmp, path, verify)
            except OSError as exc:
                raise _named(exc, path) from None
            _place(tmp, path, overwrite)
            written_ok = True
        finally:
            tmp.unlink(missing_ok=True)
    if written_ok:
        _fsync_dir(path.parent)


def _suffix(path: Path) -> str:
    """The target's format suffix (``.nii.gz`` included), so that writers choosing by suffix work."""
    name = path.name.lower()
    for multi in (".nii.gz", ".raw.gz", ".tar.gz"):
        if name.endswith(multi):
            return path.name[-len(multi):]
    return path.suffix


def _named(exc: OSError, path: Path) -> OSError:
    """The same OSError, saying which output failed and, when the disk is full, that nothing was kept."""
    if isinstance(exc, OutputExistsError | OutputPathError | OutputWriteError):
        return exc
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return OutputWriteError(f"could not write {path}: no space left on the device{_free_space(path.parent)}; "
                                "nothing was saved under that name, free some space and run again")
    return OSError(exc.errno, f"could not write {path}: {reason}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False,
                       verify: Verifier | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); the size is checked."""
    path = Path(path)

    def _check(tmp: Path) -> None:
        size = tmp.stat().st_size
        if size != len(data):
            raise OutputWriteError(f"could not write {path}: {size} of {len(data)} bytes reached the disk"
                                   f"{_free_space(path.parent)}; nothing was saved under that name")
        if verify is not None:
            verify(tmp)

    with atomic_write(path, overwrite=overwrite, verify=_check) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (newlines kept as given)."""
    return atomic_write_bytes(path, text.encode(encoding), overwrite=overwrite)


def require_output_folder(folder: str | os.PathLike, *, what: str = "output folder", create: bool = False) -> Path:
    """Make sure results can be written into ``folder`` before any work starts.

    Raises :class:`OutputPathError` when it is a file, lies below a file, or cannot be written
    (read-only mount, permissions): a probe file is really created and removed in the folder, or
    in its nearest existing parent when the folder does not exist yet (``os.access`` is not
    enough for root or read-only mounts). Nothing is left behind unless ``create``, which makes
    the folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"the {what} {folder} is a file, not a folder; choose a folder")
    probe_in = folder
    while not probe_in.exists():
        if probe_in.is_symlink():
            raise OutputPathError(f"the {what} {folder}: {probe_in} is a broken symbolic link")
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise OutputPathError(f"cannot create the {what} {folder}: {probe_in} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"cannot write into the {what} {folder}: {exc.strerror or exc} in {probe_in} "
                              "(read-only or no permission); choose another folder") from None
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"cannot create the {what} {folder}: {exc.strerror or exc}") from None
    return folder

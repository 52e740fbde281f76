"""A whole review in one folder: save, restore, validate, re-point, autosave and recovery.

Layout of a session folder::

    SESSION_DIR/
      session.json         format, version, when/who saved it; patient; timepoints in order (name,
                           date, image path absolute and relative to the folder, file SHA-256, voxel
                           SHA-256, geometry); lesions (id, name, site, role); the id counter; per
                           lesion per timepoint: review state, engine status and notes, prompts,
                           provenance, and where its mask is; the engine and its settings
      masks/tp000.npz      each lesion's own whole mask at timepoint 0 (compressed bool crops,
                           key ``l<id>``; masks of two lesions may overlap, they are kept apart)
      images/tp000.nii.gz  only for images that have no file of their own (the synthetic sample,
                           an image made in memory): the image itself, on its exact grid

Saving is atomic: everything is written into a temporary sibling folder, then the previous save is
moved aside, the new one renamed into place and only then the previous one deleted. A crash at any
moment leaves either the previous save or the new one complete (:func:`load_session` also finds a
previous save that was moved aside when the crash came between the two renames).

Restoring checks every image: the file must have the SHA-256 recorded at save time, or (when the
file was re-written, e.g. recompressed) exactly the same voxels and grid. An image that moved or
changed is refused with :class:`SessionImageError` naming the file; ``relocate`` (timepoint name or
old path -> new path) and ``search`` (folders to look in by file name) re-point it, and
:func:`repoint_session` writes the new locations into the session.

Thread: :func:`save_session` and :func:`autosave` take a :class:`~..core.study.Study` and must run
where the study is changed (the GUI thread) *or* take ``study.snapshot_state()``, made there, and
run anywhere (a worker): the snapshot shares the masks, which the study never changes in place.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError, OutputExistsError
from ..core.geometry import Geometry
from ..core.image import Image
from ..core.results import LesionMask

__all__ = [
    "SESSION_FILE",
    "SESSION_FORMAT",
    "SESSION_VERSION",
    "SessionError",
    "SessionImageError",
    "ImageCheck",
    "SessionInfo",
    "file_checksum",
    "voxel_checksum",
    "save_session",
    "load_session",
    "read_session_info",
    "validate_session",
    "repoint_session",
    "default_recovery_root",
    "autosave",
    "RecoveryInfo",
    "find_recoveries",
    "latest_recovery",
    "discard_recovery",
]

SESSION_FILE = "session.json"
SESSION_FORMAT = "napari-lesionlocator-session"
SESSION_VERSION = 1


class SessionError(InputImageError):
    """A session folder cannot be saved or restored (the message names the file and what to do)."""


class SessionImageError(SessionError):
    """A session's image moved or changed since it was saved.

    ``problems`` holds one :class:`ImageCheck` per image that failed.
    """

    def __init__(self, message: str, problems: Sequence[ImageCheck] = ()):
        super().__init__(message)
        self.problems = list(problems)


# ------------------------------------------------------------------ checksums
_FILE_SUMS: dict[tuple[str, int, int], str] = {}
_VOXEL_SUMS: dict[int, tuple[weakref.ref, str]] = {}
_SUM_LOCK = threading.Lock()


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def file_checksum(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file, or of a folder's files (a DICOM series: names and contents, in
    name order). Cached per (path, size, modification time), so re-checking is free."""
    path = Path(path)
    outer = hashlib.sha256()
    files = _files_of(path)
    if not files:
        raise SessionError(f"{path}: no file to checksum")
    for f in files:
        st = f.stat()
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        with _SUM_LOCK:
            digest = _FILE_SUMS.get(key)
        if digest is None:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            with _SUM_LOCK:
                _FILE_SUMS[key] = digest
        if len(files) == 1 and not path.is_dir():
            return f"sha256:{digest}"
        outer.update(f.name.encode() + b"\0" + digest.encode() + b"\n")
    return f"sha256:{outer.hexdigest()}"


def voxel_checksum(image: Image) -> str:
    """``"sha256:<hex>"`` of an image's voxel values (as float32) and array shape: equal for two
    files that hold the same image in different encodings (the grid is compared separately, with
    a tolerance, since formats round origins and directions differently). Cached per image array."""
    arr = image.array
    with _SUM_LOCK:
        hit = _VOXEL_SUMS.get(id(arr))
    if hit is not None and hit[0]() is arr:
        return hit[1]
    h = hashlib.sha256()
    h.update(repr(tuple(arr.shape)).encode())
    step = max(1, (16 << 20) // max(1, 4 * int(np.prod(arr.shape[1:]))))  # ~16 MB slabs: no full-size copy
    for z in range(0, arr.shape[0], step):
        h.update(memoryview(np.ascontiguousarray(arr[z:z + step], dtype=np.float32)).cast("B"))
    digest = f"sha256:{h.hexdigest()}"
    with _SUM_LOCK:
        for key in [k for k, (ref, _) in _VOXEL_SUMS.items() if ref() is None]:
            del _VOXEL_SUMS[key]
        with contextlib.suppress(TypeError):  # (an array type without weak references is not cached)
            _VOXEL_SUMS[id(arr)] = (weakref.ref(arr), digest)  # never keeps a closed scan's voxels alive
    return digest


# ------------------------------------------------------------------ saving
def _now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set):
        return list(value)
    return repr(value)  # an engine note of an unexpected type must not make the save (or autosave) fail


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _image_source(image: Image) -> Path | None:
    if not image.source:
        return None
    p = Path(image.source)
    return p if p.exists() else None


def _previous_embedded(previous: Sequence[Path]) -> dict[str, Path]:
    """voxel checksum -> embedded image file of an earlier save (reused by a hard link)."""
    out: dict[str, Path] = {}
    for folder in previous:
        try:
            data = json.loads((folder / SESSION_FILE).read_text())
        except (OSError, ValueError):
            continue
        for tp in data.get("timepoints", []):
            img = tp.get("image", {})
            if img.get("embedded") and img.get("voxels_sha256"):
                f = folder / img["relative"]
                if f.is_file() and file_checksum(f) == img.get("file_sha256"):
                    out.setdefault(img["voxels_sha256"], f)
    return out


def _write_embedded(image: Image, target: Path, reuse: dict[str, Path], voxels: str) -> None:
    src = reuse.get(voxels)
    if src is not None:
        try:
            os.link(src, target)
            return
        except OSError:
            try:
                shutil.copy2(src, target)
                return
            except OSError:
                pass
    from .images import write_image

    write_image(image.with_array(image.array, name=image.name), target)


def _write_state(state: Mapping, tmp: Path, folder: Path, previous: Sequence[Path]) -> None:
    (tmp / "masks").mkdir()
    reuse: dict[str, Path] | None = None
    timepoints = []
    by_tp: dict[str, list[Mapping]] = {}
    for obs in state["observations"]:
        by_tp.setdefault(obs["timepoint"], []).append(obs)
    observations = []
    for k, tp in enumerate(state["timepoints"]):
        image: Image = tp["image"]
        voxels = voxel_checksum(image)
        source = _image_source(image)
        entry: dict = {"geometry": image.geometry.to_metadata(), "voxels_sha256": voxels,
                       "modality": image.modality}
        if source is not None:
            entry.update(embedded=False, path=str(source.resolve()),
                         relative=os.path.relpath(source.resolve(), folder.resolve()),
                         file_sha256=file_checksum(source), kind="folder" if source.is_dir() else "file",
                         series=image.metadata.get("series_instance_uid"))
        else:
            if reuse is None:
                reuse = _previous_embedded(previous)
            (tmp / "images").mkdir(exist_ok=True)
            rel = f"images/tp{k:03d}.nii.gz"
            _write_embedded(image, tmp / rel, reuse, voxels)
            entry.update(embedded=True, path=None, relative=rel, file_sha256=file_checksum(tmp / rel), kind="file",
                         series=None)
        timepoints.append({"name": tp["name"], "date": tp["date"], "evaluated": tp["evaluated"], "image": entry})
        arrays: dict[str, np.ndarray] = {}
        rel_masks = f"masks/tp{k:03d}.npz"
        for obs in by_tp.get(tp["name"], []):
            mask: LesionMask = obs["mask"]
            key = f"l{int(obs['lesion_id'])}"
            arrays[key] = np.ascontiguousarray(mask.array, dtype=bool)
            rec = {key_: value for key_, value in obs.items() if key_ != "mask"}
            rec["mask"] = {"file": rel_masks, "key": key, "start": list(mask.start), "shape": list(mask.array.shape),
                           "voxels": mask.voxels}
            observations.append(rec)
        if arrays:
            np.savez_compressed(tmp / rel_masks, **arrays)
            _fsync(tmp / rel_masks)
    doc = {
        "format": SESSION_FORMAT,
        "version": SESSION_VERSION,
        "saved_at": _now(),
        "saved_by": _user(),
        "package_version": _version(),
        "session_id": state.get("session_id"),
        "patient_id": state["patient_id"],
        "revision": state.get("revision"),
        "timepoints": timepoints,
        "lesions": state["lesions"],
        "next_id": state["next_id"],
        "not_evaluable": state.get("not_evaluable", []),
        "candidates": state.get("candidates", {}),
        "observations": observations,
        "engine": state.get("engine", {}),
        "notes": state.get("notes", {}),
    }
    text = json.dumps(doc, indent=1, default=_json_default)
    with open(tmp / SESSION_FILE, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _user() -> str:
    from ..core.study import current_user

    return current_user()


def _version() -> str:
    from .. import __version__

    return __version__


def _is_session(folder: Path) -> bool:
    return (folder / SESSION_FILE).is_file()


def save_session(study_or_state, folder: str | os.PathLike, *, overwrite: bool = False,
                 reuse_from: Sequence[str | os.PathLike] = ()) -> Path:
    """Save a whole review to ``folder`` atomically (see the module docstring).

    Parameters
    ----------
    study_or_state : Study or dict
        The study, or ``study.snapshot_state()`` made on the study's thread (then this may run in
        a worker).
    folder : path
        The session folder. An existing session there is replaced only with ``overwrite``; a
        folder that holds anything else is never touched.
    reuse_from : paths
        Earlier session folders whose embedded images may be hard-linked instead of written again.

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    OutputExistsError
        The folder exists and is not a session (or is one and ``overwrite`` is false).
    """
    state = study_or_state.snapshot_state() if hasattr(study_or_state, "snapshot_state") else study_or_state
    folder = Path(folder)
    with _folder_lock(folder):  # a Save and an autosave thread never write one folder at once
        out = _save(state, folder, overwrite, reuse_from)
    if hasattr(study_or_state, "snapshot_state"):
        study_or_state.session_folder = out
    return out


_SAVE_LOCKS: dict[str, threading.Lock] = {}


def _folder_lock(folder: Path) -> threading.Lock:
    key = str(folder.resolve())
    with _SUM_LOCK:
        return _SAVE_LOCKS.setdefault(key, threading.Lock())


def _save(state: Mapping, folder: Path, overwrite: bool, reuse_from: Sequence) -> Path:
    if folder.exists():
        if not folder.is_dir():
            raise OutputExistsError(f"{folder} is a file; choose a folder for the session")
        if not _is_session(folder) and any(folder.iterdir()):
            raise OutputExistsError(f"{folder} holds other files and is not a session folder ({SESSION_FILE} "
                                    "missing); refusing to replace it: choose an empty or new folder")
        if _is_session(folder) and not overwrite:
            raise OutputExistsError(f"{folder} already holds a session; refusing to overwrite it (overwrite=True)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = folder.parent / f".{folder.name}.saving-{tag}"
    tmp.mkdir()
    try:
        previous = [folder] if _is_session(folder) else []
        previous += [Path(p) for p in reuse_from]
        _write_state(state, tmp, folder, previous)
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{tag}"
            os.rename(folder, old)
            try:
                os.rename(tmp, folder)
            except BaseException:
                os.rename(old, folder)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ------------------------------------------------------------------ reading
def _session_folder(folder: Path) -> Path:
    """The folder, or the previous save moved aside by a save that crashed between its renames."""
    if _is_session(folder):
        return folder
    if not folder.exists():
        aside = sorted(folder.parent.glob(f".{folder.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for cand in aside:
            if _is_session(cand):
                return cand
        raise SessionError(f"session folder not found: {folder}")
    raise SessionError(f"{folder} is not a session folder: {folder / SESSION_FILE} is missing")


def _read_doc(folder: Path) -> tuple[Path, dict]:
    folder = _session_folder(Path(folder))
    path = folder / SESSION_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SessionError(f"{path} is not valid JSON ({exc}); the session is damaged") from None
    if not isinstance(doc, dict) or doc.get("format") != SESSION_FORMAT:
        raise SessionError(f"{path} is not a napari-lesionlocator session file")
    if int(doc.get("version", 0)) > SESSION_VERSION:
        raise SessionError(f"{path} was written by a newer version (session format {doc.get('version')}, this "
                           f"one reads up to {SESSION_VERSION}); update napari-lesionlocator")
    for key in ("timepoints", "lesions", "observations", "next_id", "patient_id"):
        if key not in doc:
            raise SessionError(f"{path} has no {key!r} entry; the session is damaged")
    return folder, doc


@dataclass
class ImageCheck:
    """Where one timepoint's image was found and whether it is the one saved.

    ``status``: ``"ok"`` (same file checksum), ``"same voxels"`` (file differs, image identical),
    ``"missing"``, ``"changed"``, ``"unreadable"``. ``path`` is the file used (or looked for).
    """

    timepoint: str
    status: str
    path: str | None
    saved_path: str | None
    message: str = ""
    image: Image | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "same voxels")


def _read_tp_image(path: Path, entry: Mapping, name: str) -> Image:
    from .volumes import read_volume

    if path.is_dir():
        img = read_volume(path, series=entry.get("series"))
        img.name = name
        return img
    from .images import read_image

    return read_image(path, name=name)


def _candidates(folder: Path, tp: Mapping, relocate: Mapping[str, str], search: Sequence[Path]) -> list[Path]:
    entry = tp["image"]
    out: list[Path] = []
    for key in (tp["name"], entry.get("path")):
        if key is not None and key in relocate:
            return [Path(os.path.abspath(Path(relocate[key]).expanduser()))]  # said explicitly: that or nothing
    if entry.get("embedded"):
        out.append(folder / entry["relative"])
        return out
    if entry.get("path"):
        out.append(Path(entry["path"]))
    if entry.get("relative"):
        out.append(folder / entry["relative"])
    base = Path(entry.get("path") or entry.get("relative") or "").name
    for d in search:
        if base:
            out.append(Path(d).expanduser() / base)
    seen, unique = set(), []
    for p in (Path(os.path.normpath(os.path.abspath(q))) for q in out):
        key = str(p.resolve()) if p.exists() else str(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _check_image(folder: Path, tp: Mapping, relocate: Mapping[str, str], search: Sequence[Path], *,
                 load: bool) -> ImageCheck:
    entry = tp["image"]
    saved = entry.get("path") or str(folder / entry["relative"])
    name = tp["name"]
    changed: list[str] = []
    for cand in _candidates(folder, tp, relocate, search):
        if not cand.exists():
            continue
        try:
            same_file = file_checksum(cand) == entry.get("file_sha256")
        except OSError as exc:
            return ImageCheck(name, "unreadable", str(cand), saved, f"cannot read {cand}: {exc}")
        if same_file and not load:
            return ImageCheck(name, "ok", str(cand), saved)
        try:
            image = _read_tp_image(cand, entry, name)
        except InputImageError as exc:
            if same_file:
                return ImageCheck(name, "unreadable", str(cand), saved, f"{cand}: {exc}")
            changed.append(f"{cand} (unreadable: {exc})")
            continue
        geom = Geometry.from_metadata(entry["geometry"])
        if same_file:
            if not image.geometry.same_grid(geom):
                return ImageCheck(name, "changed", str(cand), saved, f"{cand} is read on another grid than saved "
                                  f"({'; '.join(image.geometry.grid_differences(geom))})")
            return ImageCheck(name, "ok", str(cand), saved, image=image)
        if image.geometry.same_grid(geom) and voxel_checksum(image) == entry.get("voxels_sha256"):
            return ImageCheck(name, "same voxels", str(cand), saved,
                              f"{cand}: the file differs from the one saved but holds the same image", image)
        changed.append(str(cand))
    if changed:
        return ImageCheck(name, "changed", changed[0], saved,
                          f"timepoint {name}: image {changed[0]} has changed since the session was saved "
                          "(checksum and voxels differ); refusing to put the saved masks on another scan")
    return ImageCheck(name, "missing", None, saved,
                      f"timepoint {name}: image {saved} not found (moved or deleted)")


def _refusal(checks: Sequence[ImageCheck], folder: Path) -> SessionImageError:
    bad = [c for c in checks if not c.ok]
    lines = [c.message for c in bad]
    names = " ".join(f"--relocate {c.timepoint}=NEW_PATH" for c in bad)
    lines.append(f"re-point the session to where the images are now: lesionlocator session {folder} {names} "
                 "--save (or --search FOLDER), or load_session(..., relocate={timepoint: new_path})")
    return SessionImageError("cannot restore the session:\n  " + "\n  ".join(lines), bad)


def check_images(folder: str | os.PathLike, *, relocate: Mapping[str, str] | None = None,
                 search: Sequence[str | os.PathLike] = (), load: bool = False) -> list[ImageCheck]:
    """Check every image of a session (no exception: see each :class:`ImageCheck`)."""
    folder, doc = _read_doc(Path(folder))
    relocate = {str(k): str(v) for k, v in (relocate or {}).items()}
    return [_check_image(folder, tp, relocate, [Path(s) for s in search], load=load) for tp in doc["timepoints"]]


def _load_masks(folder: Path, doc: Mapping, geometries: Mapping[str, Geometry]) -> list[dict]:
    opened: dict[str, np.lib.npyio.NpzFile] = {}
    out = []
    try:
        for rec in doc["observations"]:
            info = rec["mask"]
            path = folder / info["file"]
            tp = rec["timepoint"]
            if tp not in geometries:
                raise SessionError(f"{folder / SESSION_FILE}: lesion {rec['lesion_id']} at unknown timepoint {tp!r}")
            geom = geometries[tp]
            if info["voxels"] == 0 and not path.exists():
                arr = np.zeros(info["shape"], bool)
            else:
                if info["file"] not in opened:
                    try:
                        opened[info["file"]] = np.load(path, allow_pickle=False)
                    except (OSError, ValueError) as exc:
                        raise SessionError(f"cannot read the masks {path}: {exc}; the session is damaged") from None
                try:
                    arr = opened[info["file"]][info["key"]]
                except (KeyError, ValueError, OSError) as exc:
                    raise SessionError(f"{path}: the mask of lesion {rec['lesion_id']} at {tp} is missing or "
                                       f"damaged ({exc})") from None
            if list(arr.shape) != list(info["shape"]) or arr.dtype != bool or int(arr.sum()) != int(info["voxels"]):
                raise SessionError(f"{path}: the mask of lesion {rec['lesion_id']} at {tp} does not match "
                                   f"{SESSION_FILE} (shape {arr.shape} vs {info['shape']}, voxels)")
            try:
                mask = LesionMask(geom, tuple(info["start"]), arr)
            except ValueError as exc:
                raise SessionError(f"{path}: lesion {rec['lesion_id']} at {tp}: {exc}") from None
            out.append({**{k: v for k, v in rec.items() if k != "mask"}, "mask": mask})
    finally:
        for f in opened.values():
            f.close()
    return out


def load_session(folder: str | os.PathLike, *, relocate: Mapping[str, str] | None = None,
                 search: Sequence[str | os.PathLike] = ()):
    """Restore a review saved by :func:`save_session` as a :class:`~..core.study.Study`.

    Parameters
    ----------
    relocate : mapping, optional
        Timepoint name (or the saved image path) -> where that image is now.
    search : paths
        Folders to look in for an image by its file name when it is not where it was saved.

    Raises
    ------
    SessionImageError
        An image moved (not found) or changed (checksum and voxels differ); the message names
        each file and how to re-point the session.
    SessionError
        The session file or a mask file is missing or damaged (the message names the file).
    """
    from ..core.study import Study, Timepoint

    folder, doc = _read_doc(Path(folder))
    relocate = {str(k): str(v) for k, v in (relocate or {}).items()}
    checks = [_check_image(folder, tp, relocate, [Path(s) for s in search], load=True) for tp in doc["timepoints"]]
    if not all(c.ok for c in checks):
        raise _refusal(checks, folder)
    tps = []
    for tp, check in zip(doc["timepoints"], checks, strict=True):
        image = check.image
        if tp["image"].get("embedded"):
            image.source = None  # it lives in the session folder only
        if tp["image"].get("modality") and not image.modality:
            image.modality = tp["image"]["modality"]
        tps.append(Timepoint(image, None, tp.get("date")))
    study = Study(tps, patient_id=doc["patient_id"], sort_by_date=False)
    geometries = {tp.name: tp.geometry for tp in tps}
    state = {
        "timepoints": doc["timepoints"],
        "lesions": doc["lesions"],
        "observations": _load_masks(folder, doc, geometries),
        "not_evaluable": doc.get("not_evaluable", []),
        "candidates": doc.get("candidates", {}),
        "next_id": doc["next_id"],
        "engine": doc.get("engine", {}),
        "notes": doc.get("notes", {}),
        "session_id": doc.get("session_id"),
    }
    try:
        study.restore_state(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise SessionError(f"{folder / SESSION_FILE}: {exc}; the session is damaged") from None
    study.session_folder = folder
    return study


@dataclass
class SessionInfo:
    """What a session holds, from its ``session.json`` alone (no image read)."""

    folder: Path
    saved_at: str
    saved_by: str
    package_version: str
    patient_id: str
    session_id: str | None
    timepoints: list[dict]
    lesions: list[dict]
    next_id: int
    observations: list[dict]
    engine: dict

    @property
    def unverified(self) -> list[tuple[int, str]]:
        return [(int(o["lesion_id"]), o["timepoint"]) for o in self.observations if o.get("review") == "unverified"]


def read_session_info(folder: str | os.PathLike) -> SessionInfo:
    """Read a session's ``session.json`` (SessionError naming the file when it is missing or damaged)."""
    folder, doc = _read_doc(Path(folder))
    return SessionInfo(folder, doc.get("saved_at", ""), doc.get("saved_by", ""), doc.get("package_version", ""),
                       doc["patient_id"], doc.get("session_id"), doc["timepoints"], doc["lesions"],
                       int(doc["next_id"]), doc["observations"], doc.get("engine", {}))


def validate_session(folder: str | os.PathLike, *, relocate: Mapping[str, str] | None = None,
                     search: Sequence[str | os.PathLike] = ()):
    """Fully restore a session (images checked, every mask read) and return ``(study, checks)``.

    Raises what :func:`load_session` raises.
    """
    study = load_session(folder, relocate=relocate, search=search)
    checks = check_images(folder, relocate=relocate, search=search)
    return study, checks


def repoint_session(folder: str | os.PathLike, relocate: Mapping[str, str] | None = None,
                    search: Sequence[str | os.PathLike] = ()) -> list[ImageCheck]:
    """Write the images' new locations into a session (after checking each one is the image saved).

    Only ``session.json`` changes (atomically: temp file + rename); masks are untouched.

    Raises
    ------
    SessionImageError
        Some image is still missing or is a different image.
    """
    folder, doc = _read_doc(Path(folder))
    checks = check_images(folder, relocate=relocate, search=search)
    if not all(c.ok for c in checks):
        raise _refusal(checks, folder)
    for tp, check in zip(doc["timepoints"], checks, strict=True):
        entry = tp["image"]
        if entry.get("embedded"):
            continue
        new = Path(check.path).resolve()
        entry["path"] = str(new)
        entry["relative"] = os.path.relpath(new, folder.resolve())
        entry["file_sha256"] = file_checksum(new)
    doc["repointed_at"] = _now()
    from .atomic import atomic_write_text

    atomic_write_text(folder / SESSION_FILE, json.dumps(doc, indent=1, default=_json_default), overwrite=True)
    return checks


# ------------------------------------------------------------------ autosave and recovery
def default_recovery_root() -> Path:
    """``<user data folder>/recovery``, or ``$LESIONLOCATOR_RECOVERY`` when set."""
    env = os.environ.get("LESIONLOCATOR_RECOVERY")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-lesionlocator")) / "recovery"


def _stamp() -> str:
    now = _dt.datetime.now(_dt.UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"


def autosave(study_or_state, root: str | os.PathLike | None = None, *, keep: int = 2) -> Path:
    """Save the review into ``<root>/<session_id>/<timestamp>/`` (the recovery folder) and delete
    older autosaves of the same session beyond the newest ``keep``.

    Cheap enough every minute from a worker: embedded images are hard-linked from the previous
    autosave, image checksums are cached, masks are small crops. Pass ``study.snapshot_state()``
    (made on the GUI thread) when calling from a worker. Returns the folder written.
    """
    state = study_or_state.snapshot_state() if hasattr(study_or_state, "snapshot_state") else study_or_state
    root = Path(root) if root is not None else default_recovery_root()
    sid = str(state.get("session_id") or "unnamed")
    base = root / sid
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob(".*.saving-*"):  # left by a process killed mid-save
        try:
            if time.time() - stale.stat().st_mtime > 600:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    earlier = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_session(p)),
                     key=lambda p: p.name)
    target = base / _stamp()
    while target.exists():
        time.sleep(0.002)
        target = base / _stamp()
    save_session(state, target, reuse_from=earlier[-1:])
    for old in earlier[: max(0, len(earlier) + 1 - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


@dataclass(frozen=True)
class RecoveryInfo:
    """One autosave that can be offered after a crash."""

    folder: Path
    session_id: str
    saved_at: str
    patient_id: str
    lesions: int
    timepoints: int

    def describe(self) -> str:
        return (f"{self.patient_id}: {self.timepoints} timepoint(s), {self.lesions} lesion(s), autosaved "
                f"{self.saved_at}")


def find_recoveries(root: str | os.PathLike | None = None) -> list[RecoveryInfo]:
    """The newest readable autosave of every session in the recovery folder, newest first."""
    root = Path(root) if root is not None else default_recovery_root()
    if not root.is_dir():
        return []
    out = []
    for base in root.iterdir():
        if not base.is_dir():
            continue
        saves = sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                       key=lambda p: p.name, reverse=True)
        for save in saves:
            try:
                info = read_session_info(save)
            except SessionError:
                continue
            out.append(RecoveryInfo(save, base.name, info.saved_at, info.patient_id, len(info.lesions),
                                    len(info.timepoints)))
            break
    return sorted(out, key=lambda r: r.folder.name, reverse=True)


def latest_recovery(root: str | os.PathLike | None = None, *, exclude: Sequence[str] = ()) -> RecoveryInfo | None:
    """The autosave to offer at start-up (None when there is none), skipping the session ids in
    ``exclude`` (e.g. the session open now)."""
    for rec in find_recoveries(root):
        if rec.session_id not in set(exclude):
            return rec
    return None


def discard_recovery(session_id: str, root: str | os.PathLike | None = None) -> bool:
    """Delete a session's autosaves (after a clean save or close, or when the user declines them)."""
    root = Path(root) if root is not None else default_recovery_root()
    base = root / str(session_id)
    if base.is_dir():
        shutil.rmtree(base, ignore_errors=True)
        return True
    return False

"""One study, end to end, as one batch task: read, segment the baseline, track, measure, write.

:func:`process_study` is the whole per-study pipeline, on the api: ``api.iter_segment`` and
``api.iter_track_series`` (each lesion's own whole mask, with its status), ``api.write_case_outputs``
per timepoint, ``api.measure_timepoints`` for the study's lesion table and RECIST 1.1, and
``core.measurements.measure_lesion_mask`` for the cohort rows (each lesion's own mask, so that
overlapping lesions are measured whole). It writes into a private staging folder next to the
final one and publishes the study with one atomic ``rename``; the staging folder's last file is
``done.json``, which lists the SHA-256 of every other file and the fingerprint of the inputs and
settings. A study folder counts as finished only when ``done.json`` parses, its fingerprint
matches and every checksum verifies (:func:`check_study_output`), so a study cut short by a killed
worker, a full disk or a crash is never taken as done, and a rerun redoes exactly those.

Layout of one finished study (``OUT/studies/<study_id>/``)::

    <id>_tp<k>_lesion_<n>.nii.gz         lesion n's own whole mask at timepoint k (uint8, the source
                                         geometry; empty when lost)
    <id>_tp<k>_lesions.nii.gz            display instance map at k (ids kept, later lesion wins)
    <id>_tp<k>_summary.json              per-lesion status/voxels/volume/notes, overlaps, new-lesion
                                         candidates (follow-ups)
    <id>_lesions.csv, <id>_recist.csv, <id>.json   lesion table + RECIST 1.1 (as `lesionlocator measure`)
    study.json                           the cohort-table rows of this study, notes, timings
    done.json                            written last: checksums + fingerprint
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError, PromptError
from ..core.image import Image, LabelMap
from ..core.results import LesionMask, LesionResult
from .manifest import StudySpec

__all__ = [
    "DONE_MARKER",
    "STUDY_RECORD",
    "StudyOutcome",
    "process_study",
    "check_study_output",
    "study_dir",
    "read_study_record",
    "LESION_ROW_COLUMNS",
]

DONE_MARKER = "done.json"
STUDY_RECORD = "study.json"
STUDIES_SUBDIR = "studies"
_FORMAT = 1

#: columns of the cohort lesion table (one row per lesion per timepoint)
LESION_ROW_COLUMNS = (
    "study_id", "patient", "timepoint", "timepoint_name", "date", "image", "lesion_id", "source", "status",
    "present", "voxel_count", "volume_ml", "long_axis_mm", "short_axis_mm", "axial_slice", "mean_hu", "std_hu",
    "centroid_z_mm", "centroid_y_mm", "centroid_x_mm", "dice", "gt_volume_ml", "messages",
)


@dataclass
class StudyOutcome:
    """What one study task reports back: ``status`` done/failed (skipped is decided before running)."""

    study_id: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    worker: str = ""
    rows: list[dict] = field(default_factory=list)
    n_lesions: int = 0
    n_timepoints: int = 0
    messages: list[str] = field(default_factory=list)
    duplicate: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def study_dir(out: str | os.PathLike, study_id: str) -> Path:
    return Path(out) / STUDIES_SUBDIR / study_id


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_study_output(folder: str | os.PathLike, fingerprint: str | None = None) -> tuple[str, str]:
    """The state of a study folder: ``("done", "")``, ``("stale", why)`` (complete, but made from
    other inputs or settings), ``("incomplete", why)`` or ``("absent", "")``."""
    folder = Path(folder)
    if not folder.exists():
        return "absent", ""
    marker = folder / DONE_MARKER
    if not marker.is_file():
        return "incomplete", f"no {DONE_MARKER} (interrupted)"
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
        files = done["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return "incomplete", f"unreadable {DONE_MARKER} ({exc})"
    for name, digest in files.items():
        p = folder / name
        if not p.is_file():
            return "incomplete", f"{name} is missing"
        if _sha256(p) != digest:
            return "incomplete", f"{name} does not match its checksum"
    if fingerprint is not None and done.get("fingerprint") != fingerprint:
        return "stale", "its outputs were made from other inputs or settings"
    return "done", ""


def read_study_record(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / STUDY_RECORD).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- reading inputs
def _read_inputs(spec: StudySpec):
    from ..io.images import read_label_map
    from ..io.volumes import read_volume

    images: list[Image] = []
    truths: list[LabelMap | None] = []
    for k, tp in enumerate(spec.timepoints):
        if not Path(tp.image).exists():
            raise InputImageError(f"timepoint {k}: image not found: {tp.image}")
        image = read_volume(tp.image)  # an image file or a DICOM series (file or folder)
        image.name = f"{spec.study_id}_tp{k}"
        image.acquisition_date = tp.date or image.acquisition_date
        images.append(image)
        gt = None
        if tp.ground_truth:
            if not Path(tp.ground_truth).exists():
                raise InputImageError(f"timepoint {k}: ground truth not found: {tp.ground_truth}")
            gt = read_label_map(tp.ground_truth, like=image, name=f"{image.name}_truth")
        truths.append(gt)
    return images, truths


def _read_prompts(spec: StudySpec, baseline: Image):
    """(prompts, None) for box/point, or (None, {id: LesionMask}) for prev_mask."""
    from ..core.prompts import read_prompt_json
    from ..io.images import read_label_map

    path = Path(spec.prompts or "")
    if not spec.prompts or not path.exists():
        raise PromptError(f"prompt file not found: {spec.prompts}")
    if spec.prompt_type == "prev_mask":
        labels = read_label_map(path, like=baseline, name=f"{baseline.name}_lesions")
        if not labels.ids:
            raise PromptError(f"{path.name}: the baseline mask is empty, there is no lesion to track")
        from ..engines.base import as_lesion_masks

        return None, as_lesion_masks(labels)
    if path.suffix.lower() == ".json":
        prompts = read_prompt_json(path)
        wrong = [p.lesion_id for p in prompts if p.kind != spec.prompt_type]
        if wrong:
            raise PromptError(f"{path.name}: lesion(s) {wrong} are not {spec.prompt_type} prompts")
    else:
        from ..core.prompts import prompts_from_label_map

        labels = read_label_map(path, like=baseline)
        prompts = prompts_from_label_map(labels.array, spec.prompt_type)
    if not prompts:
        raise PromptError(f"{path.name}: no lesion to prompt")
    checked = []
    for p in prompts:
        if p.kind == "point":
            p.validate(baseline.shape)  # PromptError: outside the volume
            checked.append(p)
        else:
            checked.append(p.clipped(baseline.shape))  # PromptError when entirely outside
    return checked, None


# ----------------------------------------------------------------------------- measuring
def _measure(image: Image, mask: LesionMask, lesion_id: int, timepoint: int):
    """Measure a lesion's own whole mask (inside its crop; same numbers as on the full grid)."""
    from ..core.measurements import measure_lesion_mask

    return measure_lesion_mask(mask, image, lesion_id=lesion_id, timepoint=timepoint)


def _dice(mask: LesionMask, truth: LabelMap | None, lesion_id: int) -> tuple[float, float]:
    from ..core.measurements import dice

    if truth is None:
        return float("nan"), float("nan")
    gt = truth.array == lesion_id
    gt_ml = float(gt.sum()) * truth.geometry.voxel_volume_mm3 / 1000.0
    return float(dice(mask.to_full(), gt)), gt_ml


def _row(spec: StudySpec, k: int, image: Image, result: LesionResult, source: str, truth: LabelMap | None) -> dict:
    m = _measure(image, result.mask, result.lesion_id, k)
    d, gt_ml = _dice(result.mask, truth, result.lesion_id)
    c = m.centroid_mm or (float("nan"),) * 3
    return {
        "study_id": spec.study_id, "patient": spec.patient, "timepoint": k, "timepoint_name": image.name,
        "date": image.acquisition_date, "image": spec.timepoints[k].image, "lesion_id": int(result.lesion_id),
        "source": source, "status": result.status, "present": bool(m.present), "voxel_count": int(m.voxel_count),
        "volume_ml": float(m.volume_ml), "long_axis_mm": float(m.long_axis_mm), "short_axis_mm": float(m.short_axis_mm),
        "axial_slice": m.axial_slice, "mean_hu": float(m.mean_hu), "std_hu": float(m.std_hu),
        "centroid_z_mm": float(c[0]), "centroid_y_mm": float(c[1]), "centroid_x_mm": float(c[2]),
        "dice": d, "gt_volume_ml": gt_ml, "messages": "; ".join(result.messages),
    }


# ----------------------------------------------------------------------------- writing
def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _clean_float(v):
    return None if isinstance(v, float) and not np.isfinite(v) else v


def _publish(staging: Path, final: Path, fingerprint: str, overwrite: bool) -> bool:
    """Move the finished staging folder into place atomically. Returns False when an equivalent
    finished study is already there (a duplicate run: the staging folder is discarded)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        try:
            os.rename(staging, final)  # atomic; fails when final exists (non-empty)
            return True
        except OSError:
            if not final.exists():
                raise
        state, why = check_study_output(final, fingerprint)
        if state == "done":
            shutil.rmtree(staging, ignore_errors=True)
            return False
        if state == "stale" and not overwrite:
            shutil.rmtree(staging, ignore_errors=True)
            from ..core.errors import OutputExistsError

            raise OutputExistsError(f"{final} holds a finished study from other inputs or settings; "
                                    "rerun with --overwrite to replace it")
        # an interrupted (or, with overwrite, a stale) study: move it aside, then retry the rename
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(final, trash)
        except OSError:
            continue  # someone else moved it first
        shutil.rmtree(trash, ignore_errors=True)
    raise OSError(f"could not publish {final}: the folder keeps changing (another run on the same output?)")


def _write_outputs(staging: Path, spec: StudySpec, images: list[Image], per_tp: list[dict[int, LesionResult]],
                   candidates: list[list[dict] | None], rows: list[dict], messages: list[str], timings: dict,
                   fingerprint: str) -> dict[str, str]:
    from ..api import measure_timepoints, write_case_outputs, write_measurements
    from ..core.results import compose_label_map
    from ..io.tables import atomic_write_text

    written: list[Path] = []
    maps = []
    for image, lesions, cands in zip(images, per_tp, candidates, strict=True):
        ordered = {lid: lesions[lid] for lid in sorted(lesions)}
        written.extend(write_case_outputs(staging, image.name, ordered, image.geometry, new_candidates=cands))
        maps.append((image, compose_label_map(ordered, image.geometry, f"{image.name}_lesions")))
    measured = measure_timepoints(maps)  # RECIST 1.1 and the study's lesion table, as `lesionlocator measure`
    messages.extend(measured.notes)
    written.extend(write_measurements(staging / spec.study_id, measured).values())
    record = {
        "format": _FORMAT, "study_id": spec.study_id, "patient": spec.patient, "spec": spec.to_dict(),
        "rows": [{k: _clean_float(v) for k, v in r.items()} for r in rows], "messages": messages,
        "timings_s": timings, "recist": measured.recist.to_dict() if measured.recist is not None else None,
        "recist_targets": list(measured.targets),
    }
    written.append(atomic_write_text(staging / STUDY_RECORD, json.dumps(record, indent=1, default=_json_default)))
    files = {p.name: _sha256(p) for p in written}
    done = {"format": _FORMAT, "study_id": spec.study_id, "fingerprint": fingerprint, "files": files,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid()}
    atomic_write_text(staging / DONE_MARKER, json.dumps(done, indent=1))  # last: the study is complete
    return files


def process_study(spec: StudySpec, engine, out: str | os.PathLike, *, fingerprint: str, overwrite: bool = False,
                  engine_lock=None, worker: str = "") -> StudyOutcome:
    """Run one study and publish its outputs under ``out/studies/<study_id>``.

    Raises what the study's inputs or the engine raise (the caller records it as the study's
    failure); on any error the staging folder is removed and nothing is published.
    ``engine_lock`` (a lock or None) serialises the engine calls when several studies share one
    engine that is not safe to call from two threads at once.
    """
    from .. import api

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    final = study_dir(out, spec.study_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.study_id}.tmp-", dir=final.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; the published folder gets the umask's mode
    try:
        images, truths = _read_inputs(spec)
        prompts, given = _read_prompts(spec, images[0])
        timings["read_s"] = time.perf_counter() - t0
        messages: list[str] = []
        lock = engine_lock if engine_lock is not None else _NoLock()
        t1 = time.perf_counter()
        with lock:
            if prompts is not None:
                seg = api.run_sync(api.iter_segment(engine, images[0], prompts))
                baseline = {lid: seg.lesions[lid] for lid in sorted(seg.lesions)}
                messages.extend(seg.messages)
                source0 = "segmented"
            else:
                baseline = {lid: LesionResult(lid, m, "ok", ["baseline mask given"]) for lid, m in given.items()}
                source0 = "given"
            timings["segment_s"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            masks = {lid: r.mask for lid, r in baseline.items() if not r.mask.is_empty}
            series = api.run_sync(api.iter_track_series(engine, images[0], masks, images[1:])) \
                if len(images) > 1 and masks else None
            timings["track_s"] = time.perf_counter() - t2
        per_tp: list[dict[int, LesionResult]] = [baseline]
        candidates: list[list[dict] | None] = [None]
        for k in range(1, len(images)):
            tracked = dict(series.results[k - 1].lesions) if series is not None else {}
            for lid in baseline:  # a lesion empty at baseline, or lost earlier, stays lost
                if lid not in tracked:
                    tracked[lid] = LesionResult(lid, LesionMask.empty(images[k].geometry), "lost",
                                                ["not tracked: no mask at the previous timepoint"])
            per_tp.append(tracked)
            candidates.append(list(series.results[k - 1].new_candidates) if series is not None else [])
            if series is not None:
                messages.extend(f"tp{k}: {m}" for m in series.results[k - 1].messages)
        t3 = time.perf_counter()
        rows = []
        for k, (image, lesions) in enumerate(zip(images, per_tp, strict=True)):
            for lid in sorted(lesions):
                rows.append(_row(spec, k, image, lesions[lid], source0 if k == 0 else "tracked", truths[k]))
        timings["measure_s"] = time.perf_counter() - t3
        t4 = time.perf_counter()
        _write_outputs(staging, spec, images, per_tp, candidates, rows, messages, timings, fingerprint)
        timings["write_s"] = time.perf_counter() - t4
        published = _publish(staging, final, fingerprint, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return StudyOutcome(spec.study_id, "done", seconds=time.perf_counter() - t0, worker=worker, rows=rows,
                        n_lesions=len(baseline), n_timepoints=len(images), messages=messages,
                        duplicate=not published)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def outcome_from_record(record: Mapping, status: str = "skipped") -> StudyOutcome:
    """A finished study's outcome read back from its ``study.json`` (for skipped studies)."""
    rows = [{k: (float("nan") if v is None and k in _FLOAT_COLS else v) for k, v in r.items()}
            for r in record.get("rows", [])]
    return StudyOutcome(record["study_id"], status, rows=rows, n_lesions=len({r["lesion_id"] for r in rows}),
                        n_timepoints=len(record.get("spec", {}).get("timepoints", [])),
                        messages=list(record.get("messages", [])))


_FLOAT_COLS = {"volume_ml", "long_axis_mm", "short_axis_mm", "mean_hu", "std_hu", "centroid_z_mm", "centroid_y_mm",
               "centroid_x_mm", "dice", "gt_volume_ml"}

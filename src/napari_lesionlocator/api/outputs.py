"""A case's output files: each lesion's own whole mask, the display instance map and the summary.

Files of case ``C`` in the output folder::

    C_lesion_<N>.nii.gz   lesion N's own whole mask (uint8 0/1, the source geometry); masks of two
                          lesions may overlap and then the shared voxels are set in both files
    C_lesions.nii.gz      the display instance map (later lesion wins where masks overlap)
    C_summary.json        {"case", "lesions": [{"id", "status", "voxels", "volume_ml", "messages"}],
                           "overlaps": [{"ids": [a, b], "voxels": n}], ("new_candidates": [...])}

:class:`CaseWriter` writes a case per lesion as each one finishes, into ``C.partial/`` beside the
outputs (with ``progress.jsonl``, so that a cancelled run keeps what it finished and a resumed one
redoes only the rest), then replaces the case's outputs as a whole: the old summary goes first (the
case reads as unfinished while files move), the new files are moved in, the old case's lesion files
that the new run does not have are removed, and the summary is written last. Every file goes through
the package's atomic writers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import LesionLocatorError, OutputExistsError
from ..core.geometry import Geometry
from ..core.results import LesionMask, LesionResult, compose_label_map, overlaps

__all__ = [
    "lesion_file",
    "instance_file",
    "summary_file",
    "staging_folder",
    "case_outputs",
    "case_lesion_files",
    "case_summary",
    "CaseWriter",
    "write_case_outputs",
    "read_case_lesions",
    "case_is_complete",
    "output_is_valid",
]

PROGRESS = "progress.jsonl"  # one JSON line per finished lesion, after a header line


def lesion_file(out: str | os.PathLike, case: str, lesion_id: int) -> Path:
    return Path(out) / f"{case}_lesion_{int(lesion_id)}.nii.gz"


def instance_file(out: str | os.PathLike, case: str) -> Path:
    return Path(out) / f"{case}_lesions.nii.gz"


def summary_file(out: str | os.PathLike, case: str) -> Path:
    return Path(out) / f"{case}_summary.json"


def staging_folder(out: str | os.PathLike, case: str) -> Path:
    """Where a case's finished lesions wait until the whole case is done (kept when a run is cancelled)."""
    return Path(out) / f"{case}.partial"


def case_outputs(out: str | os.PathLike, case: str, ids: Iterable[int]) -> list[Path]:
    """Every file a finished case has: one mask per id, the instance map, the summary (last)."""
    return [lesion_file(out, case, i) for i in ids] + [instance_file(out, case), summary_file(out, case)]


def case_lesion_files(out: str | os.PathLike, case: str) -> dict[int, Path]:
    """The ``<case>_lesion_<N>.nii.gz`` files present in ``out`` (exactly this case's, by id)."""
    pattern = re.compile(rf"^{re.escape(case)}_lesion_(\d+)\.nii\.gz$")
    found = {}
    folder = Path(out)
    if folder.is_dir():
        for p in folder.iterdir():
            m = pattern.match(p.name)
            if m:
                found[int(m.group(1))] = p
    return found


def case_summary(
    lesions: Mapping[int, LesionResult] | Iterable[LesionResult],
    *,
    case: str | None = None,
    new_candidates: Sequence[dict] | None = None,
) -> dict:
    """The ``<case>_summary.json`` document: each lesion's status and size, the overlaps between lesions'
    own masks, and (tracking) the new-lesion candidates proposed at this follow-up."""
    items = list(lesions.values() if isinstance(lesions, Mapping) else lesions)
    doc: dict = {}
    if case is not None:
        doc["case"] = case
    doc["lesions"] = [({"case": case} if case is not None else {}) | r.summary() for r in items]
    doc["overlaps"] = [{"ids": [a, b], "voxels": int(n)} for a, b, n in overlaps(items)]
    if new_candidates is not None:
        doc["new_candidates"] = [_jsonable(c) for c in new_candidates]
    return doc


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _write_json(path: Path, doc: dict) -> Path:
    from ..io.tables import atomic_write_text

    return atomic_write_text(path, json.dumps(_jsonable(doc), indent=2) + "\n", overwrite=True)


def output_is_valid(path: Path, geometry: Geometry) -> bool:
    """Whether ``path`` is a complete image file on exactly ``geometry``'s grid (header and data)."""
    if not path.is_file():
        return False
    from ..io import images

    verify = getattr(images, "verify_image_file", None)
    try:
        if verify is not None:
            verify(path, geometry)
        else:
            geometry.require_same_grid(images.read_label_map(path).geometry, what=path.name)
    except (LesionLocatorError, OSError, ValueError):
        return False
    return True


def _read_mask(path: Path, geometry: Geometry) -> LesionMask:
    from ..io.images import read_label_map

    labels = read_label_map(path)
    geometry.require_same_grid(labels.geometry, what=f"{path.name} and its image")
    return LesionMask.from_full(geometry, labels.array != 0)


def _result_from_entry(entry: Mapping, mask: LesionMask) -> LesionResult:
    status = str(entry.get("status", "ok"))
    return LesionResult(int(entry["id"]), mask, status, [str(m) for m in entry.get("messages", [])],
                        dict(entry.get("provenance", {})))


class CaseWriter:
    """Write one case's outputs lesion by lesion, then replace the case's files as a whole.

    Parameters
    ----------
    out : folder
        Output folder (created if needed).
    case : str
        The case name (files ``<case>_lesion_<N>.nii.gz``, ``<case>_lesions.nii.gz``, ``<case>_summary.json``).
    geometry : Geometry
        The source image's grid: every mask is written with exactly it.
    ids : sequence of int
        Every lesion id the case will have, in display order (later wins in the instance map).
    replace : bool
        Existing outputs of the case may be replaced (``--overwrite``, or finishing an unfinished case);
        otherwise finding one is an :class:`OutputExistsError` before anything is written.
    resume : bool
        Keep the lesions a cancelled run of the same job finished (``--continue_prediction``).
    run_key : str, optional
        Identifies the job (prompts, engine settings): a partial run with another key is not resumed.

    Use::

        w = CaseWriter(out, "case", image.geometry, ids, replace=..., resume=...)
        for lid in w.pending: ... w.add(lesion_result)
        w.finish()
    """

    def __init__(self, out: str | os.PathLike, case: str, geometry: Geometry, ids: Sequence[int], *,
                 replace: bool = False, resume: bool = False, run_key: str | None = None) -> None:
        self.out = Path(out)
        self.case = case
        self.geometry = geometry
        self.ids = [int(i) for i in ids]
        self.replace = replace
        self.run_key = run_key
        self.staging = staging_folder(self.out, case)
        self.done: dict[int, LesionResult] = {}
        self.resumed: list[int] = []
        if not replace:
            existing = [p for p in case_outputs(self.out, case, self.ids) if p.exists()]
            if existing or self.staging.exists() and not resume:
                shown = ", ".join(p.name for p in (existing or [self.staging])[:4])
                raise OutputExistsError(f"case {case}: output(s) already exist in {self.out}: {shown}")
        if self.staging.exists():
            if resume:
                self._load_partial()
            if self.done:
                self._save_progress()  # the lesions kept, without lines a crash may have cut
            else:
                shutil.rmtree(self.staging)
        # the staging folder appears with the first finished lesion: a run that fails before leaves nothing

    def _ensure_staging(self) -> None:
        if not self.staging.is_dir():
            self.staging.mkdir(parents=True)
            self._save_progress()

    # ------------------------------------------------------------ progress
    def _save_progress(self) -> None:
        """A fresh progress file: the header line, then one line per lesion already done (resumed)."""
        header = {"case": self.case, "run_key": self.run_key, "ids": self.ids}
        lines = [json.dumps(header)] + [self._entry_line(r) for r in self.done.values()]
        from ..io.tables import atomic_write_text

        atomic_write_text(self.staging / PROGRESS, "\n".join(lines) + "\n", overwrite=True)

    @staticmethod
    def _entry_line(r: LesionResult) -> str:
        return json.dumps(_jsonable(r.summary() | {"provenance": r.provenance}))

    def _append_progress(self, r: LesionResult) -> None:
        # Appending keeps the cost per lesion constant (a 10,000-lesion case); a line cut by a crash is
        # ignored on resume and that lesion is redone.
        with open(self.staging / PROGRESS, "a", encoding="utf-8") as fh:
            fh.write(self._entry_line(r) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _load_partial(self) -> None:
        try:
            lines = (self.staging / PROGRESS).read_text(encoding="utf-8").splitlines()
            header = json.loads(lines[0])
        except (OSError, ValueError, IndexError):
            return
        if not isinstance(header, dict) or header.get("run_key") != self.run_key or header.get("case") != self.case:
            return  # another job's partial results: start again
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                lid = int(entry["id"])
            except (ValueError, KeyError, TypeError):
                continue
            path = lesion_file(self.staging, self.case, lid)
            if lid not in self.ids or not output_is_valid(path, self.geometry):
                continue
            self.done[lid] = _result_from_entry(entry, _read_mask(path, self.geometry))
        self.resumed = [i for i in self.ids if i in self.done]

    @property
    def pending(self) -> list[int]:
        """Ids not finished yet, in order."""
        return [i for i in self.ids if i not in self.done]

    # ------------------------------------------------------------ writing
    def add(self, lesion: LesionResult) -> Path:
        """Write one finished lesion's own whole mask (into the staging folder) and record it."""
        from ..io.images import write_label_map

        self._ensure_staging()
        lid = int(lesion.lesion_id)
        if lid not in self.ids:
            self.ids.append(lid)
        self.geometry.require_same_grid(lesion.mask.geometry, what=f"lesion {lid}'s mask and case {self.case}")
        path = write_label_map(lesion.mask.to_full().astype(np.uint8), lesion_file(self.staging, self.case, lid),
                               geometry=self.geometry, overwrite=True)
        self.done[lid] = lesion
        self._append_progress(lesion)
        return path

    def finish(self, *, new_candidates: Sequence[dict] | None = None) -> list[Path]:
        """Write the display map and the summary, then move the case into place as a whole.

        Every id must have been added. Returns the final paths (lesion files, instance map, summary)."""
        from ..io.images import write_label_map

        missing = self.pending
        if missing:
            raise ValueError(f"case {self.case}: lesion(s) {missing} were never added")
        self._ensure_staging()
        ordered = {i: self.done[i] for i in self.ids}
        labels = compose_label_map(ordered, self.geometry, f"{self.case}_lesions")
        write_label_map(labels, instance_file(self.staging, self.case), overwrite=True)
        summary = case_summary(ordered, case=self.case, new_candidates=new_candidates)
        _write_json(summary_file(self.staging, self.case), summary)
        return self._commit()

    def _commit(self) -> list[Path]:
        self.out.mkdir(parents=True, exist_ok=True)
        final_summary = summary_file(self.out, self.case)
        # 1. the case reads as unfinished while its files move
        final_summary.unlink(missing_ok=True)
        moved = []
        # 2. each lesion's own file, then the display map
        for lid in self.ids:
            src = lesion_file(self.staging, self.case, lid)
            dst = lesion_file(self.out, self.case, lid)
            os.replace(src, dst)
            moved.append(dst)
        os.replace(instance_file(self.staging, self.case), instance_file(self.out, self.case))
        moved.append(instance_file(self.out, self.case))
        # 3. the old run's lesions this run does not have (only now: the new files are in place)
        keep = set(self.ids)
        for lid, path in case_lesion_files(self.out, self.case).items():
            if lid not in keep:
                path.unlink(missing_ok=True)
        # 4. the summary last: its presence marks the case finished
        os.replace(summary_file(self.staging, self.case), final_summary)
        moved.append(final_summary)
        shutil.rmtree(self.staging, ignore_errors=True)
        return moved

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"CaseWriter({self.case!r}, {len(self.done)}/{len(self.ids)} done)"


def write_case_outputs(out: str | os.PathLike, case: str, lesions: Mapping[int, LesionResult], geometry: Geometry,
                       *, overwrite: bool = False, new_candidates: Sequence[dict] | None = None) -> list[Path]:
    """Write a finished case at once (each lesion's own mask, the display map, the summary)."""
    writer = CaseWriter(out, case, geometry, list(lesions), replace=overwrite)
    for lesion in lesions.values():
        writer.add(lesion)
    return writer.finish(new_candidates=new_candidates)


def case_is_complete(out: str | os.PathLike, case: str, ids: Iterable[int], geometry: Geometry) -> bool:
    """Whether case ``case`` is finished with exactly ``ids``: its summary lists them, and every lesion
    file and the instance map are complete and on ``geometry``'s grid (headers and data checked)."""
    try:
        doc = json.loads(summary_file(out, case).read_text(encoding="utf-8"))
        listed = {int(e["id"]) for e in doc["lesions"]}
    except (OSError, ValueError, KeyError, TypeError):
        return False
    wanted = {int(i) for i in ids}
    if listed != wanted:
        return False
    return all(output_is_valid(p, geometry) for p in case_outputs(out, case, sorted(wanted))[:-1])


def read_case_lesions(out: str | os.PathLike, case: str, geometry: Geometry) -> dict[int, LesionResult] | None:
    """A finished case read back (each lesion's own mask from its file, status from the summary), or
    None when the case is not complete and valid (no summary, a lesion file missing, unreadable or on
    another grid)."""
    path = summary_file(out, case)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = list(doc["lesions"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    out_lesions: dict[int, LesionResult] = {}
    for entry in entries:
        try:
            lid = int(entry["id"])
        except (KeyError, TypeError, ValueError):
            return None
        f = lesion_file(out, case, lid)
        if not output_is_valid(f, geometry):
            return None
        out_lesions[lid] = _result_from_entry(entry, _read_mask(f, geometry))
    if not output_is_valid(instance_file(out, case), geometry):
        return None
    return out_lesions

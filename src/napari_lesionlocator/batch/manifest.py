"""Cohort manifests: which studies a batch runs, read from CSV, JSON or a dataset-layout folder.

A study is one patient's series of scans (baseline first), the prompts that say which lesions to
follow (prompt JSON or a label map at the baseline, or the baseline lesions' own masks), and,
optionally, a ground-truth label map per timepoint (Dice is then reported).

CSV (one row per timepoint; paths relative to the CSV's folder)::

    patient,study,timepoint,date,image,ground_truth,prompts,prompt_type
    P001,P001_2024,0,2024-01-15,P001/ct0.nii.gz,P001/gt0.nii.gz,P001/prompts.json,box
    P001,P001_2024,1,2024-04-16,P001/ct1.nii.gz,P001/gt1.nii.gz,,

``patient`` and ``image`` are required; ``study`` defaults to the patient; rows are ordered by
``timepoint`` when given, else by ``date`` when every row has one, else as listed. ``prompts``
(JSON or label map) and ``prompt_type`` (box, point or prev_mask) may stand on any row of the
study; ``baseline_mask`` (each lesion's mask at the baseline) means ``prompt_type=prev_mask``.

JSON: ``{"studies": [...]}`` or a list of studies::

    {"studies": [{"patient": "P001", "study": "P001_2024", "prompts": "P001/prompts.json",
                  "prompt_type": "box",
                  "timepoints": [{"image": "P001/ct0.nii.gz", "date": "2024-01-15",
                                  "ground_truth": "P001/gt0.nii.gz"}, ...]}]}

Folder: the LesionLocator synthetic-dataset layout (``Baseline/``, ``Synthetic_Follow_Up*/``,
``naming.csv``; :mod:`..io.study_layout`), one study per case. Each timepoint's label map is its
ground truth and the baseline's is the prompt (boxes by default; ``prev_mask`` takes the masks
as they are, as LesionLocator's tracking benchmark does).

Structural problems (missing columns, a study without images, duplicate study ids, unknown
prompt types) stop the batch before anything runs (:class:`ManifestError`); a missing or corrupt
file only fails its own study when it runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.errors import InputImageError
from ..core.study import parse_date

__all__ = [
    "PROMPT_TYPES",
    "ManifestError",
    "TimepointSpec",
    "StudySpec",
    "load_manifest",
    "input_fingerprint",
    "write_manifest_csv",
]

PROMPT_TYPES = ("box", "point", "prev_mask")


class ManifestError(InputImageError):
    """The manifest cannot be used (exit code 2); nothing was run."""


@dataclass(frozen=True)
class TimepointSpec:
    """One scan of a study: its image, acquisition date (ISO or None) and optional ground truth."""

    image: str
    date: str | None = None
    ground_truth: str | None = None


@dataclass(frozen=True)
class StudySpec:
    """One task of a batch: a patient's scans in time order, with what to segment at the baseline.

    ``prompts`` is a prompt JSON or label map at the baseline (``prompt_type`` box or point), or
    with ``prompt_type == "prev_mask"`` a label map of the baseline lesions' masks themselves.
    Paths are absolute.
    """

    study_id: str
    patient: str
    timepoints: tuple[TimepointSpec, ...]
    prompts: str | None
    prompt_type: str = "box"
    source: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timepoints"] = [asdict(t) for t in self.timepoints]
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> StudySpec:
        tps = tuple(TimepointSpec(**t) for t in d["timepoints"])
        return cls(d["study_id"], d["patient"], tps, d.get("prompts"), d.get("prompt_type", "box"),
                   d.get("source", ""), dict(d.get("extra") or {}))

    @property
    def input_paths(self) -> list[str]:
        paths = [t.image for t in self.timepoints]
        paths += [t.ground_truth for t in self.timepoints if t.ground_truth]
        if self.prompts:
            paths.append(self.prompts)
        return paths


def input_fingerprint(spec: StudySpec, settings: Mapping) -> str:
    """SHA-256 over the study's description, the engine settings, and every input file's size and
    modification time: a finished study is only reused for the same inputs and settings."""
    stats = {}
    for p in spec.input_paths:
        try:
            st = os.stat(p)
            stats[p] = [st.st_size, st.st_mtime_ns]
        except OSError:
            stats[p] = None
    blob = json.dumps({"spec": spec.to_dict(), "settings": dict(settings), "inputs": stats}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------------------- reading
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe_id(text: str) -> str:
    """A study id usable as a folder name (other characters become '_')."""
    out = _SAFE_ID.sub("_", str(text).strip()).strip("._")
    if not out:
        raise ManifestError(f"study id {text!r} has no letter or digit")
    return out


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    p = Path(str(value).strip()).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _prompt_type(value: str | None, default: str, where: str) -> str:
    kind = (value or "").strip() or default
    if kind not in PROMPT_TYPES:
        raise ManifestError(f"{where}: prompt_type {kind!r} is not one of {', '.join(PROMPT_TYPES)}")
    return kind


def load_manifest(path: str | os.PathLike, *, prompt_type: str = "box") -> list[StudySpec]:
    """The studies of a CSV, JSON or dataset-layout folder manifest (see the module docstring).

    ``prompt_type`` is the default for studies that do not say (and the only choice for a layout
    folder, whose baseline label maps are the prompts).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}")
    if prompt_type not in PROMPT_TYPES:
        raise ManifestError(f"prompt type {prompt_type!r} is not one of {', '.join(PROMPT_TYPES)}")
    if path.is_dir():
        specs = _from_layout(path.resolve(), prompt_type)
    elif path.suffix.lower() == ".json":
        specs = _from_json(path.resolve(), prompt_type)
    elif path.suffix.lower() in (".csv", ".tsv"):
        specs = _from_csv(path.resolve(), prompt_type)
    else:
        raise ManifestError(f"{path.name}: a manifest is a .csv or .json file, or a dataset-layout folder")
    if not specs:
        raise ManifestError(f"{path}: the manifest lists no study")
    seen: dict[str, str] = {}
    for s in specs:
        if s.study_id in seen:
            raise ManifestError(f"{path}: study id {s.study_id!r} appears twice ({seen[s.study_id]} and {s.source})")
        seen[s.study_id] = s.source
    return specs


def _finish(study_id: str, patient: str, tps: list[TimepointSpec], prompts: str | None, kind: str,
            where: str) -> StudySpec:
    if not tps:
        raise ManifestError(f"{where}: study {study_id!r} has no timepoint")
    if prompts is None:
        raise ManifestError(f"{where}: study {study_id!r} has no prompts (a prompt JSON or label map for the "
                            "baseline, or baseline_mask)")
    return StudySpec(_safe_id(study_id), str(patient), tuple(tps), prompts, kind, where)


def _from_csv(path: Path, default_kind: str) -> list[StudySpec]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if reader.fieldnames is None:
            raise ManifestError(f"{path.name}: empty CSV (no header)")
        cols = {c.strip().lower() for c in reader.fieldnames if c}
        missing = {"patient", "image"} - cols
        if missing:
            raise ManifestError(f"{path.name}: missing column(s) {', '.join(sorted(missing))}; columns are "
                                "patient, study, timepoint, date, image, ground_truth, prompts, prompt_type, "
                                "baseline_mask")
        rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    groups: dict[str, list[tuple[int, dict]]] = {}
    for n, row in enumerate(rows, start=2):
        if not any(row.values()):
            continue
        if not row.get("patient") or not row.get("image"):
            raise ManifestError(f"{path.name} line {n}: patient and image are required")
        sid = row.get("study") or row["patient"]
        groups.setdefault(sid, []).append((n, row))
    base = path.parent
    specs = []
    for sid, items in groups.items():
        where = f"{path.name} lines {', '.join(str(n) for n, _ in items)}"
        patients = {r["patient"] for _, r in items}
        if len(patients) > 1:
            raise ManifestError(f"{where}: study {sid!r} mixes patients {sorted(patients)}")
        items = _ordered(items, where)
        prompts = kind = None
        for n, r in items:
            for col, implied in (("prompts", None), ("baseline_mask", "prev_mask")):
                if r.get(col):
                    if prompts is not None:
                        raise ManifestError(f"{path.name} line {n}: study {sid!r} has more than one prompt file")
                    prompts = _resolve(base, r[col])
                    kind = implied or r.get("prompt_type") or None
            if r.get("prompt_type") and kind is None:
                kind = r["prompt_type"]
        kind = _prompt_type(kind, default_kind, where)
        tps = [TimepointSpec(_resolve(base, r["image"]), _date(r.get("date"), f"{path.name} line {n}"),
                             _resolve(base, r.get("ground_truth"))) for n, r in items]
        specs.append(_finish(sid, next(iter(patients)), tps, prompts, kind, where))
    return specs


def _date(value: str | None, where: str) -> str | None:
    try:
        d = parse_date(value or None)
    except ValueError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    return d.isoformat() if d else None


def _ordered(items: list[tuple[int, dict]], where: str) -> list[tuple[int, dict]]:
    if all(r.get("timepoint") for _, r in items):
        try:
            keyed = [(int(r["timepoint"]), n, r) for n, r in items]
        except ValueError:
            raise ManifestError(f"{where}: timepoint must be an integer (0 = baseline)") from None
        idx = [k for k, _, _ in keyed]
        if len(set(idx)) != len(idx):
            raise ManifestError(f"{where}: timepoint numbers repeat: {sorted(idx)}")
        return [(n, r) for _, n, r in sorted(keyed)]
    if all(r.get("date") for _, r in items):
        return sorted(items, key=lambda it: _date(it[1]["date"], f"{where}") or "")
    return items


def _from_json(path: Path, default_kind: str) -> list[StudySpec]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path.name}: not readable as JSON ({exc})") from None
    studies = data.get("studies") if isinstance(data, dict) else data
    if not isinstance(studies, list):
        raise ManifestError(f"{path.name}: expected a list of studies or {{'studies': [...]}}")
    base = path.parent
    specs = []
    for i, s in enumerate(studies):
        where = f"{path.name} study #{i}"
        if not isinstance(s, dict) or "patient" not in s or not isinstance(s.get("timepoints"), list):
            raise ManifestError(f"{where}: each study needs 'patient' and a list 'timepoints'")
        tps = []
        for k, t in enumerate(s["timepoints"]):
            if isinstance(t, str):
                t = {"image": t}
            if not isinstance(t, dict) or not t.get("image"):
                raise ManifestError(f"{where} timepoint #{k}: needs 'image'")
            tps.append(TimepointSpec(_resolve(base, t["image"]), _date(t.get("date"), f"{where} timepoint #{k}"),
                                     _resolve(base, t.get("ground_truth"))))
        if s.get("prompts") and s.get("baseline_mask"):
            raise ManifestError(f"{where}: give either 'prompts' or 'baseline_mask', not both")
        if s.get("baseline_mask"):
            prompts, kind = _resolve(base, s["baseline_mask"]), "prev_mask"
        else:
            prompts, kind = _resolve(base, s.get("prompts")), s.get("prompt_type")
        kind = _prompt_type(kind, default_kind, where)
        specs.append(_finish(str(s.get("study") or s["patient"]), str(s["patient"]), tps, prompts, kind, where))
    return specs


def _from_layout(root: Path, kind: str) -> list[StudySpec]:
    from ..io.study_layout import layout_rows

    try:
        cases = layout_rows(root)
    except InputImageError as exc:
        raise ManifestError(str(exc)) from None
    specs = []
    for case in sorted(cases):
        rows = sorted(cases[case], key=lambda r: int(r["timepoint"]))
        where = f"{root.name}/{case}"
        if [int(r["timepoint"]) for r in rows] != list(range(len(rows))):
            raise ManifestError(f"{where}: timepoints {[r['timepoint'] for r in rows]}; expected 0..{len(rows) - 1}")
        tps = [TimepointSpec(str(root / r["image"]), _date(r.get("acquisition_date"), where),
                             str(root / r["label"]) if r.get("label") else None) for r in rows]
        prompts = tps[0].ground_truth
        if prompts is None:
            raise ManifestError(f"{where}: no baseline label map (Baseline/labels/{case}...) to prompt from")
        specs.append(StudySpec(_safe_id(case), case, tuple(tps), prompts, kind, where))
    return specs


def write_manifest_csv(specs: Sequence[StudySpec], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write studies as a CSV manifest (absolute paths); the inverse of :func:`load_manifest`."""
    import io

    from ..io.tables import atomic_write_text

    buf = io.StringIO()
    cols = ["patient", "study", "timepoint", "date", "image", "ground_truth", "prompts", "prompt_type"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for s in specs:
        for k, t in enumerate(s.timepoints):
            w.writerow({"patient": s.patient, "study": s.study_id, "timepoint": k, "date": t.date or "",
                        "image": t.image, "ground_truth": t.ground_truth or "",
                        "prompts": s.prompts if k == 0 else "", "prompt_type": s.prompt_type if k == 0 else ""})
    return atomic_write_text(path, buf.getvalue(), overwrite=overwrite)

"""The LesionLocator synthetic follow-up dataset layout: read and write.

API (all a study generator needs)::

    write_study_layout(folder, timepoints, *, case=None, dates=None, overwrite=False) -> Path
        timepoints: list of (Image, LabelMap | None) in timepoint order (baseline first).
        case: file stem used in every timepoint folder (default: the baseline image's name).
        dates: optional ISO dates per timepoint (default: each Image.acquisition_date).
    read_study_layout(folder, *, case=None) -> list[tuple[Image, LabelMap | None]]
        in timepoint order; Image.name = "<case>_<folder>", acquisition_date from naming.csv.
    read_study(folder, *, case=None) -> core.study.Study
    list_layout_cases(folder) -> list[str]
    layout_rows(folder) -> {case: [naming.csv row, ...]}   (paths only, no image read)

Folder layout (several cases may share one root)::

    folder/
      Baseline/images/<case>.nii.gz        Baseline/labels/<case>.nii.gz
      Synthetic_Follow_Up/images/...       Synthetic_Follow_Up/labels/...
      Synthetic_Follow_Up_2/images/...     (third timepoint, then _3, ...)
      naming.csv

``naming.csv`` has one row per (case, timepoint) with columns
``case, timepoint, folder, image, label, acquisition_date``: ``timepoint`` is 0 for the baseline,
``image``/``label`` are paths relative to the root (``label`` empty when there is none),
``acquisition_date`` is ISO or empty. Labels are instance maps whose ids are the same lesion at
every timepoint.

When ``naming.csv`` is missing or has other columns (as in the published dataset), the reader
pairs files by name across the timepoint folders instead, ignoring an nnU-Net channel suffix
(``case_0000.nii.gz`` is the image of ``case``).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import InputImageError, OutputExistsError
from ..core.image import Image, LabelMap
from ..core.study import Study, Timepoint, parse_date
from .images import IMAGE_SUFFIXES, case_name, read_image, read_label_map, write_image, write_label_map

__all__ = [
    "NAMING_CSV",
    "NAMING_COLUMNS",
    "timepoint_folder",
    "write_study_layout",
    "read_study_layout",
    "read_study",
    "list_layout_cases",
    "layout_rows",
]

NAMING_CSV = "naming.csv"
NAMING_COLUMNS = ("case", "timepoint", "folder", "image", "label", "acquisition_date")
SUFFIX = ".nii.gz"


def timepoint_folder(index: int) -> str:
    """Folder name of timepoint ``index``: Baseline, Synthetic_Follow_Up, Synthetic_Follow_Up_2, ..."""
    if index < 0:
        raise ValueError(f"timepoint index must be >= 0, got {index}")
    if index == 0:
        return "Baseline"
    return "Synthetic_Follow_Up" if index == 1 else f"Synthetic_Follow_Up_{index}"


def _folder_index(name: str) -> int | None:
    if name == "Baseline":
        return 0
    if name == "Synthetic_Follow_Up":
        return 1
    m = re.fullmatch(r"Synthetic_Follow_Up_(\d+)", name)
    return int(m.group(1)) if m and int(m.group(1)) >= 2 else None


def _check_case(case: str) -> str:
    if not case or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", case):
        raise ValueError(f"case name {case!r} must be letters, digits, '_', '-' or '.' (it names files)")
    return case


def _read_rows(csv_path: Path) -> list[dict[str, str]] | None:
    """Rows of our naming.csv, or None when the file is absent or not in our format."""
    if not csv_path.exists():
        return None
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not set(NAMING_COLUMNS) <= {c.strip() for c in reader.fieldnames}:
            return None
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def _write_csv_atomic(csv_path: Path, rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(NAMING_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in NAMING_COLUMNS})
    from .atomic import atomic_write_text

    atomic_write_text(csv_path, buf.getvalue(), overwrite=True)  # the rows were merged with the old file


def write_study_layout(
    folder: str | os.PathLike,
    timepoints: Sequence[tuple[Image, LabelMap | None]],
    *,
    case: str | None = None,
    dates: Sequence[str | None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one case's timepoints into the layout under ``folder`` and update ``naming.csv``.

    Parameters
    ----------
    folder : path
        Dataset root (created when missing; other cases already there are kept).
    timepoints : sequence of (Image, LabelMap or None)
        Baseline first. Each label map must be on its image's grid.
    case : str, optional
        File stem for this case (default: the baseline image's name).
    dates : sequence of str or None, optional
        ISO acquisition dates per timepoint (default: each image's ``acquisition_date``).
    overwrite : bool
        Replace this case's existing files; otherwise OutputExistsError before anything is written.

    Returns
    -------
    Path
        The ``naming.csv`` path.
    """
    root = Path(folder)
    tps = list(timepoints)
    if not tps:
        raise ValueError("write_study_layout needs at least one timepoint (the baseline)")
    case = _check_case(case or tps[0][0].name)
    if dates is not None and len(dates) != len(tps):
        raise ValueError(f"got {len(dates)} dates for {len(tps)} timepoints")
    plan = []
    for i, (image, labels) in enumerate(tps):
        if labels is not None:
            image.geometry.require_same_grid(
                labels.geometry, what=f"timepoint {i} ({timepoint_folder(i)}) label map and image"
            )
        raw = dates[i] if dates is not None else image.acquisition_date
        date = parse_date(raw)
        sub = timepoint_folder(i)
        img_rel = f"{sub}/images/{case}{SUFFIX}"
        lab_rel = f"{sub}/labels/{case}{SUFFIX}" if labels is not None else ""
        plan.append((i, sub, image, labels, img_rel, lab_rel, date.isoformat() if date else ""))
    # Refuse before writing anything, so a refused call leaves the folder exactly as it was.
    if (root / NAMING_CSV).exists() and _read_rows(root / NAMING_CSV) is None:
        raise OutputExistsError(
            f"{root / NAMING_CSV} exists in another format (columns other than {', '.join(NAMING_COLUMNS)}); "
            "write into a new folder instead of replacing it"
        )
    if not overwrite:
        existing = [rel for *_, img_rel, lab_rel, _d in plan for rel in (img_rel, lab_rel)
                    if rel and (root / rel).exists()]
        if existing:
            raise OutputExistsError(
                f"{root}: case {case!r} already has {', '.join(existing)}; pass overwrite=True to replace it"
            )
    for _i, _sub, image, labels, img_rel, lab_rel, _date in plan:
        write_image(image, root / img_rel, overwrite=overwrite)
        if labels is not None:
            write_label_map(labels, root / lab_rel, overwrite=overwrite)
    csv_path = root / NAMING_CSV
    rows = [r for r in (_read_rows(csv_path) or []) if r.get("case") != case]
    rows += [
        {"case": case, "timepoint": str(i), "folder": sub, "image": img_rel, "label": lab_rel, "acquisition_date": d}
        for i, sub, _img, _lab, img_rel, lab_rel, d in plan
    ]
    rows.sort(key=lambda r: (r["case"], int(r["timepoint"])))
    _write_csv_atomic(csv_path, rows)
    return csv_path


def _stem(path: Path) -> str:
    stem = case_name(path)
    return stem[:-5] if re.search(r"_\d{4}$", stem) else stem


def _scan(root: Path) -> dict[str, list[dict[str, str]]]:
    """Pair files by case name across the timepoint folders (no usable naming.csv)."""
    folders = sorted(
        (idx, p) for p in root.iterdir() if p.is_dir() and (idx := _folder_index(p.name)) is not None
    )
    cases: dict[str, list[dict[str, str]]] = {}
    for idx, sub in folders:
        labels = {}
        if (sub / "labels").is_dir():
            labels = {_stem(p): p for p in (sub / "labels").iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES)}
        if not (sub / "images").is_dir():
            continue
        for p in sorted((sub / "images").iterdir()):
            if p.name.startswith(".") or not p.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            stem = _stem(p)
            lab = labels.get(stem)
            cases.setdefault(stem, []).append({
                "case": stem, "timepoint": str(idx), "folder": sub.name,
                "image": str(p.relative_to(root)), "label": str(lab.relative_to(root)) if lab else "",
                "acquisition_date": "",
            })
    return cases


def _rows_by_case(root: Path) -> dict[str, list[dict[str, str]]]:
    if not root.is_dir():
        raise InputImageError(f"{root} is not a folder")
    rows = _read_rows(root / NAMING_CSV)
    if rows is None:
        cases = _scan(root)
    else:
        cases = {}
        for r in rows:
            cases.setdefault(r["case"], []).append(r)
    if not cases:
        raise InputImageError(
            f"{root} is not a study layout: no {NAMING_CSV} in our format and no Baseline/images files"
        )
    return cases


def layout_rows(folder: str | os.PathLike) -> dict[str, list[dict[str, str]]]:
    """Each case's ``naming.csv`` rows (or the rows found by pairing file names), without reading
    any image: ``{case: [{case, timepoint, folder, image, label, acquisition_date}, ...]}`` with
    ``image``/``label`` relative to ``folder`` (``label`` empty when there is none)."""
    return _rows_by_case(Path(folder))


def list_layout_cases(folder: str | os.PathLike) -> list[str]:
    """Case names in a layout folder, sorted."""
    return sorted(_rows_by_case(Path(folder)))


def read_study_layout(folder: str | os.PathLike, *, case: str | None = None) -> list[tuple[Image, LabelMap | None]]:
    """Read one case's timepoints, baseline first: ``[(image, labels or None), ...]``.

    Image names are ``<case>_<timepoint folder>`` (unique within the study); each label map is
    checked to be on its image's grid. ``case`` may be omitted when the folder holds one case.

    Raises
    ------
    InputImageError
        Not a layout, unknown or ambiguous case, a missing file, or any image read error.
    """
    root = Path(folder)
    cases = _rows_by_case(root)
    if case is None:
        if len(cases) > 1:
            raise InputImageError(f"{root} holds {len(cases)} cases; choose one of: {', '.join(sorted(cases))}")
        case = next(iter(cases))
    if case not in cases:
        raise InputImageError(f"{root}: no case {case!r}; cases: {', '.join(sorted(cases))}")
    rows = sorted(cases[case], key=lambda r: int(r["timepoint"]))
    indices = [int(r["timepoint"]) for r in rows]
    if indices != list(range(len(rows))):
        raise InputImageError(f"{root}: case {case!r} has timepoints {indices}; expected 0..{len(rows) - 1}")
    out: list[tuple[Image, LabelMap | None]] = []
    for r in rows:
        img_path = root / r["image"]
        if not img_path.exists():
            raise InputImageError(f"{root}: {NAMING_CSV} lists {r['image']} but the file is missing")
        image = read_image(img_path, name=f"{case}_{r['folder'] or timepoint_folder(int(r['timepoint']))}")
        date = parse_date(r.get("acquisition_date") or None)
        image.acquisition_date = date.isoformat() if date else None
        labels = None
        if r.get("label"):
            lab_path = root / r["label"]
            if not lab_path.exists():
                raise InputImageError(f"{root}: {NAMING_CSV} lists {r['label']} but the file is missing")
            labels = read_label_map(lab_path, like=image, name=f"{image.name}_lesions")
        out.append((image, labels))
    return out


def read_study(folder: str | os.PathLike, *, case: str | None = None) -> Study:
    """The case as a :class:`~..core.study.Study` in layout order (not re-sorted by date)."""
    pairs = read_study_layout(folder, case=case)
    patient = case or pairs[0][0].name.rsplit("_Baseline", 1)[0]
    return Study([Timepoint(img, lab) for img, lab in pairs], patient_id=patient, sort_by_date=False)

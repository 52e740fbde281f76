"""Lesion tables: one row per lesion per timepoint, as CSV and JSON, plus the RECIST summary.

Files written for an output prefix ``OUT`` (e.g. ``results/patient1``):

* ``OUT_lesions.csv``: the lesion table (columns :data:`LESION_COLUMNS`);
* ``OUT_recist.csv``: one row per timepoint (columns :data:`RECIST_COLUMNS`), when a RECIST
  summary is given;
* ``OUT.json``: ``{"lesions": [...], "recist": {...} | null}`` with the same values (centroids as
  ``[z, y, x]`` world mm, LPS).

Every file is written by :func:`.atomic.atomic_write_text` (temp file in the same folder, fsync,
size check, the user's umask, rename) and an existing
file is never replaced unless ``overwrite=True``; all targets are checked before anything is
written, so a refusal leaves the folder as it was.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

from ..core.errors import OutputExistsError
from ..core.measurements import LesionMeasurement
from ..core.recist import RecistSummary
from .atomic import atomic_write_text

__all__ = [
    "LESION_COLUMNS",
    "RECIST_COLUMNS",
    "table_paths",
    "lesion_rows_as_dicts",
    "write_lesion_table",
    "read_lesion_table_json",
    "atomic_write_text",
]

LESION_COLUMNS = (
    "lesion_id", "name", "timepoint", "date", "image", "present", "voxel_count", "volume_ml",
    "long_axis_mm", "short_axis_mm", "axial_slice", "mean_hu", "std_hu",
    "centroid_z_mm", "centroid_y_mm", "centroid_x_mm",
)
RECIST_COLUMNS = (
    "timepoint", "date", "sum_mm", "change_vs_baseline_pct", "change_vs_nadir_pct", "nadir_mm", "response",
    "new_lesions", "targets", "nodes", "reason",
)


def table_paths(prefix: str | os.PathLike, *, with_recist: bool = True) -> dict[str, Path]:
    """The files :func:`write_lesion_table` writes for ``prefix`` (keys: lesions_csv, recist_csv, json)."""
    prefix = Path(prefix)
    base = prefix.name[:-5] if prefix.name.lower().endswith(".json") else prefix.name
    folder = prefix.parent
    out = {"lesions_csv": folder / f"{base}_lesions.csv", "json": folder / f"{base}.json"}
    if with_recist:
        out["recist_csv"] = folder / f"{base}_recist.csv"
    return out


def _clean(value):
    """JSON-safe value: NaN/inf -> None, tuples -> lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    return value


def lesion_rows_as_dicts(rows: Iterable[LesionMeasurement]) -> list[dict]:
    """Flat dicts in :data:`LESION_COLUMNS` order (centroid split into three columns)."""
    out = []
    for r in rows:
        c = r.centroid_mm if r.centroid_mm is not None else (None, None, None)
        d = {
            "lesion_id": r.lesion_id, "name": r.name or "", "timepoint": r.timepoint, "date": r.date or "",
            "image": r.image or "", "present": r.present, "voxel_count": r.voxel_count, "volume_ml": r.volume_ml,
            "long_axis_mm": r.long_axis_mm, "short_axis_mm": r.short_axis_mm,
            "axial_slice": "" if r.axial_slice is None else r.axial_slice,
            "mean_hu": r.mean_hu, "std_hu": r.std_hu,
            "centroid_z_mm": c[0], "centroid_y_mm": c[1], "centroid_x_mm": c[2],
        }
        out.append(d)
    return out


def _csv_text(columns: tuple[str, ...], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    return buf.getvalue()


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def write_lesion_table(
    prefix: str | os.PathLike,
    rows: Iterable[LesionMeasurement],
    recist: RecistSummary | None = None,
    *,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> dict[str, Path]:
    """Write the lesion table (and RECIST summary) for a study; returns the paths written.

    Raises
    ------
    OutputExistsError
        When any target file exists and ``overwrite`` is False (nothing is written then).
    """
    rows = sorted(rows, key=lambda r: (r.timepoint, r.lesion_id))
    paths = table_paths(prefix, with_recist=recist is not None)
    if not overwrite:
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing:
            raise OutputExistsError(
                f"refusing to overwrite existing table file(s): {', '.join(existing)} (use --overwrite)"
            )
    flat = lesion_rows_as_dicts(rows)
    doc = {
        "lesions": [_clean(r.to_dict()) for r in rows],
        "recist": _clean(recist.to_dict()) if recist is not None else None,
        "units": {"volume_ml": "mL", "diameters": "mm", "hu": "HU", "centroid_mm": "world mm, LPS, (z, y, x)"},
    }
    if metadata:
        doc["metadata"] = _clean(metadata)
    atomic_write_text(paths["lesions_csv"], _csv_text(LESION_COLUMNS, flat), overwrite=overwrite)
    if recist is not None:
        recist_rows = [
            t.to_dict() | {"targets": list(recist.targets), "nodes": list(recist.nodes)} for t in recist.timepoints
        ]
        atomic_write_text(paths["recist_csv"], _csv_text(RECIST_COLUMNS, recist_rows), overwrite=overwrite)
    atomic_write_text(paths["json"], json.dumps(doc, indent=2) + "\n", overwrite=overwrite)
    return paths


def read_lesion_table_json(path: str | os.PathLike) -> tuple[list[LesionMeasurement], dict | None]:
    """Read back the lesion rows (and the RECIST summary as a dict) from a table JSON."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = []
    for d in data.get("lesions", []):
        d = dict(d)
        for key in ("centroid_mm", "long_axis_endpoints_mm", "short_axis_endpoints_mm"):
            if d.get(key) is not None:
                d[key] = tuple(tuple(v) if isinstance(v, list) else v for v in d[key])
        for key in ("mean_hu", "std_hu"):
            if d.get(key) is None:
                d[key] = float("nan")
        d["extra"] = d.get("extra") or {}
        rows.append(LesionMeasurement(**d))
    return rows, data.get("recist")

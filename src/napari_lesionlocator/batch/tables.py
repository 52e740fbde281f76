"""The cohort tables: lesions (one row per lesion per timepoint) and studies (one row per study),
each as Parquet (pyarrow) and CSV, written atomically (temp file + rename) into the batch folder.

They are rebuilt by every batch run from the finished study folders, which hold the results
themselves; replacing them loses nothing.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from .pipeline import LESION_ROW_COLUMNS

__all__ = ["STUDY_COLUMNS", "write_tables", "read_table_csv"]

STUDY_COLUMNS = (
    "study_id", "patient", "status", "reason", "seconds", "worker", "timepoints", "lesions", "rows_ok",
    "rows_check", "rows_empty", "rows_lost", "output",
)

_INT = {"timepoint", "lesion_id", "voxel_count", "axial_slice", "timepoints", "lesions", "rows_ok", "rows_check",
        "rows_empty", "rows_lost"}
_FLOAT = {"volume_ml", "long_axis_mm", "short_axis_mm", "mean_hu", "std_hu", "centroid_z_mm", "centroid_y_mm",
          "centroid_x_mm", "dice", "gt_volume_ml", "seconds"}
_BOOL = {"present"}


def _replace_atomic(path: Path, write) -> Path:
    """``write(tmp)`` then publish ``tmp`` as ``path`` through the one atomic-write helper (fsync, size
    check, the user's umask, rename)."""
    from ..io.atomic import atomic_write

    with atomic_write(path, overwrite=True) as tmp:
        write(tmp)
    return path


def _cell(col: str, v):
    if v is None or v == "":
        return None
    if col in _INT:
        return int(v)
    if col in _FLOAT:
        return float(v)
    if col in _BOOL:
        return bool(v) if not isinstance(v, str) else v.lower() == "true"
    return str(v)


def _csv_text(columns: Sequence[str], rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        out = []
        for c in columns:
            v = _cell(c, r.get(c))
            if v is None or (isinstance(v, float) and math.isnan(v)):
                out.append("")
            elif isinstance(v, float):
                out.append(f"{v:.6g}")
            else:
                out.append(v)
        w.writerow(out)
    return buf.getvalue()


def _parquet(columns: Sequence[str], rows: Sequence[dict], path: Path) -> Path | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    types = {c: pa.int64() if c in _INT else pa.float64() if c in _FLOAT else pa.bool_() if c in _BOOL else pa.string()
             for c in columns}
    schema = pa.schema([(c, types[c]) for c in columns])
    data = {c: [_cell(c, r.get(c)) for r in rows] for c in columns}
    table = pa.table(data, schema=schema)
    return _replace_atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_tables(out: str | os.PathLike, lesion_rows: Sequence[dict], study_rows: Sequence[dict]) -> dict[str, Path]:
    """Write ``lesions.{parquet,csv}`` and ``studies.{parquet,csv}`` into ``out``; returns the paths.

    Parquet is skipped (CSV only) when pyarrow is not installed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, columns, rows in (("lesions", LESION_ROW_COLUMNS, lesion_rows), ("studies", STUDY_COLUMNS, study_rows)):
        text = _csv_text(columns, rows)
        paths[f"{name}_csv"] = _replace_atomic(out / f"{name}.csv", lambda tmp, t=text: Path(tmp).write_text(t))
        pq_path = _parquet(columns, rows, out / f"{name}.parquet")
        if pq_path is not None:
            paths[f"{name}_parquet"] = pq_path
    return paths


def read_table_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a table written here, values typed back (ints, floats, bools; empty -> None)."""
    with Path(path).open(newline="") as fh:
        return [{k: _cell(k, v) for k, v in row.items()} for row in csv.DictReader(fh)]

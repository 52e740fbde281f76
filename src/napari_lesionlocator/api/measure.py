"""Measuring a study's lesions (volume, RECIST axes, HU, centroid) and RECIST 1.1, for the CLI and the demo."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.image import Image, LabelMap

__all__ = ["MeasurementResult", "measure_timepoints", "write_measurements"]


@dataclass
class MeasurementResult:
    """Lesion table rows (one per lesion per timepoint), the RECIST summary (None when no target) and notes."""

    rows: list
    recist: object | None
    targets: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def measure_timepoints(
    timepoints: Sequence[tuple[Image, LabelMap]],
    *,
    targets: Sequence[int] | None = None,
    nodes: Sequence[int] = (),
    dates: Sequence[str | None] | None = None,
    sites: Mapping[int, str] | None = None,
) -> MeasurementResult:
    """Measure every lesion at every timepoint (the first is the baseline; the order given is kept).

    Parameters
    ----------
    timepoints : sequence of (Image, LabelMap)
        Each scan with its instance map on exactly its grid (the same lesion has the same id everywhere).
        A lesion missing from a later map is measured as absent (0 mm for RECIST).
    targets : RECIST target ids (None: up to 5 largest measurable at baseline).
    nodes : target ids that are lymph nodes (short axis used).
    sites : lesion id -> site (lung, liver, lymph node, ...): with automatic targets, at most 2 per
        organ (RECIST 1.1), and sites ``"lymph node"`` count as nodes.
    dates : acquisition date per timepoint (``YYYY-MM-DD``), overriding the images' own.

    Raises
    ------
    ValueError
        Unknown target/node ids, a dates list of the wrong length, targets absent at baseline.
    """
    from ..core.measurements import measure_study
    from ..core.recist import recist_for_study, select_targets
    from ..core.study import Study, Timepoint, parse_date

    pairs = list(timepoints)
    if dates is not None:
        if len(dates) != len(pairs):
            raise ValueError(f"{len(dates)} date(s) for {len(pairs)} timepoint(s)")
        for (image, _), d in zip(pairs, dates, strict=True):
            image.acquisition_date = parse_date(d).isoformat() if d else None
    study = Study([Timepoint(img, lab) for img, lab in pairs], sort_by_date=False)
    ids = study.lesion_ids
    nodes = [int(n) for n in nodes]
    nodes += [int(i) for i, site in (sites or {}).items() if site == "lymph node" and int(i) not in nodes]
    nodes = [n for n in nodes if n in ids or sites is None]  # a site for a lesion absent everywhere is no error
    unknown = sorted(set(targets or []) - set(ids)) + sorted(set(nodes) - set(ids))
    if unknown:
        raise ValueError(f"lesion id(s) {sorted(set(unknown))} given as targets/nodes are in no label map "
                         f"(ids present: {ids})")
    rows = measure_study(study)
    baseline_rows = [r for r in rows if r.timepoint == 0]
    chosen = ([int(t) for t in targets] if targets is not None
              else select_targets(baseline_rows, nodes=nodes, sites=sites))
    if not chosen:
        return MeasurementResult(rows, None, [], [
            ("no measurable target lesion at baseline (long axis >= 10 mm, nodes >= 15 mm short axis): "
            "no RECIST summary; choose targets explicitly")])
    recist = recist_for_study(study, chosen, nodes=[n for n in nodes if n in chosen], rows=rows)
    return MeasurementResult(rows, recist, chosen, [])


def write_measurements(prefix: str | os.PathLike, result: MeasurementResult, *, overwrite: bool = False,
                       metadata: dict | None = None) -> dict[str, Path]:
    """Write ``PREFIX_lesions.csv``, ``PREFIX_recist.csv`` (with a RECIST summary) and ``PREFIX.json``."""
    from ..io.tables import write_lesion_table

    return write_lesion_table(prefix, result.rows, result.recist, overwrite=overwrite, metadata=metadata)

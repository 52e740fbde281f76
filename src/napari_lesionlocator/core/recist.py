"""RECIST 1.1 response assessment of target lesions over timepoints (pure Python).

Rules implemented (Eisenhauer et al., Eur J Cancer 2009, sections 4.3-4.4, target lesions only):

* The diameter of a target lesion is its long axis, or its **short axis** when the lesion is a
  lymph node. A lesion that disappeared counts as 0 mm; a lesion whose size is unknown makes the
  sum not evaluable.
* Sum of diameters (SoD) per timepoint; timepoint 0 is the baseline.
* Change vs baseline and vs nadir in %, the nadir being the smallest SoD at an earlier evaluated
  timepoint (baseline included).
* Response of each follow-up, in this order of precedence:

  - **PD**: SoD increased by >= 20 % *and* >= 5 mm over the nadir, or any new lesion;
  - **CR**: every non-nodal target disappeared and every nodal target has a short axis < 10 mm;
  - **PR**: SoD decreased by >= 30 % vs baseline;
  - **SD**: otherwise;
  - **NE**: a target could not be measured and the lesions that were measured do not already
    prove PD.

Boundaries are inclusive exactly at 30 %, 20 % and 5 mm (a tolerance of 1e-9 mm absorbs floating
point rounding).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from .measurements import LesionMeasurement
from .study import StudyError

__all__ = [
    "MAX_TARGETS",
    "MAX_TARGETS_PER_ORGAN",
    "NODE_NORMAL_SHORT_AXIS_MM",
    "NODE_TARGET_SHORT_AXIS_MM",
    "MIN_MEASURABLE_MM",
    "TargetRuleError",
    "measurable_minimum_mm",
    "target_rule_problems",
    "RecistTimepoint",
    "RecistSummary",
    "evaluate_recist",
    "recist_from_measurements",
    "recist_for_study",
    "select_targets",
]

NODE_NORMAL_SHORT_AXIS_MM = 10.0
NODE_TARGET_SHORT_AXIS_MM = 15.0
MIN_MEASURABLE_MM = 10.0
MAX_TARGETS = 5
MAX_TARGETS_PER_ORGAN = 2
_EPS = 1e-9


class TargetRuleError(StudyError):
    """A lesion cannot be a RECIST 1.1 target (not measurable, too many targets, too many in its organ)."""


def measurable_minimum_mm(slice_thickness_mm: float | None) -> float:
    """Smallest long axis of a measurable non-nodal lesion: 10 mm, or twice the slice thickness
    when slices are thicker than 5 mm (RECIST 1.1, 3.1.1)."""
    if slice_thickness_mm is None:
        return MIN_MEASURABLE_MM
    return max(MIN_MEASURABLE_MM, 2.0 * float(slice_thickness_mm)) if slice_thickness_mm > 5.0 else MIN_MEASURABLE_MM


def target_rule_problems(study, lesion_id: int, *, site: str | None = None) -> list[str]:
    """Why ``lesion_id`` cannot be a RECIST 1.1 target of ``study`` (empty list: it can).

    Rules: it is measured at the baseline; measurable there (non-nodal long axis >= 10 mm, or twice
    the slice thickness above 5 mm; a lymph node needs a short axis >= 15 mm); at most 5 targets in
    all and at most 2 per organ (the lesion's site; lymph nodes together count as one organ;
    "other" is not checked per organ since it may hold several organs).
    """
    from .measurements import measure_lesion_mask

    lid = int(lesion_id)
    site = study.site(lid) if site is None else site
    problems: list[str] = []
    base = study.baseline
    obs = study.observation(lid, base.name)
    if obs is None or not obs.present:
        problems.append(f"it has no mask at the baseline {base.name} (targets are chosen at baseline)")
    else:
        row = measure_lesion_mask(obs.mask, None, lesion_id=lid)
        if site == "lymph node":
            if row.short_axis_mm < NODE_TARGET_SHORT_AXIS_MM - _EPS:
                what = "a normal node" if row.short_axis_mm < NODE_NORMAL_SHORT_AXIS_MM - _EPS else \
                    "pathological but non-measurable (10-15 mm): a non-target"
                problems.append(f"a lymph node needs a short axis >= 15 mm to be a target; it measures "
                                f"{row.short_axis_mm:.1f} mm ({what})")
        else:
            minimum = measurable_minimum_mm(base.geometry.spacing[0])
            if row.long_axis_mm < minimum - _EPS:
                problems.append(f"not measurable: long axis {row.long_axis_mm:.1f} mm < {minimum:g} mm")
    others = [t for t in study.targets() if t != lid]
    if len(others) >= MAX_TARGETS:
        problems.append(f"there are already {MAX_TARGETS} targets ({', '.join(map(str, others))}); "
                        "RECIST 1.1 allows at most 5")
    if site != "other":
        same = [t for t in others if study.site(t) == site]
        if len(same) >= MAX_TARGETS_PER_ORGAN:
            organ = "lymph nodes (one organ)" if site == "lymph node" else site
            problems.append(f"{organ} already has {len(same)} targets ({', '.join(map(str, same))}); "
                            "RECIST 1.1 allows at most 2 per organ")
    return problems


@dataclass(frozen=True)
class RecistTimepoint:
    """RECIST assessment of one timepoint.

    Attributes
    ----------
    timepoint : int
        Index (0 = baseline).
    sum_mm : float or None
        Sum of target diameters in mm (None when not evaluable).
    change_vs_baseline_pct, change_vs_nadir_pct : float or None
        Relative change of the sum in %; None at baseline or when not computable.
    nadir_mm : float or None
        Smallest sum at an earlier timepoint (None at baseline).
    response : str
        ``"baseline"``, ``"CR"``, ``"PR"``, ``"SD"``, ``"PD"`` or ``"NE"``.
    new_lesions : bool
        Whether new lesions were reported at this timepoint.
    diameters_mm : dict
        Lesion id -> diameter used (long axis, or short axis for nodes); None when not measured.
    reason : str
        One line saying why this response was given.
    """

    timepoint: int
    sum_mm: float | None
    change_vs_baseline_pct: float | None
    change_vs_nadir_pct: float | None
    nadir_mm: float | None
    response: str
    new_lesions: bool = False
    diameters_mm: dict[int, float | None] = field(default_factory=dict)
    date: str | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["diameters_mm"] = {str(k): v for k, v in self.diameters_mm.items()}
        return d


@dataclass(frozen=True)
class RecistSummary:
    """Assessment of a whole study: the target ids, which are nodes, and one entry per timepoint."""

    targets: tuple[int, ...]
    nodes: tuple[int, ...]
    timepoints: tuple[RecistTimepoint, ...]

    def to_dict(self) -> dict:
        return {
            "targets": list(self.targets),
            "nodes": list(self.nodes),
            "timepoints": [t.to_dict() for t in self.timepoints],
        }


def _pct(new: float, ref: float) -> float | None:
    return None if ref <= 0 else 100.0 * (new - ref) / ref


def evaluate_recist(
    diameters: Sequence[Mapping[int, float | None]],
    *,
    nodes: Iterable[int] = (),
    new_lesions: Sequence[bool] | None = None,
    dates: Sequence[str | None] | None = None,
) -> RecistSummary:
    """RECIST 1.1 over timepoints from per-lesion diameters.

    Parameters
    ----------
    diameters : sequence of mappings
        One mapping per timepoint (0 = baseline): target lesion id -> diameter in mm (long axis;
        for nodes the short axis), ``0`` when the lesion disappeared, ``None`` when not measured.
        The targets are the keys of the baseline mapping.
    nodes : iterable of int
        Target ids that are lymph nodes (their diameter is their short axis; CR needs < 10 mm).
    new_lesions : sequence of bool, optional
        Per timepoint, whether a new lesion appeared (forces PD).
    dates : sequence of str, optional
        Acquisition dates, copied into the result.

    Returns
    -------
    RecistSummary

    Raises
    ------
    ValueError
        When there is no target, or a baseline diameter is missing or not positive.
    """
    if not diameters:
        raise ValueError("RECIST needs at least the baseline timepoint")
    targets = tuple(sorted(int(k) for k in diameters[0]))
    if not targets:
        raise ValueError("RECIST needs at least one target lesion at baseline")
    node_set = {int(n) for n in nodes}
    unknown_nodes = node_set - set(targets)
    if unknown_nodes:
        raise ValueError(f"lymph nodes {sorted(unknown_nodes)} are not target lesions {list(targets)}")
    for lid in targets:
        d0 = diameters[0][lid]
        if d0 is None or d0 <= 0:
            raise ValueError(f"target lesion {lid} has no measurable baseline diameter ({d0!r})")
    new_flags = list(new_lesions) if new_lesions is not None else [False] * len(diameters)
    if len(new_flags) != len(diameters):
        raise ValueError(f"new_lesions has {len(new_flags)} entries for {len(diameters)} timepoints")
    date_list = list(dates) if dates is not None else [None] * len(diameters)

    baseline_sum = float(sum(diameters[0][lid] for lid in targets))
    out = [RecistTimepoint(0, baseline_sum, None, None, None, "baseline", bool(new_flags[0]),
                           {lid: float(diameters[0][lid]) for lid in targets}, date_list[0], "baseline")]
    nadir = baseline_sum
    for k in range(1, len(diameters)):
        d = {lid: (None if diameters[k].get(lid) is None else float(diameters[k][lid])) for lid in targets}
        missing = [lid for lid in targets if d[lid] is None]
        measured_sum = float(sum(v for v in d.values() if v is not None))
        new = bool(new_flags[k])
        increase = measured_sum - nadir
        # With missing targets the true sum is at least the measured one, so PD can still be proven.
        grew = increase >= 0.2 * nadir - _EPS and increase >= 5.0 - _EPS
        if new or grew:
            why = "new lesion(s)" if new else (
                f"sum {measured_sum:.1f} mm is +{increase:.1f} mm (+{_pct(measured_sum, nadir):.1f} %) over nadir "
                f"{nadir:.1f} mm (>= 20 % and >= 5 mm)"
            )
            response = "PD"
        elif missing:
            response, why = "NE", f"target(s) {missing} not measured"
        elif all((d[lid] < NODE_NORMAL_SHORT_AXIS_MM - _EPS) if lid in node_set else d[lid] <= _EPS for lid in targets):
            response, why = "CR", "all non-nodal targets disappeared and all nodal targets < 10 mm short axis"
        elif measured_sum - baseline_sum <= -0.3 * baseline_sum + _EPS:
            response = "PR"
            why = f"sum {measured_sum:.1f} mm is {_pct(measured_sum, baseline_sum):.1f} % vs baseline (<= -30 %)"
        else:
            response, why = "SD", "neither PR nor PD criteria met"
        total = None if missing else measured_sum
        out.append(RecistTimepoint(
            timepoint=k,
            sum_mm=total,
            change_vs_baseline_pct=None if total is None else _pct(total, baseline_sum),
            change_vs_nadir_pct=None if total is None else _pct(total, nadir),
            nadir_mm=nadir,
            response=response,
            new_lesions=new,
            diameters_mm=d,
            date=date_list[k],
            reason=why,
        ))
        if total is not None:
            nadir = min(nadir, total)
    return RecistSummary(targets, tuple(sorted(node_set)), tuple(out))


def _diameter(row: LesionMeasurement, is_node: bool) -> float:
    if not row.present:
        return 0.0
    return float(row.short_axis_mm if is_node else row.long_axis_mm)


def recist_from_measurements(
    rows: Iterable[LesionMeasurement],
    targets: Iterable[int] | None = None,
    *,
    nodes: Iterable[int] = (),
    n_timepoints: int | None = None,
    new_lesions: Sequence[bool] | None = None,
) -> RecistSummary:
    """RECIST from lesion table rows (one per lesion per timepoint).

    A target with no row at a timepoint is "not measured" (NE); a row with ``present=False`` is a
    lesion that disappeared (0 mm). ``targets`` defaults to :func:`select_targets` on the baseline.
    With ``new_lesions`` unset, a lesion id first present after the baseline counts as new.
    """
    rows = list(rows)
    node_set = {int(n) for n in nodes}
    by_tp: dict[int, dict[int, LesionMeasurement]] = {}
    for r in rows:
        by_tp.setdefault(int(r.timepoint), {})[int(r.lesion_id)] = r
    n = n_timepoints if n_timepoints is not None else (max(by_tp) + 1 if by_tp else 0)
    if n == 0 or 0 not in by_tp:
        raise ValueError("RECIST needs baseline measurements (timepoint 0)")
    if targets is None:
        targets = select_targets(by_tp[0].values(), nodes=node_set)
    targets = [int(t) for t in targets]
    missing = [t for t in targets if t not in by_tp[0] or not by_tp[0][t].present]
    if missing:
        raise ValueError(f"target lesion(s) {missing} are not present at baseline")
    diameters = []
    dates: list[str | None] = []
    for k in range(n):
        tp = by_tp.get(k, {})
        diameters.append({t: (_diameter(tp[t], t in node_set) if t in tp else None) for t in targets})
        dates.append(next((r.date for r in tp.values() if r.date), None))
    if new_lesions is None:
        baseline_ids = {lid for lid, r in by_tp[0].items() if r.present}
        new_lesions = [
            k > 0 and any(r.present and lid not in baseline_ids for lid, r in by_tp.get(k, {}).items())
            for k in range(n)
        ]
    return evaluate_recist(diameters, nodes=node_set & set(targets), new_lesions=new_lesions, dates=dates)


def select_targets(
    baseline_rows: Iterable[LesionMeasurement],
    *,
    nodes: Iterable[int] = (),
    max_targets: int = 5,
) -> list[int]:
    """Pick up to ``max_targets`` measurable baseline lesions, largest first (RECIST 1.1 rules 3.1).

    Measurable: non-nodal long axis >= 10 mm, nodal short axis >= 15 mm. The "at most two per
    organ" rule needs organ labels and is left to the user (pass the ids explicitly).
    """
    node_set = {int(n) for n in nodes}
    measurable = []
    for r in baseline_rows:
        if not r.present:
            continue
        is_node = int(r.lesion_id) in node_set
        size = r.short_axis_mm if is_node else r.long_axis_mm
        if size >= (15.0 if is_node else 10.0) - _EPS:
            measurable.append((size, int(r.lesion_id)))
    measurable.sort(key=lambda t: (-t[0], t[1]))
    return sorted(lid for _, lid in measurable[:max_targets])


def recist_for_study(
    study,
    targets: Iterable[int] | None = None,
    *,
    nodes: Iterable[int] = (),
    rows: Sequence[LesionMeasurement] | None = None,
) -> RecistSummary:
    """RECIST of a :class:`~.study.Study` (rows from :func:`.measurements.measure_study` unless given).

    New lesions are the study's own notion (:meth:`~.study.Lesion.is_new_at`: present at a
    follow-up and absent, not merely unevaluated, at every earlier timepoint).
    """
    from .measurements import measure_study

    rows = list(rows) if rows is not None else measure_study(study)
    names = study.names
    lesions = study.lesions()
    new = [k > 0 and any(les.is_new_at(names[k]) for les in lesions) for k in range(len(names))]
    return recist_from_measurements(rows, targets, nodes=nodes, n_timepoints=len(names), new_lesions=new)

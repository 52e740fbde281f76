"""RECIST 1.1 response assessment over timepoints (pure Python).

Rules implemented (Eisenhauer et al., Eur J Cancer 2009, sections 3-4):

* Target selection (:func:`target_rule_problems`, :func:`select_targets`): measurable at baseline
  (non-nodal long axis >= 10 mm, or twice the slice thickness when slices are thicker than 5 mm; a
  lymph node needs a short axis >= 15 mm; 10-15 mm nodes are pathological non-targets and < 10 mm
  nodes are normal); at most 5 targets and at most 2 per organ (lymph nodes together are one organ).

* The diameter of a target lesion is its long axis, or its **short axis** when the lesion is a
  lymph node. A lesion that disappeared counts as 0 mm; a lesion whose size is unknown makes the
  sum not evaluable.
* Sum of diameters (SoD) per timepoint; timepoint 0 is the baseline.
* Change vs baseline and vs nadir in %, the nadir being the smallest SoD at an earlier evaluated
  timepoint (baseline included).
* Response of each follow-up, in this order of precedence:

  - **PD**: SoD increased by >= 20 % *and* >= 5 mm over the nadir, or any (confirmed) new
    lesion, or unequivocal progression of the non-target lesions;
  - **CR**: every non-nodal target disappeared and every nodal target has a short axis < 10 mm
    (overall CR also needs the non-targets in CR; with non-targets present: PR);
  - **PR**: SoD decreased by >= 30 % vs baseline;
  - **SD**: otherwise;
  - **NE**: a target could not be measured and the lesions that were measured do not already
    prove PD.

* Non-target lesions (4.3.2): CR when all disappeared (nodes < 10 mm short axis), PD on the
  reader's call of unequivocal progression, NE when one was not evaluated, else non-CR/non-PD.
  Overall response combines target, non-target and new lesions as RECIST 1.1 tables 1 and 2 say
  (a study with non-target disease only gets CR, non-CR/non-PD, PD or NE).
* Every follow-up's response comes with its reason in words (``"new lesion 7"``,
  ``"+23 % and +6 mm from nadir"``) and is *provisional* while a target lesion is unverified.

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
        Sum of target diameters in mm (None when not evaluable or there are no targets).
    change_vs_baseline_pct, change_vs_nadir_pct : float or None
        Relative change of the sum in %; None at baseline or when not computable.
    nadir_mm : float or None
        Smallest sum at an earlier timepoint (None at baseline).
    response : str
        Overall response: ``"baseline"``, ``"CR"``, ``"PR"``, ``"SD"``, ``"PD"``, ``"NE"`` or, with
        non-target disease only, ``"non-CR/non-PD"``.
    new_lesions : bool
        Whether new lesions were reported at this timepoint.
    diameters_mm : dict
        Lesion id -> diameter used (long axis, or short axis for nodes); None when not measured.
    reason : str
        Why this response was given, in words.
    target_response, non_target_response : str or None
        The two parts (None when the study has no target / no non-target lesion).
    new_lesion_ids : tuple of int
        The new lesions found at this timepoint (when known).
    provisional : bool
        A target lesion is still unverified at this timepoint: the response may change.
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
    target_response: str | None = None
    non_target_response: str | None = None
    new_lesion_ids: tuple[int, ...] = ()
    provisional: bool = False

    @property
    def change_vs_nadir_mm(self) -> float | None:
        return None if self.sum_mm is None or self.nadir_mm is None else self.sum_mm - self.nadir_mm

    @property
    def label(self) -> str:
        """The response as shown to a reader (``"PD (provisional)"``)."""
        return f"{self.response} (provisional)" if self.provisional else self.response

    def to_dict(self) -> dict:
        d = asdict(self)
        d["diameters_mm"] = {str(k): v for k, v in self.diameters_mm.items()}
        d["new_lesion_ids"] = list(self.new_lesion_ids)
        return d


@dataclass(frozen=True)
class RecistSummary:
    """Assessment of a whole study: the target ids, which are nodes, the non-targets, one entry per timepoint."""

    targets: tuple[int, ...]
    nodes: tuple[int, ...]
    timepoints: tuple[RecistTimepoint, ...]
    non_targets: tuple[int, ...] = ()

    @property
    def progression(self) -> RecistTimepoint | None:
        """The first follow-up assessed PD (the date of progression), or None."""
        return next((tp for tp in self.timepoints if tp.response == "PD"), None)

    def to_dict(self) -> dict:
        return {
            "progression_timepoint": None if self.progression is None else self.progression.timepoint,
            "targets": list(self.targets),
            "nodes": list(self.nodes),
            "non_targets": list(self.non_targets),
            "timepoints": [t.to_dict() for t in self.timepoints],
        }


def _pct(new: float, ref: float) -> float | None:
    return None if ref <= 0 else 100.0 * (new - ref) / ref


def _ids(ids: Iterable[int]) -> str:
    ids = list(ids)
    return ", ".join(str(i) for i in ids)


def _plural(word: str, ids: Sequence[int]) -> str:
    return f"{word}{'s' if len(ids) > 1 else ''} {_ids(ids)}"


NON_TARGET_RESPONSES = ("CR", "non-CR/non-PD", "PD", "NE")


def evaluate_recist(
    diameters: Sequence[Mapping[int, float | None]],
    *,
    nodes: Iterable[int] = (),
    new_lesions: Sequence[bool] | None = None,
    dates: Sequence[str | None] | None = None,
    new_lesion_ids: Sequence[Sequence[int]] | None = None,
    non_target: Sequence[str | None] | None = None,
    non_target_reasons: Sequence[str] | None = None,
    provisional: Sequence[bool] | None = None,
) -> RecistSummary:
    """RECIST 1.1 over timepoints from per-lesion diameters.

    Parameters
    ----------
    diameters : sequence of mappings
        One mapping per timepoint (0 = baseline): target lesion id -> diameter in mm (long axis;
        for nodes the short axis), ``0`` when the lesion disappeared, ``None`` when not measured.
        The targets are the keys of the baseline mapping (empty: non-target disease only, then
        ``non_target`` is required).
    nodes : iterable of int
        Target ids that are lymph nodes (their diameter is their short axis; CR needs < 10 mm).
    new_lesions : sequence of bool, optional
        Per timepoint, whether a new lesion appeared (forces PD). Implied by ``new_lesion_ids``.
    dates : sequence of str, optional
        Acquisition dates, copied into the result.
    new_lesion_ids : sequence of sequences of int, optional
        Per timepoint, which lesions are new (named in the reason).
    non_target : sequence of str or None, optional
        Per timepoint, the non-target assessment: ``"CR"``, ``"non-CR/non-PD"``, ``"PD"`` (unequivocal
        progression), ``"NE"``, or None when there is no non-target lesion.
    non_target_reasons : sequence of str, optional
        Per timepoint, words for the non-target assessment (used in the reason).
    provisional : sequence of bool, optional
        Per timepoint, whether a target is still unverified (copied into the result).

    Returns
    -------
    RecistSummary

    Raises
    ------
    ValueError
        When there is no target and no non-target lesion, a baseline diameter is missing or not
        positive, or a per-timepoint sequence has the wrong length.
    """
    if not diameters:
        raise ValueError("RECIST needs at least the baseline timepoint")
    n = len(diameters)
    targets = tuple(sorted(int(k) for k in diameters[0]))

    def per_tp(values, name, default):
        if values is None:
            return [default] * n
        values = list(values)
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries for {n} timepoints")
        return values

    nt = per_tp(non_target, "non_target", None)
    if not targets and all(v is None for v in nt):
        raise ValueError("RECIST needs at least one target lesion at baseline")
    node_set = {int(n_) for n_ in nodes}
    unknown_nodes = node_set - set(targets)
    if unknown_nodes:
        raise ValueError(f"lymph nodes {sorted(unknown_nodes)} are not target lesions {list(targets)}")
    for lid in targets:
        d0 = diameters[0][lid]
        if d0 is None or d0 <= 0:
            raise ValueError(f"target lesion {lid} has no measurable baseline diameter ({d0!r})")
    for v in nt:
        if v is not None and v not in NON_TARGET_RESPONSES:
            raise ValueError(f"non-target response {v!r} is not one of {', '.join(NON_TARGET_RESPONSES)}")
    new_ids = [tuple(int(i) for i in ids) for ids in per_tp(new_lesion_ids, "new_lesion_ids", ())]
    new_flags = [bool(f) or bool(ids) for f, ids in zip(per_tp(new_lesions, "new_lesions", False), new_ids,
                                                         strict=True)]
    date_list = per_tp(dates, "dates", None)
    nt_why = per_tp(non_target_reasons, "non_target_reasons", "")
    prov = [bool(v) for v in per_tp(provisional, "provisional", False)]

    baseline_sum = float(sum(diameters[0][lid] for lid in targets))
    out = [RecistTimepoint(0, baseline_sum if targets else None, None, None, None, "baseline", new_flags[0],
                           {lid: float(diameters[0][lid]) for lid in targets}, date_list[0],
                           f"baseline: sum of {len(targets)} target diameter(s) {baseline_sum:.1f} mm" if targets
                           else "baseline: non-target disease only", None, None, new_ids[0], False)]
    nadir = baseline_sum
    for k in range(1, n):
        d = {lid: (None if diameters[k].get(lid) is None else float(diameters[k][lid])) for lid in targets}
        missing = [lid for lid in targets if d[lid] is None]
        measured_sum = float(sum(v for v in d.values() if v is not None))
        increase = measured_sum - nadir
        reasons: list[str] = []
        # ------------------------------------------------ target lesions
        t_resp: str | None = None
        if targets:
            # With missing targets the true sum is at least the measured one, so PD can still be proven.
            grew = increase >= 0.2 * nadir - _EPS and increase >= 5.0 - _EPS
            change_b = _pct(measured_sum, baseline_sum)
            change_n = _pct(measured_sum, nadir)
            if grew:
                t_resp = "PD"
                if change_n is None:
                    t_why = f"{increase:+.0f} mm from a nadir of 0 mm (PD needs >= +5 mm)"
                else:
                    t_why = (f"{change_n:+.0f} % and {increase:+.0f} mm from nadir (sum {measured_sum:.1f} mm, "
                             f"nadir {nadir:.1f} mm; PD needs >= +20 % and >= +5 mm)")
            elif missing:
                t_resp = "NE"
                t_why = f"target {_plural('lesion', missing)} not evaluated"
            elif all((d[lid] < NODE_NORMAL_SHORT_AXIS_MM - _EPS) if lid in node_set else d[lid] <= _EPS
                     for lid in targets):
                t_resp = "CR"
                t_why = "all target lesions disappeared" + (
                    " and target nodes are < 10 mm short axis" if node_set else "")
            elif measured_sum - baseline_sum <= -0.3 * baseline_sum + _EPS:
                t_resp = "PR"
                t_why = (f"{change_b:+.0f} % from baseline (sum {measured_sum:.1f} mm vs {baseline_sum:.1f} mm; "
                         "PR needs <= -30 %)")
            else:
                t_resp = "SD"
                from_nadir = (f"{increase:+.0f} mm from a nadir of 0 mm" if change_n is None
                              else f"{change_n:+.0f} % and {increase:+.0f} mm from nadir")
                t_why = (f"{change_b:+.0f} % from baseline, {from_nadir}: "
                         "neither PR (<= -30 %) nor PD (>= +20 % and >= +5 mm)")
        # ------------------------------------------------ overall (tables 1 and 2)
        nt_resp = nt[k]
        new = new_flags[k]
        if new or t_resp == "PD" or nt_resp == "PD":
            response = "PD"
            if new:
                reasons.append(_plural("new lesion", new_ids[k]) if new_ids[k] else "new lesion(s)")
            if t_resp == "PD":
                reasons.append(t_why)
            if nt_resp == "PD":
                reasons.append(nt_why[k] or "unequivocal progression of non-target lesions")
        elif t_resp is None:  # non-target disease only (table 2)
            response = {"CR": "CR", "non-CR/non-PD": "non-CR/non-PD", "NE": "NE"}[nt_resp]
            reasons.append(nt_why[k] or f"non-target lesions: {nt_resp}")
        elif t_resp == "NE":
            response = "NE"
            reasons.append(t_why)
        elif t_resp == "CR":
            if nt_resp in (None, "CR"):
                response = "CR"
                reasons.append(t_why + ("; non-target lesions disappeared too" if nt_resp == "CR" else ""))
            else:
                response = "PR"
                rest = "not all evaluated" if nt_resp == "NE" else "still present"
                reasons.append(f"{t_why}, but non-target lesions {rest} (RECIST: PR)")
        else:  # PR or SD
            response = t_resp
            reasons.append(t_why)
            if nt_resp == "NE":
                reasons.append("non-target lesions not all evaluated")
        first_pd = next((tp for tp in out if tp.response == "PD"), None)
        if first_pd is not None and response != "PD":
            # RECIST 1.1 dates progression by its first assessment; later responses do not undo it.
            when = f"follow-up {first_pd.timepoint}" + (f" ({first_pd.date})" if first_pd.date else "")
            reasons.append(f"progression was already documented at {when}")
        total = None if (missing or not targets) else measured_sum
        out.append(RecistTimepoint(
            timepoint=k,
            sum_mm=total,
            change_vs_baseline_pct=None if total is None else _pct(total, baseline_sum),
            change_vs_nadir_pct=None if total is None else _pct(total, nadir),
            nadir_mm=nadir if targets else None,
            response=response,
            new_lesions=new,
            diameters_mm=d,
            date=date_list[k],
            reason="; ".join(reasons),
            target_response=t_resp,
            non_target_response=nt_resp,
            new_lesion_ids=new_ids[k],
            provisional=prov[k],
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
    new_lesion_ids: Sequence[Sequence[int]] | None = None,
    non_targets: Iterable[int] = (),
    non_target_progression: Sequence[Iterable[int]] | None = None,
    provisional: Sequence[bool] | None = None,
    sites: Mapping[int, str] | None = None,
) -> RecistSummary:
    """RECIST from lesion table rows (one per lesion per timepoint).

    A target with no row at a timepoint is "not measured" (NE); a row with ``present=False`` is a
    lesion that disappeared (0 mm). ``targets`` defaults to :func:`select_targets` on the baseline.
    With neither ``new_lesions`` nor ``new_lesion_ids``, a lesion is new at the first follow-up
    where it is present (not again later). ``non_targets`` are assessed as a whole per timepoint (nodes among
    them are normal below 10 mm short axis); ``non_target_progression`` lists, per timepoint, the
    non-targets the reader called unequivocally progressing.
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
        targets = select_targets(by_tp[0].values(), nodes=node_set, sites=sites)
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
    if new_lesions is None and new_lesion_ids is None:
        # new at k: present at k and at no earlier timepoint (a lesion new at follow-up 1 is not new again at 2)
        seen: set[int] = set()
        new_lesion_ids = []
        for k in range(n):
            present = {lid for lid, r in by_tp.get(k, {}).items() if r.present}
            new_lesion_ids.append(sorted(present - seen) if k else [])
            seen |= present
    nts = sorted({int(i) for i in non_targets} - set(targets))
    nt_resp, nt_why = None, None
    if nts:
        progressed = [set(map(int, p)) for p in non_target_progression] if non_target_progression else [set()] * n
        nt_resp, nt_why = [], []
        for k in range(n):
            tp = by_tp.get(k, {})
            r, why = _non_target_response(nts, tp, node_set, progressed[k] if k < len(progressed) else set())
            nt_resp.append(None if k == 0 else r)
            nt_why.append(why)
    summary = evaluate_recist(diameters, nodes=node_set & set(targets), new_lesions=new_lesions, dates=dates,
                              new_lesion_ids=new_lesion_ids, non_target=nt_resp, non_target_reasons=nt_why,
                              provisional=provisional)
    return RecistSummary(summary.targets, summary.nodes, summary.timepoints, tuple(nts))


def _non_target_response(ids: Sequence[int], rows: Mapping[int, LesionMeasurement], nodes: set[int],
                         progressed: set[int]) -> tuple[str, str]:
    prog = sorted(set(ids) & progressed)
    if prog:
        return "PD", f"unequivocal progression of non-target {_plural('lesion', prog)}"
    missing = [i for i in ids if i not in rows]
    if missing:
        return "NE", f"non-target {_plural('lesion', missing)} not evaluated"
    remaining = [i for i in ids if rows[i].present and not (
        i in nodes and rows[i].short_axis_mm < NODE_NORMAL_SHORT_AXIS_MM - _EPS)]
    if not remaining:
        return "CR", "all non-target lesions disappeared" + (" (nodes < 10 mm short axis)" if nodes & set(ids) else "")
    return "non-CR/non-PD", f"non-target {_plural('lesion', remaining)} persist"


def select_targets(
    baseline_rows: Iterable[LesionMeasurement],
    *,
    nodes: Iterable[int] = (),
    max_targets: int = MAX_TARGETS,
    sites: Mapping[int, str] | None = None,
    max_per_organ: int = MAX_TARGETS_PER_ORGAN,
    slice_thickness_mm: float | None = None,
) -> list[int]:
    """Pick up to ``max_targets`` measurable baseline lesions, largest first (RECIST 1.1 rules 3.1, 4.2).

    Measurable: non-nodal long axis >= 10 mm (or twice ``slice_thickness_mm`` above 5 mm), nodal
    short axis >= 15 mm. With ``sites`` (lesion id -> site) at most ``max_per_organ`` per site
    (lymph nodes together count as one organ; ``"other"`` is not limited, it may hold several organs);
    ids in ``nodes`` or with site ``"lymph node"`` are nodes. Returned in id order.
    """
    sites = dict(sites or {})
    node_set = {int(n) for n in nodes} | {int(i) for i, s in sites.items() if s == "lymph node"}
    minimum = measurable_minimum_mm(slice_thickness_mm)
    measurable = []
    for r in baseline_rows:
        if not r.present:
            continue
        is_node = int(r.lesion_id) in node_set
        size = r.short_axis_mm if is_node else r.long_axis_mm
        if size >= (NODE_TARGET_SHORT_AXIS_MM if is_node else minimum) - _EPS:
            measurable.append((size, int(r.lesion_id)))
    measurable.sort(key=lambda t: (-t[0], t[1]))
    chosen: list[int] = []
    per_site: dict[str, int] = {}
    for _, lid in measurable:
        if len(chosen) >= max_targets:
            break
        site = sites.get(lid, "other")
        if site != "other" and per_site.get(site, 0) >= max_per_organ:
            continue
        per_site[site] = per_site.get(site, 0) + 1
        chosen.append(lid)
    return sorted(chosen)


def auto_assign_targets(study) -> list[int]:
    """Give a study RECIST roles by the rules: the largest measurable baseline lesions become
    targets (at most 5, 2 per organ, by each lesion's site), every other lesion present at the
    baseline a non-target. Lesions first seen later keep their role. Returns the targets."""
    base = study.baseline.name
    rows = [r for r in study.measurements() if r.timepoint == 0]
    sites = {lid: study.site(lid) for lid in study.lesion_ids}
    chosen = select_targets(rows, sites=sites, slice_thickness_mm=study.baseline.geometry.spacing[0])
    for lid in study.lesion_ids:
        if lid in chosen:
            study.set_lesion_info(lid, role="target", check_rules=False)
        elif study.status(lid, base) == "present":
            study.set_lesion_info(lid, role="non-target", check_rules=False)
    return chosen


def recist_for_study(
    study,
    targets: Iterable[int] | None = None,
    *,
    nodes: Iterable[int] = (),
    rows: Sequence[LesionMeasurement] | None = None,
) -> RecistSummary:
    """RECIST of a :class:`~.study.Study` (rows from its own per-lesion masks unless given).

    Targets: ``targets`` when given, else the lesions whose role is ``"target"``, else the rules'
    choice (:func:`select_targets` with the lesions' sites). Nodes: ``nodes`` plus the lesions whose
    site is ``"lymph node"``. Non-targets: the lesions whose role is ``"non-target"`` (and which are
    not targets). New lesions: the confirmed ones (review ``"new"``) at each follow-up. A follow-up
    is provisional while a target lesion there is unverified.
    """
    from .measurements import measure_study

    rows = list(rows) if rows is not None else measure_study(study)
    names = study.names
    sites = {lid: study.site(lid) for lid in study.lesion_ids}
    node_set = {int(n) for n in nodes} | set(study.nodes())
    if targets is None:
        targets = study.targets() or None
    if targets is None:
        targets = select_targets([r for r in rows if r.timepoint == 0], nodes=node_set, sites=sites,
                                 slice_thickness_mm=study.baseline.geometry.spacing[0])
    targets = [int(t) for t in targets]
    new_ids = [study.new_lesion_ids(name) if k else [] for k, name in enumerate(names)]
    progressed = [
        [lid for lid in study.non_targets()
         if (o := study.observation(lid, name)) is not None and o.unequivocal_progression]
        for name in names
    ]
    provisional = [
        k > 0 and any((o := study.observation(t, name)) is not None and o.review == "unverified" for t in targets)
        for k, name in enumerate(names)
    ]
    return recist_from_measurements(rows, targets, nodes=node_set, n_timepoints=len(names), new_lesion_ids=new_ids,
                                    non_targets=study.non_targets(), non_target_progression=progressed,
                                    provisional=provisional)

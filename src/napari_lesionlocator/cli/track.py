"""``lesionlocator track``: baseline lesions followed through one or more follow-ups (autoregressive).

Every lesion is tracked from its own whole mask: the baseline masks of ``-t box|point``, each file of
``-t prev_mask``, and at follow-up k+1 the lesion's own mask found at follow-up k (never its part of a
merged instance map: masks of two lesions may overlap). Each follow-up is written as soon as it is
done (``<fu>_lesion_<id>``, ``<fu>_lesions``, ``<fu>_summary.json``), and
``<baseline>_track_summary.json`` collects every lesion at every follow-up; an interrupted run
resumes with ``--continue_prediction`` from the last finished follow-up (each lesion's mask is read
back from its own file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..core.image import Image
from ..core.results import LesionMask, overlaps
from ..io.images import read_label_map
from .common import (
    ProgressBar,
    UsageError,
    add_command,
    add_engine_args,
    add_output_args,
    add_series_arg,
    case_writer,
    checked_prompts,
    info,
    make_engine,
    plan_outputs,
    read_one_volume,
    read_prompt_file,
    report_lesions,
    run_key,
    segment_case,
    warn_if_not_ct,
)

__all__ = ["add_parser", "run", "prev_mask_lesions", "track_summary_file"]


def track_summary_file(out: Path, baseline_case: str) -> Path:
    return Path(out) / f"{baseline_case}_track_summary.json"


def prev_mask_lesions(paths: list[Path], baseline: Image) -> dict[int, LesionMask]:
    """Each lesion's own baseline mask from ``-t prev_mask`` files.

    One file: an instance map whose ids are kept as they are (a binary mask is lesion 1). Several
    files: each file's non-zero voxels are one lesion, ids 1, 2, ... in the order given; the masks may
    overlap (each is its own lesion's prompt, none is cut by another).
    """
    from ..core.results import results_from_label_map

    for p in paths:
        if not p.exists():
            raise UsageError(f"prompt mask not found: {p}")
    if len(paths) == 1:
        labels = read_label_map(paths[0], like=baseline, name=f"{baseline.name}_lesions")
        found = results_from_label_map(labels)
        if not found:
            raise UsageError(f"{paths[0].name}: the mask is empty, there is no lesion to track")
        return {lid: r.mask for lid, r in found.items()}
    out: dict[int, LesionMask] = {}
    for k, p in enumerate(paths, start=1):
        mask = LesionMask.from_full(baseline.geometry, read_label_map(p, like=baseline).array != 0)
        if mask.is_empty:
            raise UsageError(f"{p.name}: the mask is empty (lesion {k} would have no voxel)")
        out[k] = mask
    return out


def _drain(gen, bar: ProgressBar):
    while True:
        try:
            bar.note(next(gen))
        except StopIteration as stop:
            return stop.value


def _write_track_summary(out: Path, baseline: Image, followups: list[Image]) -> Path:
    """``<baseline>_track_summary.json``: one entry per lesion per follow-up (with the follow-up's case name),
    the overlaps and the new-lesion candidates of every finished follow-up, read from their summaries."""
    from ..api.outputs import summary_file
    from ..io.tables import atomic_write_text

    doc = {"baseline": baseline.name, "followups": [], "lesions": [], "overlaps": [], "new_candidates": []}
    for fu in followups:
        try:
            one = json.loads(summary_file(out, fu.name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        doc["followups"].append(fu.name)
        doc["lesions"].extend({"case": fu.name} | e for e in one.get("lesions", []))
        doc["overlaps"].extend({"case": fu.name} | e for e in one.get("overlaps", []))
        doc["new_candidates"].extend({"case": fu.name} | c for c in one.get("new_candidates", []))
    return atomic_write_text(track_summary_file(out, baseline.name), json.dumps(doc, indent=2) + "\n",
                             overwrite=True)


def _read_back(out: Path, image: Image):
    from ..api import read_case_lesions

    lesions = read_case_lesions(out, image.name, image.geometry)
    if lesions is None:
        raise UsageError(f"{image.name}: its outputs in {out} changed while starting; run again")
    return lesions


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``track`` on the ``lesionlocator`` subparsers (called by :func:`.build_parser`)."""
    p = add_command(
        sub, "track",
        help="track baseline lesions through follow-up scans",
        description="Track lesions from a baseline through follow-ups, each from the previous one (ids never "
                    "change), each from its own whole mask. Writes <followup>_lesion_<id>.nii.gz, "
                    "<followup>_lesions.nii.gz and <followup>_summary.json per follow-up and "
                    "<baseline>_track_summary.json; with -t point|box the baseline is segmented first and written "
                    "under the baseline's name.",
    )
    p.add_argument("-bl", "--baseline", required=True, metavar="BASELINE", help="baseline image file or DICOM folder")
    p.add_argument("-fu", "--followup", required=True, nargs="+", metavar="FOLLOWUP",
                   help="follow-up image(s), in time order")
    p.add_argument("-p", "--prompts", required=True, nargs="+", metavar="PROMPT",
                   help="-t point|box: one prompt JSON or label map for the baseline; -t prev_mask: one instance map "
                        "(ids kept) or several binary masks (each one lesion, ids 1, 2, ... in the order given; "
                        "they may overlap)")
    p.add_argument("-t", "--prompt_type", required=True, choices=["point", "box", "prev_mask"], help="prompt type")
    add_series_arg(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if needed)")
    p.add_argument("--no-new-lesions", dest="new_lesions", action="store_false",
                   help="skip the search for new-lesion candidates at each follow-up (classical engine; the "
                        "slowest part of a tracking step on whole scans); the summaries then list none")
    add_engine_args(p)
    add_output_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import iter_track_series
    from ..io.atomic import require_output_folder

    require_output_folder(args.output)  # exit 2 before any work
    out = Path(args.output)
    baseline = read_one_volume(Path(args.baseline), args.series)
    followups = [read_one_volume(Path(f), args.series) for f in args.followup]
    names = [baseline.name] + [f.name for f in followups]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        # The LesionLocator dataset layout names every timepoint's file alike (Baseline/images/case.nii.gz,
        # Synthetic_Follow_Up/images/case.nii.gz): tell the outputs apart by timepoint instead of refusing.
        for k, image in enumerate([baseline, *followups]):
            image.name = f"{image.name}_tp{k}"
        info(f"inputs share the case name(s) {dupes}: outputs are named <case>_tp<k> (k = 0 for the baseline)", args)
    for img in [baseline, *followups]:
        warn_if_not_ct(img)
    prompt_paths = [Path(p) for p in args.prompts]

    source: dict[int, LesionMask] | None = None
    prompts = label_prompt = None
    if args.prompt_type == "prev_mask":
        source = prev_mask_lesions(prompt_paths, baseline)
        ids = sorted(source)
    else:
        if len(prompt_paths) != 1:
            raise UsageError(f"-t {args.prompt_type} takes one prompt file for the baseline, got {len(prompt_paths)}")
        prompts, label_prompt = read_prompt_file(prompt_paths[0], baseline, args.prompt_type)
        prompts = checked_prompts(prompts, baseline, source=prompt_paths[0].name)
        ids = [p.lesion_id for p in prompts]

    # Decide everything before any work: exit 3 here leaves the folder untouched.
    seg_plan = plan_outputs(out, baseline.name, ids, baseline.geometry, args, f"baseline {baseline.name}") \
        if prompts is not None else None
    plans = [plan_outputs(out, f.name, ids, f.geometry, args, f"follow-up {f.name}") for f in followups]
    start = next((k for k, p in enumerate(plans) if p.action == "run"), len(followups))
    if seg_plan is not None and seg_plan.action == "run":
        start = 0
    if start == len(followups) and (seg_plan is None or seg_plan.action == "skip"):
        info("nothing to do: every follow-up is finished (--continue_prediction)", args)
        return 0
    redo_later = [followups[k].name for k in range(start, len(followups)) if plans[k].action == "skip"]
    if redo_later:
        info(f"recomputing {', '.join(redo_later)}: they depend on a follow-up that is recomputed", args)
    key = run_key(args, *prompt_paths)

    engine = make_engine(args)
    bar = ProgressBar(len(followups) - start + (1 if seg_plan is not None and seg_plan.action == "run" else 0),
                      "track", args, unit="scan")
    try:
        if seg_plan is not None:
            if seg_plan.action == "run":
                bar.bar.set_description(f"segment {baseline.name}")
                writer = case_writer(out, baseline.name, baseline.geometry, ids, seg_plan, key, args)
                segment_case(engine, baseline, prompts, label_prompt, args.prompt_type, writer, bar)
                report_lesions(baseline.name, writer.done, args)
                writer.finish()
                lesions = writer.done
                bar.advance(1)
            else:
                lesions = _read_back(out, baseline)
                info(f"{baseline.name}: baseline segmentation read back from {out} (--continue_prediction)", args)
            source = {i: lesions[i].mask for i in ids}
        previous = baseline
        if start > 0:
            previous = followups[start - 1]
            back = _read_back(out, previous)
            source = {i: back[i].mask for i in ids}
            info(f"resuming after {previous.name}: each lesion's own mask read back (--continue_prediction)", args)
        for k in range(start, len(followups)):
            fu = followups[k]
            bar.bar.set_description(f"{previous.name} -> {fu.name}")
            plan = plans[k]
            if plan.action == "skip":  # recomputed: it depends on an earlier follow-up that is recomputed
                plan = type(plan)("run", True)
            writer = case_writer(out, fu.name, fu.geometry, ids, plan, None, args)
            series = _drain(iter_track_series(engine, previous, source, [fu], on_progress=bar.note), bar)
            result = series.results[0]
            for lid in ids:
                writer.add(result.lesions[lid])
            report_lesions(fu.name, result.lesions, args)
            for a, b, n in overlaps(result.lesions):
                info(f"{fu.name}: lesions {a} and {b} overlap in {n} voxel(s) (both files hold them)", args)
            writer.finish(new_candidates=result.new_candidates)
            _write_track_summary(out, baseline, followups)
            bar.advance(1)
            # each lesion's own whole mask at follow-up k is its prompt for k+1
            previous, source = fu, {lid: result.lesions[lid].mask for lid in ids}
    finally:
        bar.close()
    info(f"wrote results for {len(followups) - start} follow-up(s) to {out}", args)
    return 0

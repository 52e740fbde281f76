"""``lesionlocator track``: baseline lesions followed through one or more follow-ups (autoregressive).

Each follow-up is tracked from the previous one (its predicted masks are the next prompts) and
written as soon as it is done, so an interrupted run resumes with ``--continue_prediction`` from
the last finished follow-up (its instance map is read back from the output folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ._cli_common import (
    ProgressBar,
    UsageError,
    case_outputs,
    checked_prompts,
    info,
    instance_file,
    make_engine,
    plan_outputs,
    read_one_volume,
    read_prompt_file,
    run_segmentation,
    warn,
    warn_if_not_ct,
    write_case_outputs,
)
from .core.image import Image, LabelMap
from .io.images import read_label_map

__all__ = ["run_track", "prev_mask_labels"]


def prev_mask_labels(paths: list[Path], baseline: Image) -> LabelMap:
    """Baseline instance map from ``-t prev_mask`` files.

    One file: an instance map whose ids are kept as they are (a binary mask is lesion 1).
    Several files: each file's non-zero voxels become one lesion, ids 1, 2, ... in the order given
    (where masks overlap, the later file wins).
    """
    for p in paths:
        if not p.exists():
            raise UsageError(f"prompt mask not found: {p}")
    if len(paths) == 1:
        labels = read_label_map(paths[0], like=baseline, name=f"{baseline.name}_lesions")
        if not labels.ids:
            raise UsageError(f"{paths[0].name}: the mask is empty, there is no lesion to track")
        return labels
    out = LabelMap.empty(baseline.geometry, f"{baseline.name}_lesions")
    for k, p in enumerate(paths, start=1):
        mask = read_label_map(p, like=baseline).array != 0
        if not mask.any():
            raise UsageError(f"{p.name}: the mask is empty (lesion {k} would have no voxel)")
        out.paste(k, mask)
    lost = [k for k in range(1, len(paths) + 1) if k not in out.ids]
    if lost:
        raise UsageError(f"mask(s) {lost} are entirely covered by later masks; give non-overlapping masks")
    return out


def _drain(gen, bar: ProgressBar):
    while True:
        try:
            bar.note(next(gen))
        except StopIteration as stop:
            return stop.value


def run_track(args: argparse.Namespace) -> int:
    from .api import iter_track_series

    out = Path(args.output)
    baseline = read_one_volume(Path(args.baseline))
    followups = [read_one_volume(Path(f)) for f in args.followup]
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

    baseline_labels: LabelMap | None = None
    prompts = label_prompt = None
    if args.prompt_type == "prev_mask":
        baseline_labels = prev_mask_labels(prompt_paths, baseline)
        ids = baseline_labels.ids
    else:
        if len(prompt_paths) != 1:
            raise UsageError(f"-t {args.prompt_type} takes one prompt file for the baseline, got {len(prompt_paths)}")
        prompts, label_prompt = read_prompt_file(prompt_paths[0], baseline, args.prompt_type)
        prompts = checked_prompts(prompts, baseline, source=prompt_paths[0].name)
        ids = [p.lesion_id for p in prompts]

    # Decide everything before any work: exit 3 here leaves the folder untouched.
    seg_plan = plan_outputs(case_outputs(out, baseline.name, ids), args, f"baseline {baseline.name}") \
        if prompts is not None else None
    plans = [plan_outputs(case_outputs(out, f.name, ids), args, f"follow-up {f.name}") for f in followups]
    start = next((k for k, p in enumerate(plans) if p.action == "run"), len(followups))
    if seg_plan is not None and seg_plan.action == "run":
        start = 0
    if start == len(followups) and (seg_plan is None or seg_plan.action == "skip"):
        info("nothing to do: every follow-up is finished (--continue_prediction)", args)
        return 0
    redo_later = [followups[k].name for k in range(start, len(followups)) if plans[k].action == "skip"]
    if redo_later:
        info(f"recomputing {', '.join(redo_later)}: they depend on a follow-up that is recomputed", args)

    engine = make_engine(args)
    bar = ProgressBar(len(followups) - start + (1 if seg_plan is not None and seg_plan.action == "run" else 0),
                      "track", args, unit="scan")
    try:
        if seg_plan is not None:
            if seg_plan.action == "run":
                bar.bar.set_description(f"segment {baseline.name}")
                result = run_segmentation(engine, baseline, prompts, label_prompt, args.prompt_type, bar)
                baseline_labels = result.labels
                for lid in result.empty_ids:
                    warn(f"{baseline.name}: lesion {lid}: the baseline mask is empty; it cannot be tracked")
                write_case_outputs(baseline_labels, out, baseline.name, ids, overwrite=seg_plan.overwrite)
                bar.advance(1)
            else:
                baseline_labels = read_label_map(instance_file(out, baseline.name), like=baseline)
                info(f"{baseline.name}: baseline segmentation read back from {out} (--continue_prediction)", args)
        previous, source = baseline, baseline_labels
        if start > 0:
            previous = followups[start - 1]
            source = read_label_map(instance_file(out, previous.name), like=previous)
            info(f"resuming after {previous.name} (--continue_prediction)", args)
        for k in range(start, len(followups)):
            fu = followups[k]
            bar.bar.set_description(f"{previous.name} -> {fu.name}")
            series = _drain(iter_track_series(engine, previous, source, [fu], on_progress=bar.note), bar)
            result = series.results[0]
            labels = result.labels
            lost = sorted(set(result.lost_ids) | {i for i in ids if not np.any(labels.array == i)})
            if lost:
                warn(f"{fu.name}: lesion(s) {lost} not found (written as empty files)")
            for msg in result.messages:
                info(f"{fu.name}: {msg}", args)
            overwrite = plans[k].overwrite or plans[k].action == "skip"
            write_case_outputs(labels, out, fu.name, ids, overwrite=overwrite)
            bar.advance(1)
            previous, source = fu, labels
    finally:
        bar.close()
    info(f"wrote results for {len(followups) - start} follow-up(s) to {out}", args)
    return 0

"""Headless pipeline shared by the CLI, the demo, the tests and the GUI workers (no Qt, no napari).

Every long job is a generator that yields :class:`ProgressEvent` between units of work
(lesions, timepoints) and *returns* its result, so that

* the GUI runs it with napari's ``create_worker`` (cancel takes effect at the next yield,
  and a :class:`CancelToken` passed to the engine stops long steps inside it);
* the CLI and tests drain it synchronously with :func:`run_sync`.

Every lesion keeps its own whole mask (:class:`~.core.results.LesionResult`) from the engine to the
files: two lesions' masks may overlap, and the instance map (``labels``) is only a display product.

The API in one place:

* jobs: :func:`iter_segment`, :func:`iter_segment_label_map`, :func:`iter_track_series`, :func:`run_sync`;
* engine settings resolved once for CLI and GUI: :func:`engine_settings`, :func:`make_engine`;
* a case's output files (each lesion's own mask, display map, ``<case>_summary.json``), written per
  lesion as they finish and replaced as a whole: :class:`CaseWriter`, :func:`write_case_outputs`,
  :func:`case_summary`;
* measuring and RECIST 1.1: :func:`measure_timepoints`, :func:`write_measurements`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

from ..core.image import Image, LabelMap
from ..core.progress import CancelToken, ProgressCallback, ProgressEvent
from ..core.prompts import Prompt
from ..core.results import LesionMask, LesionResult, compose_label_map, results_from_label_map
from ..engines.base import Engine, LesionMasks, SegmentationResult, TrackingResult, as_lesion_masks
from .measure import MeasurementResult, measure_timepoints, write_measurements
from .outputs import (
    CaseWriter,
    case_is_complete,
    case_outputs,
    case_summary,
    instance_file,
    lesion_file,
    read_case_lesions,
    staging_folder,
    summary_file,
    write_case_outputs,
)
from .settings import engine_settings, make_engine

__all__ = [
    "iter_segment",
    "iter_segment_label_map",
    "iter_track_series",
    "run_sync",
    "SeriesTrackingResult",
    "engine_settings",
    "make_engine",
    "CaseWriter",
    "write_case_outputs",
    "case_summary",
    "case_outputs",
    "lesion_file",
    "instance_file",
    "summary_file",
    "staging_folder",
    "read_case_lesions",
    "case_is_complete",
    "as_lesion_masks",
    "measure_timepoints",
    "write_measurements",
    "MeasurementResult",
]

#: called with each lesion's result as soon as it is finished (e.g. to write its file)
LesionCallback = Callable[[LesionResult], None]


def iter_segment(
    engine: Engine,
    image: Image,
    prompts: Sequence[Prompt],
    *,
    labels: LabelMap | None = None,
    cancel: CancelToken | None = None,
    on_progress: ProgressCallback | None = None,
    on_lesion: LesionCallback | None = None,
) -> Generator[ProgressEvent, None, SegmentationResult]:
    """Segment each prompt (one lesion id each), one lesion at a time.

    The result's ``lesions[id]`` is that lesion's own whole mask with its status; ``labels`` is the
    display map: a copy of ``labels`` (a prompt whose id exists there replaces that lesion) or a new
    map, later lesion wins where masks overlap. ``on_lesion`` gets each lesion's result as soon as it
    is finished, so a long run can save what it finished. ``prompts`` may hold what the engine's
    ``label_map_prompts`` returned (see :func:`iter_segment_label_map`).
    """
    out = labels.copy() if labels is not None else LabelMap.empty_like(image)
    result = SegmentationResult(out)
    total = len(prompts)
    yield ProgressEvent(0, total, f"preparing {image.name}")
    from ..io.limits import check_engine_memory

    check_engine_memory(image.name, image.shape, getattr(engine, "name", ""))  # refuse before the work, not killed
    engine.prepare(image)
    for i, prompt in enumerate(prompts):
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield ProgressEvent(i, total, f"lesion {prompt.lesion_id} ({prompt.kind})")
        single = engine.segment(image, [prompt], on_progress=on_progress, cancel=cancel)
        lesion = _own_result(single, prompt.lesion_id, image)
        result.lesions[prompt.lesion_id] = lesion
        out.array = compose_label_map([lesion], image.geometry, out.name, base=out).array
        if lesion.mask.is_empty and prompt.lesion_id not in single.empty_ids:
            result.empty_ids.append(prompt.lesion_id)
        result.empty_ids.extend(single.empty_ids)
        result.messages.extend(single.messages)
        if on_lesion is not None:
            on_lesion(lesion)
    yield ProgressEvent(total, total, "done")
    return result


def iter_segment_label_map(
    engine: Engine,
    image: Image,
    label_prompt: LabelMap,
    kind: str,
    *,
    cancel: CancelToken | None = None,
    on_progress: ProgressCallback | None = None,
    on_lesion: LesionCallback | None = None,
    skip_ids: Sequence[int] = (),
) -> Generator[ProgressEvent, None, SegmentationResult]:
    """Segment one lesion per id of a label-map prompt (a binary map: per 26-connected component).

    An engine with ``label_map_prompts(image, labels, kind) -> (prompts, {id: reason})`` derives the
    prompts its own way (the LesionLocator engine resamples the map with the image, as the official
    tool does); otherwise boxes/centroids come from :func:`~.core.prompts.prompts_from_label_map`.
    Each lesion is then segmented on its own (:func:`iter_segment`); ids without a prompt are
    reported ``empty`` with the reason. ``skip_ids``: lesions already done (a resumed run).
    """
    from ..core.prompts import prompts_from_label_map

    derive = getattr(engine, "label_map_prompts", None)
    if derive is not None:
        prompts, vanished = derive(image, label_prompt, kind)
    else:
        arr = label_prompt.array if isinstance(label_prompt, LabelMap) else label_prompt
        prompts, vanished = prompts_from_label_map(arr, kind), {}
    skip = {int(i) for i in skip_ids}
    prompts = [p for p in prompts if p.lesion_id not in skip]
    result = yield from iter_segment(engine, image, prompts, cancel=cancel, on_progress=on_progress,
                                     on_lesion=on_lesion)
    for lid, reason in vanished.items():
        if lid in skip:
            continue
        lesion = LesionResult(lid, LesionMask.empty(image.geometry), "empty", [reason])
        result.lesions[lid] = lesion
        result.empty_ids.append(lid)
        result.messages.append(f"lesion {lid}: {reason}")
        if on_lesion is not None:
            on_lesion(lesion)
    return result


def _own_result(single: SegmentationResult | TrackingResult, lesion_id: int, image: Image) -> LesionResult:
    """The engine's own whole-mask result for ``lesion_id`` (engines that only give an instance
    map are read from it, which is exact when they segmented one lesion)."""
    if lesion_id in single.lesions:
        return single.lesions[lesion_id]
    found = results_from_label_map(single.labels, ids=[lesion_id])
    if lesion_id in found:
        return found[lesion_id]
    return LesionResult(lesion_id, LesionMask.empty(image.geometry), "empty")


@dataclass
class SeriesTrackingResult:
    """One tracking result per follow-up, in order (follow-up k was tracked from k-1)."""

    results: list[TrackingResult] = field(default_factory=list)

    @property
    def label_maps(self) -> list[LabelMap]:
        return [r.labels for r in self.results]


def iter_track_series(
    engine: Engine,
    baseline: Image,
    baseline_labels: LesionMasks | LabelMap,
    followups: Sequence[Image],
    *,
    lesion_ids: Sequence[int] | None = None,
    cancel: CancelToken | None = None,
    on_progress: ProgressCallback | None = None,
    on_result: Callable[[int, TrackingResult], None] | None = None,
) -> Generator[ProgressEvent, None, SeriesTrackingResult]:
    """Track lesions autoregressively: baseline -> follow-up 1 -> follow-up 2 ...

    Each lesion's own whole mask predicted at follow-up k is its prompt for k+1, with follow-up k as
    the new baseline. Ids never change; ``lesion_ids`` restricts which lesions are propagated.
    ``baseline_labels`` is each lesion's own whole mask (``{id: LesionMask}``; masks may overlap) or an
    instance map. Every result's ``lesions`` holds every propagated id: a lesion lost at an earlier
    follow-up stays ``lost`` (nothing to prompt with). ``on_result(k, result)`` is called as soon as
    follow-up k is done (e.g. to write its files).
    """
    source: dict[int, LesionMask] = as_lesion_masks(baseline_labels)
    if lesion_ids is not None:
        source = {int(lid): source[int(lid)] for lid in lesion_ids if int(lid) in source}
    all_ids = sorted(source)
    source = {lid: m for lid, m in source.items() if not m.is_empty}
    series = SeriesTrackingResult()
    previous = baseline
    total = len(followups)
    for k, followup in enumerate(followups):
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield ProgressEvent(k, total, f"tracking {previous.name} -> {followup.name}")
        if source:
            result = engine.track(previous, source, followup, on_progress=on_progress, cancel=cancel)
        else:
            result = TrackingResult(LabelMap.empty_like(followup), [], ["no lesion left to track"])
        result.labels.name = f"{followup.name}_lesions"
        if not result.lesions:  # an engine that only gives the instance map
            result.lesions = results_from_label_map(result.labels, ids=source)
        for lid in source:
            if lid not in result.lesions:
                result.lesions[lid] = LesionResult(lid, LesionMask.empty(followup.geometry), "lost",
                                                   ["not found in the follow-up"])
        for lid in all_ids:
            if lid not in source:
                result.lesions[lid] = LesionResult(lid, LesionMask.empty(followup.geometry), "lost",
                                                   [f"not tracked: it has no mask at {previous.name}"])
        result.lesions = {lid: result.lesions[lid] for lid in sorted(result.lesions)}
        result.lost_ids = sorted(set(result.lost_ids) | {lid for lid, r in result.lesions.items()
                                                         if r.status == "lost"})
        series.results.append(result)
        if on_result is not None:
            on_result(k, result)
        # each lesion's own whole mask at follow-up k is its prompt for k+1
        previous = followup
        source = {lid: r.mask for lid, r in result.lesions.items() if not r.mask.is_empty}
    yield ProgressEvent(total, total, "done")
    return series


def run_sync(generator: Generator, on_progress: ProgressCallback | None = None):
    """Drain a job generator in the calling thread and return its result."""
    while True:
        try:
            event = next(generator)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None and isinstance(event, ProgressEvent):
            on_progress(event)

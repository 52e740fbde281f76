"""Headless pipeline shared by the CLI, the tests and the GUI workers (no Qt, no napari).

Every long job is a generator that yields :class:`ProgressEvent` between units of work
(lesions, timepoints) and *returns* its result, so that

* the GUI runs it with napari's ``create_worker`` (cancel takes effect at the next yield,
  and a :class:`CancelToken` passed to the engine stops long steps inside it);
* the CLI and tests drain it synchronously with :func:`run_sync`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from .core.image import Image, LabelMap
from .core.progress import CancelToken, ProgressCallback, ProgressEvent
from .core.prompts import Prompt
from .core.results import LesionMask, LesionResult, compose_label_map, results_from_label_map
from .engines.base import Engine, LesionMasks, SegmentationResult, TrackingResult, as_lesion_masks

__all__ = ["iter_segment", "iter_track_series", "run_sync", "SeriesTrackingResult"]


def iter_segment(
    engine: Engine,
    image: Image,
    prompts: Sequence[Prompt],
    *,
    labels: LabelMap | None = None,
    cancel: CancelToken | None = None,
    on_progress: ProgressCallback | None = None,
) -> Generator[ProgressEvent, None, SegmentationResult]:
    """Segment each prompt (one lesion id each) into ``labels`` (a copy) or a new label map.

    A prompt whose id already exists in ``labels`` replaces that lesion's mask.
    """
    out = labels.copy() if labels is not None else LabelMap.empty_like(image)
    result = SegmentationResult(out)
    total = len(prompts)
    yield ProgressEvent(0, total, f"preparing {image.name}")
    engine.prepare(image)
    for i, prompt in enumerate(prompts):
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield ProgressEvent(i, total, f"lesion {prompt.lesion_id} ({prompt.kind})")
        single = engine.segment(image, [prompt], on_progress=on_progress, cancel=cancel)
        lesion = _own_result(single, prompt.lesion_id, image)
        result.lesions[prompt.lesion_id] = lesion
        out.array = compose_label_map([lesion], image.geometry, out.name, base=out).array
        result.empty_ids.extend(single.empty_ids)
        result.messages.extend(single.messages)
    yield ProgressEvent(total, total, "done")
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
) -> Generator[ProgressEvent, None, SeriesTrackingResult]:
    """Track lesions autoregressively: baseline -> follow-up 1 -> follow-up 2 ...

    The mask predicted at follow-up k is the prompt for k+1, with follow-up k as the new baseline.
    Ids never change; ``lesion_ids`` restricts which lesions are propagated. ``baseline_labels`` is
    each lesion's own whole mask (``{id: LesionMask}``) or an instance map.
    """
    source: dict[int, LesionMask] = as_lesion_masks(baseline_labels)
    if lesion_ids is not None:
        source = {int(lid): source[int(lid)] for lid in lesion_ids if int(lid) in source}
    series = SeriesTrackingResult()
    previous = baseline
    total = len(followups)
    for k, followup in enumerate(followups):
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield ProgressEvent(k, total, f"tracking {previous.name} -> {followup.name}")
        result = engine.track(previous, source, followup, on_progress=on_progress, cancel=cancel)
        result.labels.name = f"{followup.name}_lesions"
        if not result.lesions:  # an engine that only gives the instance map
            result.lesions = results_from_label_map(result.labels, ids=source)
            for lid in result.lost_ids:
                result.lesions[lid] = LesionResult(lid, LesionMask.empty(followup.geometry), "lost")
        series.results.append(result)
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

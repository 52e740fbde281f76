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
from .engines.base import Engine, SegmentationResult, TrackingResult

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
        out.paste(prompt.lesion_id, single.labels.array == prompt.lesion_id)
        result.empty_ids.extend(single.empty_ids)
        result.messages.extend(single.messages)
    yield ProgressEvent(total, total, "done")
    return result


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
    baseline_labels: LabelMap,
    followups: Sequence[Image],
    *,
    lesion_ids: Sequence[int] | None = None,
    cancel: CancelToken | None = None,
    on_progress: ProgressCallback | None = None,
) -> Generator[ProgressEvent, None, SeriesTrackingResult]:
    """Track lesions autoregressively: baseline -> follow-up 1 -> follow-up 2 ...

    The mask predicted at follow-up k is the prompt for k+1, with follow-up k as the new baseline.
    Ids never change; ``lesion_ids`` restricts which lesions are propagated.
    """
    source_labels = baseline_labels
    if lesion_ids is not None:
        keep = LabelMap.empty(baseline_labels.geometry, baseline_labels.name, baseline_labels.array.dtype)
        for lid in lesion_ids:
            keep.paste(int(lid), baseline_labels.mask(int(lid)))
        source_labels = keep
    series = SeriesTrackingResult()
    previous = baseline
    total = len(followups)
    for k, followup in enumerate(followups):
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield ProgressEvent(k, total, f"tracking {previous.name} -> {followup.name}")
        result = engine.track(previous, source_labels, followup, on_progress=on_progress, cancel=cancel)
        result.labels.name = f"{followup.name}_lesions"
        series.results.append(result)
        previous, source_labels = followup, result.labels
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

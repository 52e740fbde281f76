"""The classical engine object: validation, threads, progress and cancel around the algorithms."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...core.errors import PromptError
from ...core.image import Image, LabelMap
from ...core.progress import CancelToken, ProgressCallback, report
from ...core.prompts import BoxPrompt, PointPrompt, Prompt
from ...core.results import LesionMask, LesionResult, compose_label_map
from ..base import EngineSettings, LesionMasks, SegmentationResult, TrackingResult
from .segment import RoiMask, segment_box, segment_point

__all__ = ["ClassicalEngine"]


def _checker(cancel: CancelToken | None):
    if cancel is None:
        return lambda: None
    return cancel.raise_if_cancelled


def _apply_threads(threads: int | None) -> None:
    if threads is None:
        return
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))


class ClassicalEngine:
    """Seeded region segmentation and registration-based tracking (SimpleITK, scipy, scikit-image).

    Needs no weights and runs interactively on a CPU. See :mod:`.segment` and :mod:`.track`.
    """

    name = "classical"

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        _apply_threads(self.settings.threads)

    # -------------------------------------------------------------- prepare
    def prepare(self, image: Image) -> None:
        """Nothing to precompute: every prompt works on a small region around itself."""
        return None

    # -------------------------------------------------------------- segment
    def segment_one(self, image: Image, prompt: Prompt, *, cancel: CancelToken | None = None) -> RoiMask:
        """One prompt -> a :class:`.segment.RoiMask` on a crop of ``image`` (PromptError for bad prompts)."""
        check = _checker(cancel)
        spacing = np.asarray(image.geometry.spacing)
        shape = image.geometry.shape
        if isinstance(prompt, PointPrompt):
            prompt.validate(shape)
            return segment_point(image.array, spacing, prompt.zyx, check=check)
        if isinstance(prompt, BoxPrompt):
            box = prompt.clipped(shape)  # PromptError when nothing of the box is inside the volume
            return segment_box(image.array, spacing, box.start, box.stop, check=check)
        raise PromptError(f"unsupported prompt type {type(prompt).__name__}: use a point or a box")

    def segment(
        self,
        image: Image,
        prompts: Sequence[Prompt],
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentationResult:
        """One lesion per prompt on ``image``'s grid, label value = ``prompt.lesion_id``.

        All prompts are validated before any work starts. Prompts whose mask is empty are listed
        in ``empty_ids`` with a message. Later prompts win where masks overlap.
        """
        _apply_threads(self.settings.threads)
        seen: set[int] = set()
        for p in prompts:
            if p.lesion_id in seen:
                raise PromptError(f"two prompts share lesion id {p.lesion_id}")
            seen.add(p.lesion_id)
            if isinstance(p, PointPrompt):
                p.validate(image.shape)
            elif isinstance(p, BoxPrompt):
                p.clipped(image.shape)
        max_id = max(seen, default=0)
        dtype = np.uint16 if max_id <= np.iinfo(np.uint16).max else np.uint32
        labels = LabelMap.empty(image.geometry, f"{image.name}_lesions", dtype=dtype)
        result = SegmentationResult(labels)
        total = len(prompts)
        for i, prompt in enumerate(prompts):
            if cancel is not None:
                cancel.raise_if_cancelled()
            report(on_progress, i, total, f"segmenting lesion {prompt.lesion_id} ({prompt.kind})")
            lesion = self.segment_one(image, prompt, cancel=cancel)
            lid = prompt.lesion_id
            own = LesionMask.from_crop(image.geometry, lesion.start, lesion.mask)
            if own.is_empty:
                why = lesion.message or "nothing lesion-like found"
                result.empty_ids.append(lid)
                result.messages.append(f"lesion {lid}: empty mask ({why})")
                result.lesions[lid] = LesionResult(lid, own, "empty", [why], {"engine": self.name})
                continue
            notes = list(lesion.reasons)
            if lesion.message and not any(lesion.message == n for n in notes):
                notes.append(lesion.message)
            result.lesions[lid] = LesionResult(lid, own, lesion.status, notes,
                                               {"engine": self.name, "quality": dict(lesion.quality)})
            if lesion.message:
                result.messages.append(f"lesion {lid}: {lesion.message}")
            elif lesion.reasons:
                result.messages.append(f"lesion {lid}: check: " + "; ".join(lesion.reasons))
        result.labels = compose_label_map(result.lesions, image.geometry, labels.name)
        report(on_progress, total, total, "segmentation done")
        return result

    # -------------------------------------------------------------- track
    def track(
        self,
        baseline: Image,
        baseline_labels: LesionMasks | LabelMap,
        followup: Image,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> TrackingResult:
        """Every baseline lesion on ``followup``'s grid, ids kept, each from its own whole mask
        (``{id: LesionMask}`` or an instance map; see :mod:`.track`)."""
        from .track import track_lesions

        _apply_threads(self.settings.threads)
        # settings.extra["new_candidates"] = False skips the new-lesion search (the slowest part
        # of a tracking step on whole clinical scans) when only the known lesions matter.
        candidates = bool(self.settings.extra.get("new_candidates", True))
        return track_lesions(baseline, baseline_labels, followup, on_progress=on_progress, cancel=cancel,
                             candidates=candidates)

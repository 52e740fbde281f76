"""LesionLocator engine (nnU-Net v2 + uniGradICON); torch is imported lazily.

Importing this package is cheap and torch-free: torch, nnunetv2 and the networks load on first
use. ``LesionLocatorEngine`` implements ``engines.base.Engine``:

* models load once per engine (lazily, per part: point/box segmenters, tracker) and stay loaded;
* ``prepare(image)`` caches the image's preprocessing (keyed by the image object), reused by
  every later prompt on that image;
* ``segment`` runs the fast path (``segmentation.segment_prompt_fast``), whose masks equal the
  plain full-volume pipeline's (``segmentation.segment_full_volume_reference``);
* ``track`` delegates to ``tracking.track_lesions`` with the model from ``tracking.load_track_model``.

Engine-specific settings go in ``EngineSettings.extra``: ``allow_unsafe`` (bool: permit a full
unpickling load of a user-chosen checkpoint when the weights-only load refuses it) and
``precision`` (``"float16"``: the official numerics, default; ``"float32"``: labelled option).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
import weakref
from collections.abc import Sequence

import numpy as np

from ...core.errors import EngineError, PromptError
from ...core.image import Image, LabelMap
from ...core.progress import CancelToken, ProgressCallback, report
from ...core.prompts import BoxPrompt, PointPrompt, Prompt, instance_map_from_labels
from ..base import EngineSettings, SegmentationResult, TrackingResult

__all__ = ["LesionLocatorEngine"]

log = logging.getLogger(__name__)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "estimating"
    return f"~{s:.0f} s left" if s < 120 else f"~{s / 60:.1f} min left"


class LesionLocatorEngine:
    """Promptable segmentation (and tracking, via the tracking module) with the LesionLocator networks.

    Parameters
    ----------
    settings : EngineSettings
        ``checkpoint`` (else ``$LESIONLOCATOR_CHECKPOINT``, else the user config), ``device``,
        ``folds`` (None: every fold found), ``tta`` (mirroring over the checkpoint's allowed axes),
        ``threads``; ``extra["allow_unsafe"]``, ``extra["precision"]``.
    """

    name = "lesionlocator"

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.precision = str(self.settings.extra.get("precision", "float16"))
        if self.precision not in ("float16", "float32"):
            raise EngineError(f"unknown precision {self.precision!r}: use float16 (official numerics) or float32")
        self.allow_unsafe = bool(self.settings.extra.get("allow_unsafe", False))
        self._models: dict[str, object] = {}
        # Per image object (weak keys: forgotten with the image), per plans' preprocessing settings.
        self._pre_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._meta_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._region_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._device = None
        self._field_cache = None
        self._plans: dict[str, tuple] = {}
        self.messages: list[str] = []  # every note so far (e.g. which folds each model uses)
        self._unreported: list[str] = []  # notes not yet handed out in a result

    # ------------------------------------------------------------ resources
    @property
    def device(self):
        if self._device is None:
            from .device import resolve_device

            self._device = resolve_device(self.settings.device)
            if self.settings.threads:
                import torch

                torch.set_num_threads(int(self.settings.threads))
        return self._device

    def checkpoint_root(self):
        from .config import resolve_checkpoint_path

        return resolve_checkpoint_path(self.settings.checkpoint)

    def model(self, part: str):
        """The loaded model of ``part`` ("point", "box", "track"), loaded on first use and kept."""
        if part not in self._models:
            kwargs = {"folds": self.settings.folds, "device": self.device, "allow_unsafe": self.allow_unsafe}
            if part == "track":
                mod = _tracking_module()
                loader = getattr(mod, "load_track_model", None) if mod else None
                if loader is None:
                    raise EngineError("LesionLocator tracking is not available in this installation")
                m = loader(self.checkpoint_root(), **kwargs)
            else:
                from .checkpoint import load_model

                m = load_model(self.checkpoint_root(), part, **kwargs)
            notes = list(getattr(m, "notes", []))
            self.messages.extend(notes)
            self._unreported.extend(notes)
            self._models[part] = m
        return self._models[part]

    def plans(self, part: str):
        """(PlansManager, ConfigurationManager) of ``part`` from its folder's plans.json, without loading
        weights, so that preparing an image never loads a model a user's prompts may not need."""
        if part in self._models:
            m = self._models[part]
            return m.plans_manager, m.configuration_manager
        if part not in self._plans:
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

            from .checkpoint import CONFIGURATION, part_folder, validate_model_folder

            folder = validate_model_folder(part_folder(self.checkpoint_root(), part), part, self.settings.folds)
            pm = PlansManager(folder.plans)
            self._plans[part] = (pm, pm.get_configuration(CONFIGURATION))
        return self._plans[part]

    def _preprocessing_key(self, part: str) -> str:
        import json

        plans_manager, configuration_manager = self.plans(part)
        conf = configuration_manager.configuration
        keys = (
            "spacing",
            "normalization_schemes",
            "resampling_fn_data",
            "resampling_fn_data_kwargs",
            "use_mask_for_norm",
        )
        return json.dumps(
            [{k: conf.get(k) for k in keys}, plans_manager.foreground_intensity_properties_per_channel],
            sort_keys=True,
        )

    def meta(self, image: Image, part: str = "point"):
        """Shapes and crop box of ``image`` under ``part``'s plans (no resampling), cached per image object."""
        from .preprocessing import preprocessing_meta

        key = self._preprocessing_key(part)
        per_image = self._meta_cache.setdefault(image, {})
        if key not in per_image:
            per_image[key] = preprocessing_meta(image.array, image.geometry.spacing, *self.plans(part))
        return per_image[key]

    def preprocessed(self, image: Image, part: str = "point"):
        """The whole image preprocessed for ``part``'s plans, cached per image object (and plans)."""
        from .preprocessing import preprocess_image

        key = self._preprocessing_key(part)
        per_image = self._pre_cache.setdefault(image, {})
        if key not in per_image:
            per_image[key] = preprocess_image(image.array, image.geometry.spacing, *self.plans(part))
        return per_image[key]

    def prepare(self, image: Image) -> None:
        """Preprocess the whole ``image`` once (point plans; box plans too when they differ), so every later
        prompt on it skips preprocessing. Without it, each prompt preprocesses only the region its tiles need."""
        self.preprocessed(image, "point")
        if self._preprocessing_key("box") != self._preprocessing_key("point"):
            self.preprocessed(image, "box")

    def preprocessed_for(self, image: Image, part: str, prompt):
        """Preprocessed data covering ``prompt``'s tiles: the cached whole image when prepared, else a cached
        region that covers them, else a new region (``preprocessing.preprocess_region``)."""
        from .preprocessing import preprocess_region
        from .segmentation import needed_region

        key = self._preprocessing_key(part)
        whole = self._pre_cache.get(image, {}).get(key)
        if whole is not None:
            return whole
        m = self.model(part)
        meta = self.meta(image, part)
        lo, hi = needed_region(prompt, meta.new_shape, m.patch_size)
        regions = self._region_cache.setdefault(image, {}).setdefault(key, [])
        for r in regions:
            r0 = np.asarray(r.origin)
            if np.all(r0 <= lo) and np.all(r0 + np.asarray(r.data.shape[1:]) >= hi):
                return r
        r = preprocess_region(image.array, meta, lo, hi, m.plans_manager, m.configuration_manager)
        if r.is_whole:  # the plans allow no smaller exact region: keep it as the image's preprocessing
            self._pre_cache.setdefault(image, {})[key] = r
        else:
            regions.append(r)
            del regions[:-4]  # bounded memory: the last few regions
        return r

    # ---------------------------------------------------------- segmentation
    def estimate_forwards(self, image: Image, prompts: Sequence[Prompt]) -> int:
        """Network forwards ``segment`` will run (tiles x folds x mirrorings): shown before a long CPU job."""
        from .prompting import map_prompt
        from .segmentation import count_forwards, plan_tiles

        total = 0
        for p in prompts:
            part = "box" if isinstance(p, BoxPrompt) else "point"
            m = self.model(part)
            pre = self.meta(image, part)
            starts, _, _ = plan_tiles(map_prompt(p, pre), pre.new_shape, m.patch_size)
            total += count_forwards(len(starts), len(m.folds), m.mirror_axes, self.settings.tta)
        return total

    def segment(
        self,
        image: Image,
        prompts: Sequence[Prompt],
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentationResult:
        """One lesion per prompt (point prompts -> point_optimized, boxes -> bbox_optimized), ids as given."""
        from .prompting import map_prompt

        jobs = []
        for p in prompts:
            if not isinstance(p, (PointPrompt, BoxPrompt)):
                raise PromptError(f"unsupported prompt {p!r}")
            part = "box" if isinstance(p, BoxPrompt) else "point"
            pre = self.meta(image, part)
            jobs.append((p.lesion_id, part, map_prompt(p, pre)))
        return self._run_jobs(image, jobs, on_progress, cancel)

    def segment_label_prompts(
        self,
        image: Image,
        labels: LabelMap | np.ndarray,
        kind: str,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentationResult:
        """Prompts from a label map as the official tool derives them (6.1): the map is resampled with the
        image (as a segmentation); every id (or 26-connected component of a binary map) gives a box
        ``[min - 1, max + 2)`` or a centroid point in preprocessed voxels. Ids kept (gaps, > 255)."""
        from .preprocessing import resample_label_map
        from .prompting import prompts_from_preprocessed_labels

        if kind not in ("box", "point"):
            raise PromptError(f"unknown prompt kind {kind!r}: use 'point' or 'box'")
        arr = labels.array if isinstance(labels, LabelMap) else np.asarray(labels)
        inst = instance_map_from_labels(arr)
        pre = self.meta(image, kind)
        resampled = resample_label_map(inst, pre, self.model(kind).configuration_manager)
        pps = prompts_from_preprocessed_labels(resampled, kind)
        lost = sorted({int(v) for v in np.unique(inst) if v} - {p.lesion_id for p in pps})
        result = self._run_jobs(image, [(p.lesion_id, kind, p) for p in pps], on_progress, cancel)
        for lid in lost:
            result.empty_ids.append(lid)
            result.messages.append(f"lesion {lid}: vanished when the label map was resampled to the model spacing")
        return result

    def _run_jobs(self, image, jobs, on_progress, cancel) -> SegmentationResult:
        from .segmentation import ForwardCounter, count_forwards, plan_tiles, segment_prompt_fast

        counts = []
        for _lid, part, pp in jobs:
            m = self.model(part)
            pre = self.meta(image, part)
            starts, _, _ = plan_tiles(pp, pre.new_shape, m.patch_size)
            counts.append(count_forwards(len(starts), len(m.folds), m.mirror_axes, self.settings.tta))
        total = sum(counts)
        done_before = [0]
        current = [0]
        t0 = time.perf_counter()

        def tick(done, _n, _left):
            # Estimate from the mean forward time so far over every lesion of this call.
            step = done_before[0] + done
            left = (time.perf_counter() - t0) / step * (total - step)
            report(on_progress, step, total, f"lesion {current[0]}: forward {step}/{total}, {_fmt_seconds(left)}")

        labels = LabelMap.empty_like(image)
        # Each note (e.g. "using fold(s) [0]") is reported once, in the first result after it arose.
        result = SegmentationResult(labels=labels, messages=self._unreported)
        self._unreported = []
        report(on_progress, 0, total, f"{total} network forward(s) to run on {self.device}")
        for (lid, part, pp), n in zip(jobs, counts):
            current[0] = lid
            m = self.model(part)
            counter = ForwardCounter(n, tick, cancel)
            counter.check()
            mask = segment_prompt_fast(
                self.preprocessed_for(image, part, pp),
                pp,
                m,
                tta=self.settings.tta,
                precision=self.precision,
                counter=counter,
            )
            done_before[0] += n
            if not mask.any():
                result.empty_ids.append(lid)
                result.messages.append(f"lesion {lid}: the model found no lesion at this prompt")
                continue
            labels.paste(lid, mask)
        report(on_progress, total, total, "done")
        return result

    # --------------------------------------------------------------- tracking
    def track(
        self,
        baseline: Image,
        baseline_labels,
        followup: Image,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> TrackingResult:
        """Delegates to ``tracking.track_lesions(engine, baseline, baseline_labels, followup, ...)``."""
        if not isinstance(baseline_labels, LabelMap):  # interim: per-lesion masks composed (overlaps lost)
            from ...core.results import LesionResult, compose_label_map

            baseline_labels = compose_label_map(
                [LesionResult(k, m) for k, m in baseline_labels.items()], baseline.geometry, "baseline")
        mod = _tracking_module()
        fn = getattr(mod, "track_lesions", None) if mod else None
        if fn is None:
            raise EngineError("LesionLocator tracking is not available in this installation (tracking module missing)")
        params = inspect.signature(fn).parameters
        kwargs = {"tta": self.settings.tta, "device": self.device, "on_progress": on_progress, "cancel": cancel}
        if "field_cache" in params:
            # Registration fields depend only on the image pair (and flip, fold): keep them for the session.
            if self._field_cache is None:
                cache_cls = getattr(getattr(mod, "reg", None), "FieldCache", None)
                self._field_cache = cache_cls() if cache_cls else None
            kwargs["field_cache"] = self._field_cache
        kwargs = {k: v for k, v in kwargs.items() if k in params}
        return fn(self.model("track"), baseline, baseline_labels, followup, **kwargs)


def _tracking_module():
    try:
        return importlib.import_module(f"{__name__}.tracking")
    except ImportError as exc:
        if exc.name and exc.name.endswith(".tracking"):
            return None
        raise

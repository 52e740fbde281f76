"""LesionLocator engine (nnU-Net v2 + uniGradICON); torch is imported lazily.

Importing this package is cheap and torch-free: torch, nnunetv2 and the networks load on first
use. ``LesionLocatorEngine`` implements ``engines.base.Engine``:

* models load once per engine (lazily, per part: point/box segmenters, tracker) and stay loaded;
* ``prepare(image)`` caches the image's preprocessing (keyed by the image object), reused by
  every later prompt on that image;
* ``segment`` runs the fast path (``segmentation.segment_prompt_fast``), whose masks equal the
  plain full-volume pipeline's (``segmentation.segment_full_volume_reference``);
* ``track`` delegates to ``tracking.track_lesions`` with the model from ``tracking.load_track_model``.

Every lesion is predicted and exported on its own (reference 3.7): results carry each lesion's own
whole mask (``SegmentationResult.lesions`` / ``TrackingResult.lesions``), and tracking takes each
lesion's own mask as its prompt; the instance map ``labels`` is only the display product.

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
from ...core.results import LesionMask, LesionResult, compose_label_map
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
        ``threads``; ``extra["allow_unsafe"]``, ``extra["precision"]``, ``extra["onednn_weights"]``
        (default False; True: on the CPU the Conv3d weights stay in oneDNN's layout, see
        :mod:`.onednn`: the same masks, but not measurably faster on the 2-core EPYC we measured).
    """

    name = "lesionlocator"

    def __init__(self, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.precision = str(self.settings.extra.get("precision", "float16"))
        if self.precision not in ("float16", "float32"):
            raise EngineError(f"unknown precision {self.precision!r}: use float16 (official numerics) or float32")
        self.allow_unsafe = bool(self.settings.extra.get("allow_unsafe", False))
        self.onednn_weights = bool(self.settings.extra.get("onednn_weights", False))
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
            kwargs = {
                "folds": self.settings.folds,
                "device": self.device,
                "allow_unsafe": self.allow_unsafe,
                "onednn_weights": self.onednn_weights,
            }
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
        """One lesion per prompt (point prompts -> point_optimized, boxes -> bbox_optimized), ids as given.

        Every lesion is predicted and exported on its own: ``lesions[id]`` is its own whole mask (a crop
        inside its tiles' region), whatever the other prompts' masks cover; ``labels`` is the display
        map (later prompt wins where masks overlap). ``prompts`` may also hold the preprocessed prompts
        :meth:`label_map_prompts` returns."""
        from .prompting import PromptPP, map_prompt

        jobs = []
        for p in prompts:
            if isinstance(p, PromptPP):
                jobs.append((p.lesion_id, p.kind, p, None))
                continue
            if not isinstance(p, (PointPrompt, BoxPrompt)):
                raise PromptError(f"unsupported prompt {p!r}")
            part = "box" if isinstance(p, BoxPrompt) else "point"
            pre = self.meta(image, part)
            jobs.append((p.lesion_id, part, map_prompt(p, pre), p))
        return self._run_jobs(image, jobs, on_progress, cancel)

    def label_map_prompts(self, image: Image, labels: LabelMap | np.ndarray, kind: str):
        """Prompts from a label map as the official tool derives them (6.1): the map is resampled with the
        image (as a segmentation); every id (or 26-connected component of a binary map) gives a box
        ``[min - 1, max + 2)`` or a centroid point in preprocessed voxels. Ids kept (gaps, > 255).

        Returns ``(prompts, vanished)``: prompts :meth:`segment` takes (one lesion each), and
        ``{id: reason}`` for lesions that give no prompt."""
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
        return pps, dict.fromkeys(lost, "vanished when the label map was resampled to the model spacing")

    def segment_label_prompts(
        self,
        image: Image,
        labels: LabelMap | np.ndarray,
        kind: str,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentationResult:
        """Segment every lesion of a label-map prompt (see :meth:`label_map_prompts`), each on its own."""
        pps, vanished = self.label_map_prompts(image, labels, kind)
        result = self._run_jobs(image, [(p.lesion_id, kind, p, None) for p in pps], on_progress, cancel)
        for lid, reason in vanished.items():
            result.empty_ids.append(lid)
            result.messages.append(f"lesion {lid}: {reason}")
            result.lesions[lid] = LesionResult(lid, LesionMask.empty(image.geometry), "empty", [reason],
                                               {"engine": self.name, "prompt": f"label map ({kind})"})
        return result

    def _provenance(self, part: str, prompt, n_tiles: int) -> dict:
        m = self.model(part)
        return {
            "engine": self.name,
            "prompt": part if prompt is not None else f"label map ({part})",
            "folds": [int(f) for f in m.folds],
            "tta": bool(self.settings.tta),
            "precision": self.precision,
            "tiles": int(n_tiles),
        }

    def _run_jobs(self, image, jobs, on_progress, cancel) -> SegmentationResult:
        from .segmentation import ForwardCounter, count_forwards, plan_tiles, segment_prompt_fast_crop

        counts = []
        for _lid, part, pp, _orig in jobs:
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

        # Each note (e.g. "using fold(s) [0]") is reported once, in the first result after it arose.
        result = SegmentationResult(labels=LabelMap.empty_like(image), messages=self._unreported)
        self._unreported = []
        report(on_progress, 0, total, f"{total} network forward(s) to run on {self.device}")
        for (lid, part, pp, orig), n in zip(jobs, counts):
            current[0] = lid
            m = self.model(part)
            counter = ForwardCounter(n, tick, cancel)
            counter.check()
            fm = segment_prompt_fast_crop(
                self.preprocessed_for(image, part, pp),
                pp,
                m,
                tta=self.settings.tta,
                precision=self.precision,
                counter=counter,
            )
            done_before[0] += n
            mask = LesionMask.from_crop(image.geometry, fm.start, fm.crop)
            lesion = _judge_segmentation(lid, mask, orig, fm.limit_axes, self._provenance(part, orig, fm.n_tiles))
            result.lesions[lid] = lesion
            if lesion.status == "empty":
                result.empty_ids.append(lid)
            result.messages.extend(f"lesion {lid}: {msg}" for msg in lesion.messages)
        result.labels = compose_label_map(result.lesions, image.geometry, f"{image.name}_lesions")
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
        """Track every lesion from its own whole baseline mask (``{id: LesionMask}`` or an instance map)
        into ``followup`` (``tracking.track_lesions``); ``lesions[id]`` is its own mask there."""
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
        result = fn(self.model("track"), baseline, baseline_labels, followup, **kwargs)
        result.messages[:0] = self._unreported
        self._unreported = []
        return result


def _judge_segmentation(lesion_id: int, mask: LesionMask, prompt, limit_axes, provenance) -> LesionResult:
    """Status and reasons for one segmented lesion (the mask itself is never changed: it is the model's)."""
    if mask.is_empty:
        return LesionResult(lesion_id, mask, "empty", ["the model found no lesion at this prompt"], provenance)
    notes = []
    if limit_axes:
        notes.append(
            f"the mask reaches the edge of the region the network saw (along {', '.join(limit_axes)}); the lesion "
            "may continue beyond it: check it, or prompt with a box that covers the whole lesion"
        )
    if isinstance(prompt, PointPrompt):
        z, y, x = (int(v) - s for v, s in zip(prompt.zyx, mask.start))
        inside = all(0 <= v < n for v, n in zip((z, y, x), mask.array.shape)) and bool(mask.array[z, y, x])
        if not inside:
            notes.append(f"the mask does not contain the clicked point {list(prompt.zyx)}")
    elif isinstance(prompt, BoxPrompt):
        lo = np.maximum(np.asarray(prompt.start), np.asarray(mask.start))
        hi = np.minimum(np.asarray(prompt.stop), np.asarray(mask.stop))
        inside = 0
        if np.all(hi > lo):
            sub = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, mask.start))
            inside = int(np.count_nonzero(mask.array[sub]))
        if inside * 2 < mask.voxels:
            notes.append(f"{100 - 100 * inside // mask.voxels} % of the mask lies outside the prompt box")
    return LesionResult(lesion_id, mask, "check" if notes else "ok", notes, provenance)


def _tracking_module():
    try:
        return importlib.import_module(f"{__name__}.tracking")
    except ImportError as exc:
        if exc.name and exc.name.endswith(".tracking"):
            return None
        raise

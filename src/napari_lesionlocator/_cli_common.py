"""Helpers shared by the ``lesionlocator`` subcommands: engines, prompts, outputs, progress, messages."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core.errors import CheckpointError, OutputExistsError, PromptError
from .core.image import Image, LabelMap
from .core.progress import ProgressEvent
from .core.prompts import BoxPrompt, PointPrompt, Prompt, prompts_from_label_map, read_prompt_json
from .io.images import case_name, is_image_path, read_label_map

__all__ = [
    "ENV_CHECKPOINT",
    "UsageError",
    "warn",
    "info",
    "choose_engine_name",
    "make_engine",
    "read_prompt_file",
    "run_segmentation",
    "checked_prompts",
    "lesion_file",
    "instance_file",
    "case_outputs",
    "existing_outputs",
    "plan_outputs",
    "OutputPlan",
    "warn_if_not_ct",
    "read_one_volume",
    "write_case_outputs",
    "ProgressBar",
    "strip_channel",
]

ENV_CHECKPOINT = "LESIONLOCATOR_CHECKPOINT"


class UsageError(PromptError):
    """Bad command-line input that argparse cannot check (exit code 2)."""


def warn(message: str) -> None:
    """One warning line on stderr (kept out of stdout, which scripts may parse)."""
    _write_line(f"warning: {message}")


def info(message: str, args: argparse.Namespace | None = None) -> None:
    """A progress/status line on stderr unless ``--quiet``."""
    if args is not None and getattr(args, "quiet", False):
        return
    _write_line(message)


def _write_line(text: str) -> None:
    """Print to stderr without breaking an active tqdm bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()


# ------------------------------------------------------------------ engines
def _configured_checkpoint() -> str | None:
    from .engines.lesionlocator.config import get_configured_checkpoint

    try:
        return get_configured_checkpoint()
    except CheckpointError as exc:
        warn(str(exc))
        return None


def choose_engine_name(args: argparse.Namespace) -> tuple[str, str | None]:
    """(engine name, checkpoint): ``--engine`` if given, else lesionlocator when a checkpoint is
    configured (``-m``, ``$LESIONLOCATOR_CHECKPOINT`` or the config file), else classical."""
    checkpoint = args.checkpoint or os.environ.get(ENV_CHECKPOINT) or None
    if args.engine == "classical":
        return "classical", None
    if checkpoint is None and args.engine in (None, "lesionlocator"):
        checkpoint = _configured_checkpoint()
    if args.engine is None:
        return ("lesionlocator", checkpoint) if checkpoint else ("classical", None)
    if not checkpoint:
        from .engines.lesionlocator.config import no_checkpoint_message

        raise UsageError(f"--engine {args.engine} needs -m CHECKPOINT: {no_checkpoint_message()}")
    return args.engine, checkpoint


def _resolve_auto_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        from .engines.lesionlocator.device import available_devices

        devices = available_devices()
    except ImportError:
        return "cpu"
    return next((d for d in ("cuda", "mps") if d in devices), "cpu")


def make_engine(args: argparse.Namespace):
    """Build the engine the flags ask for (see :func:`choose_engine_name`)."""
    from .engines.base import EngineSettings, create_engine

    name, checkpoint = choose_engine_name(args)
    if checkpoint is not None and not Path(checkpoint).expanduser().exists():
        raise CheckpointError(f"the checkpoint folder {checkpoint} does not exist (download it with "
                              "`lesionlocator download-weights`)")
    settings = EngineSettings(threads=args.threads, device="cpu", checkpoint=checkpoint,
                              folds=args.folds, tta=False,
                              extra={"allow_unsafe": bool(getattr(args, "allow_unsafe_checkpoint", False))})
    if name == "lesionlocator":
        settings.device = _resolve_auto_device(args.device)
        settings.tta = not args.disable_tta  # the official CLI mirrors by default
        info(f"engine: lesionlocator (checkpoint {checkpoint}, device {settings.device}, "
             f"folds {'all found' if args.folds is None else list(args.folds)}, TTA {'on' if settings.tta else 'off'})",
             args)
        if settings.device == "cpu":
            warn("LesionLocator on the CPU is slow (the real model needs about a minute per network forward; "
                 "TTA runs 8 forwards per tile and every fold adds as many): consider --disable_tta, -f 0, "
                 "a GPU (-device cuda), or --engine classical")
    else:
        info("engine: classical (no weights)", args)
    return create_engine(name, settings)


# ------------------------------------------------------------------ prompts
def strip_channel(name: str) -> str:
    """``case_0000`` -> ``case`` (nnU-Net channel suffix); other names unchanged."""
    if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        return name[:-5]
    return name


def read_prompt_file(path: Path, image: Image, kind: str) -> tuple[list[Prompt], LabelMap | None]:
    """Prompts for ``image`` from a prompt JSON, or from a label map (one prompt per lesion).

    Returns the prompts and, for a label map, the map itself: engines that derive prompts from a
    label map their own way (the LesionLocator engine resamples it with the image, as the official
    tool does) get it through ``segment_label_prompts``.
    """
    if not path.exists():
        raise UsageError(f"prompt file not found: {path}")
    if path.suffix.lower() == ".json":
        prompts = read_prompt_json(path)
        wrong = [p.lesion_id for p in prompts if p.kind != kind]
        if wrong:
            have = "box" if kind == "point" else "point"
            raise UsageError(f"{path.name}: lesion(s) {wrong} are {have} prompts but -t {kind} was given")
        if not prompts:
            raise UsageError(f"{path.name}: the prompt file holds no lesion")
        return prompts, None
    if not is_image_path(path):
        raise UsageError(f"{path.name}: a prompt must be a .json file or a label map image (.nii.gz, .nrrd, ...)")
    labels = read_label_map(path, like=image)  # GeometryMismatchError (exit 2) when on another grid
    return prompts_from_label_map(labels.array, kind), labels


def run_segmentation(engine, image: Image, prompts: Sequence[Prompt], label_prompt: LabelMap | None, kind: str,
                     bar: ProgressBar):
    """Segment ``prompts`` on ``image`` (api.iter_segment), or hand a label-map prompt to an engine that
    derives its own prompts from it (``segment_label_prompts``). Returns a SegmentationResult."""
    if label_prompt is not None and hasattr(engine, "segment_label_prompts"):
        return engine.segment_label_prompts(image, label_prompt, kind, on_progress=bar.note)
    from .api import iter_segment

    gen = iter_segment(engine, image, prompts, on_progress=bar.note)
    while True:
        try:
            bar.event(next(gen))
        except StopIteration as stop:
            return stop.value


def checked_prompts(prompts: Sequence[Prompt], image: Image, source: str) -> list[Prompt]:
    """Validate prompts against the image: points inside, boxes overlapping (clipped with a warning)."""
    out: list[Prompt] = []
    for p in prompts:
        if isinstance(p, PointPrompt):
            try:
                p.validate(image.shape)
            except PromptError as exc:
                raise PromptError(f"{source}: {exc}") from None
            out.append(p)
        elif isinstance(p, BoxPrompt):
            try:
                p.validate(image.shape)
                out.append(p)
            except PromptError:
                try:
                    clipped = p.clipped(image.shape)
                except PromptError:
                    raise PromptError(f"{source}: lesion {p.lesion_id}: box {list(p.box)} lies entirely outside "
                                      f"the volume of shape {image.shape} (z, y, x)") from None
                warn(f"{source}: lesion {p.lesion_id}: box {list(p.box)} reaches outside the volume; "
                     f"clipped to {list(clipped.box)}")
                out.append(clipped)
    return out


# ------------------------------------------------------------------ outputs
def lesion_file(out: Path, case: str, lesion_id: int) -> Path:
    return out / f"{case}_lesion_{int(lesion_id)}.nii.gz"


def instance_file(out: Path, case: str) -> Path:
    return out / f"{case}_lesions.nii.gz"


def case_outputs(out: Path, case: str, ids: Sequence[int]) -> list[Path]:
    """Every file a case produces: one binary mask per id, then the instance map."""
    return [lesion_file(out, case, i) for i in ids] + [instance_file(out, case)]


def existing_outputs(paths: Sequence[Path]) -> list[Path]:
    return [p for p in paths if p.exists()]


@dataclass
class OutputPlan:
    """What to do with one case's outputs: ``"run"`` or ``"skip"`` (complete, --continue_prediction)."""

    action: str
    overwrite: bool


def plan_outputs(paths: Sequence[Path], args: argparse.Namespace, what: str) -> OutputPlan:
    """Decide for one case; OutputExistsError (exit 3) when outputs exist and neither flag allows it."""
    existing = existing_outputs(paths)
    if not existing:
        return OutputPlan("run", False)
    if args.continue_prediction and len(existing) == len(paths):
        return OutputPlan("skip", False)
    if args.overwrite or args.continue_prediction:
        # --continue_prediction redoes an incomplete case (an interrupted run) and replaces its pieces.
        return OutputPlan("run", True)
    shown = ", ".join(p.name for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
    raise OutputExistsError(
        f"{what}: output(s) already exist in {existing[0].parent}: {shown}. Use --continue_prediction to skip "
        "finished cases or --overwrite to replace them"
    )


def write_case_outputs(labels: LabelMap, out: Path, case: str, ids: Sequence[int], *, overwrite: bool) -> list[Path]:
    """Write ``<case>_lesion_<id>.nii.gz`` (uint8 0/1) per id and ``<case>_lesions.nii.gz``, in the source geometry."""
    from .io.images import write_label_map

    written = []
    for lid in ids:
        mask = (labels.array == lid).astype(np.uint8)
        written.append(write_label_map(mask, lesion_file(out, case, lid), geometry=labels.geometry,
                                       overwrite=overwrite))
    written.append(write_label_map(labels, instance_file(out, case), overwrite=overwrite))
    return written


# ------------------------------------------------------------------ progress
class ProgressBar:
    """A tqdm bar on stderr fed with :class:`ProgressEvent` (disabled by ``--quiet``)."""

    def __init__(self, total: int, desc: str, args: argparse.Namespace, unit: str = "lesion") -> None:
        from tqdm import tqdm

        self.offset = 0
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=getattr(args, "quiet", False),
                        dynamic_ncols=True, leave=True)

    def event(self, ev: ProgressEvent) -> None:
        self.bar.n = min(self.bar.total or 0, self.offset + ev.step) if self.bar.total else self.offset + ev.step
        if ev.message:
            self.bar.set_postfix_str(ev.message[:60], refresh=False)
        self.bar.refresh()

    def note(self, ev: ProgressEvent) -> None:
        """Engine-internal progress: only the message changes."""
        if ev.message:
            self.bar.set_postfix_str(ev.message[:60])

    def advance(self, n: int) -> None:
        self.offset += n
        self.bar.n = self.offset
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def warn_if_not_ct(image: Image) -> None:
    """Warn (never fail) when an image does not look like CT in HU."""
    from .io.volumes import check_ct

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        msg = check_ct(image, strict=False)
    if msg:
        warn(msg + "; results may be meaningless")


def read_one_volume(path: Path) -> Image:
    """One image from a file or a DICOM folder (InputImageError, exit 2, when it cannot)."""
    from .io.volumes import read_volume

    image = read_volume(path)
    if path.is_file() or is_image_path(path):
        image.name = case_name(path)
    return image

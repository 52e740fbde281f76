"""Helpers shared by the ``lesionlocator`` subcommands: exit codes, the parser kit every command
builds its subparser with, engines, prompts, outputs, progress, messages."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import (
    Cancelled,
    CheckpointError,
    InputImageError,
    OutputExistsError,
    OutputPathError,
    PromptError,
)
from ..core.image import Image, LabelMap
from ..core.progress import ProgressEvent
from ..core.prompts import BoxPrompt, PointPrompt, Prompt, prompts_from_label_map, read_prompt_json
from ..io.images import case_name, is_image_path, read_label_map

__all__ = [
    "EXIT_OK",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "EXIT_EXISTS",
    "EXIT_CANCELLED",
    "EXIT_CODES_HELP",
    "exit_code_for",
    "Formatter",
    "common_flags",
    "add_command",
    "add_engine_args",
    "add_series_arg",
    "add_output_args",
    "add_session_input",
    "session_input",
    "ENV_CHECKPOINT",
    "UsageError",
    "warn",
    "info",
    "resolve_engine",
    "choose_engine_name",
    "make_engine",
    "run_key",
    "read_prompt_file",
    "segment_case",
    "checked_prompts",
    "lesion_file",
    "instance_file",
    "case_outputs",
    "existing_outputs",
    "plan_outputs",
    "OutputPlan",
    "case_writer",
    "report_lesions",
    "warn_if_not_ct",
    "read_one_volume",
    "ProgressBar",
    "strip_channel",
]

# ------------------------------------------------------------------ exit codes
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_EXISTS, EXIT_CANCELLED = 0, 1, 2, 3, 130

EXIT_CODES_HELP = """exit codes:
  0    success (or nothing left to do with --continue_prediction)
  1    runtime error (engine, device, download, unexpected error)
  2    bad input or usage (missing file, prompt outside the volume, empty box,
       label map on another grid, unmatched names, invalid checkpoint)
  3    outputs exist; nothing written (use --continue_prediction or --overwrite)
  130  cancelled (Ctrl-C); files already written are complete
"""


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an exception."""
    from ..core.study import StudyError

    if isinstance(exc, (KeyboardInterrupt, Cancelled)):
        return EXIT_CANCELLED
    if isinstance(exc, OutputExistsError):
        return EXIT_EXISTS
    if isinstance(exc, (InputImageError, PromptError, CheckpointError, StudyError, OutputPathError)):
        return EXIT_USAGE
    return EXIT_ERROR


# ------------------------------------------------------------------ the parser kit
class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the exit-code epilog's line breaks."""


def common_flags(default=argparse.SUPPRESS) -> argparse.ArgumentParser:
    """``--debug`` and ``-q``: on the top-level parser (``default=False``) and on every command
    (suppressed default, so that ``lesionlocator -q segment`` and ``lesionlocator segment -q`` both work)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=default,
                   help="show the full traceback on errors")
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars or status lines (warnings and errors are still printed)")
    return p


def add_command(sub, name: str, *, help: str, description: str,  # noqa: A002 - argparse's own name
                epilog: str = EXIT_CODES_HELP) -> argparse.ArgumentParser:
    """One subcommand's parser, built the same way for every command: the common flags, the
    line-keeping formatter, no abbreviated options, the exit codes as epilog."""
    return sub.add_parser(name, parents=[common_flags()], formatter_class=Formatter, allow_abbrev=False,
                          epilog=epilog, help=help, description=description)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["classical", "lesionlocator"], default=None,
                   help="segmentation engine; default: lesionlocator when a checkpoint is configured "
                        "(-m, $LESIONLOCATOR_CHECKPOINT or the config file), else classical (no weights)")
    g.add_argument("-m", "--checkpoint", default=None, metavar="CHECKPOINT",
                   help="LesionLocator checkpoint folder (the unpacked LesionLocatorCheckpoint, see download-weights)")
    g.add_argument("-f", "--folds", nargs="+", type=int, default=None, metavar="FOLD",
                   help="folds to ensemble (lesionlocator engine); default: every fold found in the checkpoint")
    g.add_argument("--disable_tta", action="store_true",
                   help="turn off mirroring test-time augmentation (on by default for lesionlocator, about 8x faster)")
    g.add_argument("-device", "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="device for the lesionlocator engine (auto: cuda, then mps, then cpu); ignored by classical")
    g.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: library default)")
    g.add_argument("--allow-unsafe-checkpoint", dest="allow_unsafe_checkpoint", action="store_true",
                   help="checkpoints are pickles: by default they load with torch.load(weights_only=True) and a "
                        "small allowlist; if that refuses your checkpoint and you trust the folder you chose "
                        "(e.g. the official download), this permits a full load, which can run code in the file")


def add_series_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--series", default=None, metavar="SERIES",
                   help="when an input DICOM folder holds several series: the one to use, by its index as listed, "
                        "its SeriesInstanceUID or its series description (default: refuse and list them)")


def add_output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("existing outputs")
    g.add_argument("--continue_prediction", "--c", action="store_true", dest="continue_prediction",
                   help="skip cases whose outputs all exist; redo unfinished ones")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse, exit 3)")


# ------------------------------------------------------------------ a saved review (session, report)
def add_session_input(p: argparse.ArgumentParser, *, optional: bool = False) -> None:
    """The ``SESSION_DIR`` positional and the ``--relocate``/``--search`` group for images that moved,
    shared by ``session`` and ``report``; read back with :func:`session_input`."""
    if optional:
        p.add_argument("session", metavar="SESSION_DIR", nargs="?", default=None, help="the session folder")
    else:
        p.add_argument("session", metavar="SESSION_DIR", help="the session folder")
    g = p.add_argument_group("images that moved")
    g.add_argument("--relocate", nargs="+", default=[], metavar="TIMEPOINT=PATH",
                   help="where a timepoint's image is now (timepoint name or the saved path = new path)")
    g.add_argument("--search", nargs="+", default=[], metavar="FOLDER",
                   help="folders to look in for images that are not where they were saved (by file name)")


def session_input(args: argparse.Namespace) -> tuple[str, dict[str, str], list[str]]:
    """``(session folder, {timepoint or saved path: new path}, search folders)`` from the flags of
    :func:`add_session_input`; a missing folder or a malformed ``--relocate`` is a usage error (exit 2)."""
    if args.session is None:
        raise InputImageError("give a SESSION_DIR")
    relocate = {}
    for item in args.relocate:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InputImageError(f"--relocate {item!r}: write TIMEPOINT=NEW_PATH")
        relocate[key] = value
    return args.session, relocate, list(args.search)


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
def resolve_engine(args: argparse.Namespace):
    """The engine the flags ask for, resolved by :func:`api.engine_settings` (the GUI resolves the same way):
    ``--engine`` if given, else lesionlocator when a checkpoint is configured (``-m``,
    ``$LESIONLOCATOR_CHECKPOINT`` or the config file), else classical; ``-device auto`` picks cuda, mps,
    then cpu; TTA on for lesionlocator unless ``--disable_tta``."""
    from ..api import engine_settings

    resolved = engine_settings(args.engine, checkpoint=args.checkpoint, device=args.device, folds=args.folds,
                               tta=False if args.disable_tta else None, threads=args.threads,
                               allow_unsafe=bool(getattr(args, "allow_unsafe_checkpoint", False)))
    if getattr(args, "new_lesions", True) is False:
        resolved.settings.extra["new_candidates"] = False
    return resolved


def choose_engine_name(args: argparse.Namespace) -> tuple[str, str | None]:
    """(engine name, checkpoint) the flags resolve to (see :func:`resolve_engine`)."""
    resolved = resolve_engine(args)
    return resolved.name, resolved.settings.checkpoint


def make_engine(args: argparse.Namespace):
    """Build the engine the flags ask for (see :func:`resolve_engine`); its notes become warnings."""
    from ..api import make_engine as build

    resolved = resolve_engine(args)
    info(resolved.describe(), args)
    for note in resolved.notes:
        warn(note)
    return build(resolved)


def run_key(args: argparse.Namespace, *parts) -> str:
    """Identifies a job (prompt file contents, prompt type, engine flags): a cancelled run's finished
    lesions are resumed only by the same job."""
    import hashlib
    import json

    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            h.update(part.read_bytes() if part.is_file() else str(part).encode())
        else:
            h.update(repr(part).encode())
    flags = [getattr(args, k, None) for k in ("prompt_type", "engine", "checkpoint", "folds", "disable_tta")]
    h.update(json.dumps(flags, default=str).encode())
    return h.hexdigest()[:16]


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
    if path.is_dir():  # a folder of PASCAL VOC XML boxes, matched to the slices by SOPInstanceUID
        from ..io.voc import voc_cli_prompts

        prompts, notes = voc_cli_prompts(path, image, kind)
        for note in notes:
            warn(note)
        return prompts, None
    if path.suffix.lower() == ".json":
        from ..io.clicks import click_file_prompts  # grand-challenge / autoPET click files, else ours

        clicks = click_file_prompts(path, image.geometry)
        if clicks is not None and kind != "point":
            raise UsageError(f"{path.name} holds clicks (points) but -t {kind} was given")
        for note in clicks[1] if clicks is not None else ():
            warn(note)
        prompts = clicks[0] if clicks is not None else read_prompt_json(path)
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


def segment_case(engine, image: Image, prompts: Sequence[Prompt], label_prompt: LabelMap | None, kind: str,
                 writer, bar: ProgressBar):
    """Segment a case one lesion at a time, each lesion's own mask written (``writer.add``) as soon as it
    is finished; lesions ``writer`` already holds (a resumed run) are skipped. A label-map prompt goes
    through :func:`api.iter_segment_label_map` (engines that derive their own prompts from it get it).
    Returns the SegmentationResult of the lesions run now."""
    from ..api import iter_segment, iter_segment_label_map

    done = set(writer.done)
    if label_prompt is not None:
        gen = iter_segment_label_map(engine, image, label_prompt, kind, on_progress=bar.note, on_lesion=writer.add,
                                     skip_ids=sorted(done))
    else:
        gen = iter_segment(engine, image, [p for p in prompts if p.lesion_id not in done], on_progress=bar.note,
                           on_lesion=writer.add)
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
    from ..api.outputs import lesion_file as f

    return f(out, case, lesion_id)


def instance_file(out: Path, case: str) -> Path:
    from ..api.outputs import instance_file as f

    return f(out, case)


def case_outputs(out: Path, case: str, ids: Sequence[int]) -> list[Path]:
    """Every file a finished case has: one mask per id, the instance map, the summary."""
    from ..api.outputs import case_outputs as f

    return f(out, case, ids)


def existing_outputs(paths: Sequence[Path]) -> list[Path]:
    return [p for p in paths if p.exists()]


@dataclass
class OutputPlan:
    """What to do with one case: ``action`` ``"run"`` or ``"skip"`` (finished and valid, --continue_prediction);
    ``overwrite``: the case's existing outputs may be replaced (as a whole, when the new ones are written);
    ``resume``: keep the lesions a cancelled run of the same job finished."""

    action: str
    overwrite: bool
    resume: bool = False


def plan_outputs(out: Path, case: str, ids: Sequence[int], geometry, args: argparse.Namespace, what: str) -> OutputPlan:
    """Decide for one case; OutputExistsError (exit 3) when outputs exist and neither flag allows it.

    A case is finished when its summary, every lesion file and the instance map are there, readable and on
    ``geometry``'s grid; a cancelled run leaves ``<case>.partial/`` with the lesions it finished."""
    from ..api.outputs import case_is_complete, staging_folder

    existing = existing_outputs(case_outputs(out, case, ids))
    partial = staging_folder(out, case)
    if partial.exists():
        existing.append(partial)
    if not existing:
        return OutputPlan("run", False)
    if args.continue_prediction:
        if not partial.exists() and case_is_complete(out, case, ids, geometry):
            return OutputPlan("skip", False)
        # Redo an unfinished case (an interrupted run), keeping the lesions it finished.
        return OutputPlan("run", True, resume=True)
    if args.overwrite:
        return OutputPlan("run", True)
    shown = ", ".join(p.name for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
    raise OutputExistsError(
        f"{what}: output(s) already exist in {out}: {shown}. Use --continue_prediction to skip "
        "finished cases (and resume unfinished ones) or --overwrite to replace them"
    )


def case_writer(out: Path, case: str, geometry, ids: Sequence[int], plan: OutputPlan, key: str | None,
                args: argparse.Namespace):
    """The :class:`api.CaseWriter` for a planned case; says what a resumed run keeps."""
    from ..api import CaseWriter

    writer = CaseWriter(out, case, geometry, ids, replace=plan.overwrite, resume=plan.resume, run_key=key)
    if writer.resumed:
        info(f"{case}: {len(writer.resumed)} lesion(s) finished by the interrupted run are kept "
             f"(--continue_prediction)", args)
    return writer


def report_lesions(case: str, lesions, args: argparse.Namespace) -> None:
    """One line per lesion whose status is not ok (its reasons), on stderr."""
    for r in lesions.values():
        if r.status == "ok":
            continue
        why = "; ".join(r.messages) or "no reason given"
        line = f"{case}: lesion {r.lesion_id}: {r.status}: {why}"
        if r.status in ("empty", "lost"):
            warn(line + " (written as an empty file)")
        else:
            info(line, args)


# ------------------------------------------------------------------ progress
class ProgressBar:
    """A tqdm bar on stderr fed with :class:`ProgressEvent` (disabled by ``--quiet``)."""

    def __init__(self, total: int, desc: str, args: argparse.Namespace, unit: str = "lesion") -> None:
        from ..io.console import progress_bar  # a live bar on a terminal, whole lines in a log

        self.offset = 0
        self.bar = progress_bar(total=total, desc=desc, unit=unit, stream=sys.stderr,
                                disable=getattr(args, "quiet", False), dynamic_ncols=True, leave=True)

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
    from ..io.volumes import check_ct

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        msg = check_ct(image, strict=False)
    if msg:
        warn(msg + "; results may be meaningless")


def read_one_volume(path: Path, series: str | None = None) -> Image:
    """One image from a file or a DICOM folder (InputImageError, exit 2, when it cannot); ``series``
    (``--series``) picks one when the folder holds several."""
    from ..io.volumes import choose_volume, read_volumes

    images = read_volumes(path)
    image = images[0] if len(images) == 1 else choose_volume(images, path, series)
    if path.is_file() or is_image_path(path):
        image.name = case_name(path)
    return image

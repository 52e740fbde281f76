"""The ``lesionlocator`` command line: segment, track, measure, batch, download-weights, generate-checkpoint.

Headless (no Qt, napari); the flags of ``segment`` and ``track`` follow the official LesionLocator
tool (``-i -p -t -o -m -f --disable_tta -device --continue_prediction``).

Exit codes (scripts can rely on them)::

    0    success (also: nothing to do, every output already exists with --continue_prediction)
    1    runtime error: engine, device, network/download, unreadable archive, unexpected error
    2    bad input or usage: missing/unreadable file, prompt outside the volume, empty box,
         label map on another grid, unmatched image/prompt names, invalid checkpoint folder
    3    outputs exist: nothing was written (use --continue_prediction or --overwrite)
    130  cancelled (Ctrl-C); files already written are complete (every write is atomic)

Errors the package raises on purpose (:class:`~.core.errors.LesionLocatorError`) are printed as one
line; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .core.errors import (
    Cancelled,
    CheckpointError,
    InputImageError,
    LesionLocatorError,
    OutputExistsError,
    OutputPathError,
    PromptError,
)

__all__ = ["main", "build_parser", "exit_code_for", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_EXISTS",
           "EXIT_CANCELLED"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_EXISTS, EXIT_CANCELLED = 0, 1, 2, 3, 130

_EXIT_CODES_HELP = """exit codes:
  0    success (or nothing left to do with --continue_prediction)
  1    runtime error (engine, device, download, unexpected error)
  2    bad input or usage (missing file, prompt outside the volume, empty box,
       label map on another grid, unmatched names, invalid checkpoint)
  3    outputs exist; nothing written (use --continue_prediction or --overwrite)
  130  cancelled (Ctrl-C); files already written are complete
"""


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an exception."""
    from .core.study import StudyError

    if isinstance(exc, (KeyboardInterrupt, Cancelled)):
        return EXIT_CANCELLED
    if isinstance(exc, OutputExistsError):
        return EXIT_EXISTS
    if isinstance(exc, (InputImageError, PromptError, CheckpointError, StudyError, OutputPathError)):
        return EXIT_USAGE
    return EXIT_ERROR


# ------------------------------------------------------------------ parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the exit-code epilog's line breaks."""


def _common(debug_default=argparse.SUPPRESS) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=debug_default,
                   help="show the full traceback on errors")
    p.add_argument("-q", "--quiet", action="store_true", default=debug_default,
                   help="no progress bars or status lines (warnings and errors are still printed)")
    return p


def _add_engine_args(p: argparse.ArgumentParser) -> None:
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


def _add_series_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--series", default=None, metavar="SERIES",
                   help="when an input DICOM folder holds several series: the one to use, by its index as listed, "
                        "its SeriesInstanceUID or its series description (default: refuse and list them)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("existing outputs")
    g.add_argument("--continue_prediction", "--c", action="store_true", dest="continue_prediction",
                   help="skip cases whose outputs all exist; redo unfinished ones")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse, exit 3)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesionlocator", formatter_class=_Formatter, parents=[_common(False)], allow_abbrev=False,
        description="Lesion segmentation, longitudinal tracking and RECIST measurements in CT "
                    "(LesionLocator engine or an embedded classical engine).",
        epilog=_EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common()

    # segment
    p = sub.add_parser(
        "segment", parents=[common], formatter_class=_Formatter, allow_abbrev=False, epilog=_EXIT_CODES_HELP,
        help="segment lesions from point or box prompts",
        description="Segment one lesion per prompt. Writes <case>_lesion_<N>.nii.gz (uint8 0/1, that lesion's own "
                    "whole mask; neighbouring masks may overlap) per prompt id N, <case>_lesions.nii.gz (display "
                    "instance map, ids = prompt ids, later lesion wins) in the source image's geometry, and "
                    "<case>_summary.json (status, voxels, volume per lesion; overlaps).",
    )
    p.add_argument("-i", "--input", required=True, metavar="IMAGE_OR_FOLDER",
                   help="image file (NIfTI, NRRD, MHA), DICOM folder, or folder of image files")
    p.add_argument("-p", "--prompts", required=True, metavar="PROMPTS",
                   help="prompt JSON ({'1': {'point': [z,y,x]}} or {'1': {'box': [z0,z1,y0,y1,x0,x1]}}, half-open) "
                        "or label map (one prompt per lesion id; a binary mask: per connected component); with a "
                        "folder of images, a folder of such files named like the images (case.nii.gz <-> case.json)")
    p.add_argument("-t", "--prompt_type", required=True, choices=["point", "box"], help="prompt type")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if needed)")
    _add_series_arg(p)
    p.add_argument("--skip_unmatched", action="store_true",
                   help="process the image/prompt pairs that match and only warn about the rest (default: exit 2)")
    _add_engine_args(p)
    _add_output_args(p)

    # track
    p = sub.add_parser(
        "track", parents=[common], formatter_class=_Formatter, allow_abbrev=False, epilog=_EXIT_CODES_HELP,
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
    _add_series_arg(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if needed)")
    p.add_argument("--no-new-lesions", dest="new_lesions", action="store_false",
                   help="skip the search for new-lesion candidates at each follow-up (classical engine; the "
                        "slowest part of a tracking step on whole scans); the summaries then list none")
    _add_engine_args(p)
    _add_output_args(p)

    # measure
    p = sub.add_parser(
        "measure", parents=[common], formatter_class=_Formatter, allow_abbrev=False, epilog=_EXIT_CODES_HELP,
        help="lesion table (volume, RECIST axes, HU, centroid) and RECIST 1.1 response",
        description="Measure every lesion at every timepoint and assess RECIST 1.1. Writes OUT_PREFIX_lesions.csv, "
                    "OUT_PREFIX_recist.csv and OUT_PREFIX.json. Diameters are measured in physical mm on the axial "
                    "slice (array z) where the long axis is longest.",
    )
    p.add_argument("-i", "--images", nargs="+", metavar="IMAGE", help="images, one per timepoint, baseline first")
    p.add_argument("-l", "--labels", nargs="+", metavar="LABELS",
                   help="instance label maps, one per image in the same order (same lesion = same id)")
    p.add_argument("--study", metavar="FOLDER",
                   help="instead of -i/-l: a study folder in the dataset layout (Baseline/, Synthetic_Follow_Up*/)")
    p.add_argument("--case", help="case to read from --study when it holds several")
    p.add_argument("-o", "--output", required=True, metavar="OUT_PREFIX", help="output path prefix")
    p.add_argument("--targets", nargs="+", metavar="ID",
                   help="RECIST target lesion ids (e.g. 1 2 5 or 1,2,5); default: up to 5 largest measurable")
    p.add_argument("--nodes", nargs="+", metavar="ID", help="target ids that are lymph nodes (short axis is used)")
    p.add_argument("--dates", nargs="+", metavar="YYYY-MM-DD", help="acquisition date per timepoint")
    p.add_argument("--overwrite", action="store_true", help="replace existing table files (default: refuse, exit 3)")

    # download-weights
    from .io.download import DEFAULT_URL

    p = sub.add_parser(
        "download-weights", parents=[common], formatter_class=_Formatter, allow_abbrev=False,
        epilog=_EXIT_CODES_HELP, help="download and unpack the LesionLocator checkpoint (Zenodo 15174217)",
        description="Download the LesionLocator checkpoint archive (resumes an interrupted download), verify its "
                    "checksum, unpack it safely and print the checkpoint folder.",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"archive URL, zip or tar (default: {DEFAULT_URL})")
    p.add_argument("--dest", default=None, metavar="DIR",
                   help="folder to unpack into (default: the per-user data folder of napari-lesionlocator)")
    p.add_argument("--sha256", default=None, metavar="HEX", help="expected SHA-256 of the archive")
    p.add_argument("--md5", default=None, metavar="HEX",
                   help="expected MD5 of the archive (default URL: read from Zenodo's API when no checksum is given)")
    p.add_argument("--zenodo-api", default=None, metavar="URL", dest="zenodo_api",
                   help="Zenodo records API URL to read the MD5 from")
    p.add_argument("--keep-archive", action="store_true", dest="keep_archive",
                   help="keep the downloaded archive after unpacking")
    p.add_argument("--overwrite", action="store_true", help="download and unpack again over an installed checkpoint")
    p.add_argument("--set-default", action="store_true", dest="set_default",
                   help="store the checkpoint in the user config so that the lesionlocator engine becomes the default")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="network timeout in seconds (default: 60)")

    # generate-checkpoint
    p = sub.add_parser(
        "generate-checkpoint", parents=[common], formatter_class=_Formatter, allow_abbrev=False,
        epilog=_EXIT_CODES_HELP,
        help="write a checkpoint with random weights in the official layout (tests, benchmarks)",
        description="Write OUT/LesionLocatorCheckpoint with seeded random weights (needs torch). Not a model: "
                    "its masks are meaningless; it exercises loading and speed.",
    )
    p.add_argument("out", metavar="OUT", help="parent folder of the LesionLocatorCheckpoint folder to create")
    p.add_argument("--plans", default=None, help="plans.json to start from (default: the reference ResEnc-L plans)")
    p.add_argument("--tiny", action="store_true",
                   help="a tiny network and patch (fast on CPU) instead of the real size")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0], metavar="FOLD",
                   help="folds to write (default: 0)")
    p.add_argument("--parts", nargs="+", choices=["bbox", "point", "track"], default=["bbox", "point", "track"],
                   help="which models to write (default: all three; track builds the 70 M-parameter uniGradICON)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing LesionLocatorCheckpoint folder")

    # batch (a cohort on Dask distributed; see _cli_batch)
    from ._cli_batch import add_batch_parser

    add_batch_parser(sub, parents=[common], formatter_class=_Formatter, add_engine_args=_add_engine_args)

    # export (DICOM-SEG, DICOM SR, maps, per-lesion masks, prompts, tables; see _cli_export)
    from ._cli_export import add_export_parser

    add_export_parser(sub, parents=[common], formatter_class=_Formatter, epilog=_EXIT_CODES_HELP)

    # session, report (a saved review; see _cli_session, _cli_report)
    from ._cli_report import add_report_parser
    from ._cli_session import add_session_parser

    add_session_parser(sub, parents=[common], formatter_class=_Formatter, epilog=_EXIT_CODES_HELP)
    add_report_parser(sub, parents=[common], formatter_class=_Formatter, epilog=_EXIT_CODES_HELP)
    return parser


# ------------------------------------------------------------------ commands
def _cmd_download(args: argparse.Namespace) -> int:
    from .io.download import download_weights

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    def warn(msg: str) -> None:  # shown even with --quiet
        print(msg, file=sys.stderr, flush=True)

    root = download_weights(args.url, args.dest, sha256=args.sha256, md5=args.md5, api_url=args.zenodo_api,
                            overwrite=args.overwrite, keep_archive=args.keep_archive, progress=not args.quiet,
                            timeout=args.timeout, log=log, warn=warn)
    if args.set_default:
        from .engines.lesionlocator.config import set_configured_checkpoint

        cfg = set_configured_checkpoint(root)
        log(f"Stored as the default checkpoint in {cfg}")
    print(root)
    log("Use it with:\n"
        f"  lesionlocator segment -i IMAGE -p PROMPTS.json -t point -o OUT -m {root}\n"
        f"or set it once: export LESIONLOCATOR_CHECKPOINT={root}  (or: download-weights --set-default)")
    return EXIT_OK


def _cmd_generate(args: argparse.Namespace) -> int:
    try:
        from .engines.lesionlocator.generate import generate_checkpoint
    except ImportError as exc:
        from .core.errors import EngineError

        raise EngineError(f"generate-checkpoint needs torch and nnunetv2 ({exc}); install "
                          "'napari-lesionlocator[lesionlocator]'") from None
    target = Path(args.out) / "LesionLocatorCheckpoint"
    if args.plans and not Path(args.plans).is_file():
        raise InputImageError(f"plans file not found: {args.plans}")
    if target.exists():
        if not args.overwrite:
            raise OutputExistsError(f"{target} already exists; refusing to overwrite it (use --overwrite)")
        import shutil

        shutil.rmtree(target)
    root = generate_checkpoint(args.out, plans_path=args.plans, tiny=args.tiny, seed=args.seed, folds=args.folds,
                               parts=args.parts)
    print(root)
    return EXIT_OK


def _check_output_location(args: argparse.Namespace) -> None:
    """An output path that is a file or cannot be written is found before any work (exit 2)."""
    from .io.atomic import require_output_folder

    if args.command in ("segment", "track"):
        require_output_folder(args.output)
    elif args.command == "measure":
        require_output_folder(Path(args.output).parent, what="folder of the output prefix")
    elif args.command == "export":
        require_output_folder(args.output)
    elif args.command == "download-weights" and args.dest:
        require_output_folder(args.dest, what="--dest folder")


def _dispatch(args: argparse.Namespace) -> int:
    _check_output_location(args)
    if args.command == "segment":
        from ._cli_segment import run_segment

        return run_segment(args)
    if args.command == "track":
        from ._cli_track import run_track

        return run_track(args)
    if args.command == "measure":
        from ._cli_measure import run_measure

        return run_measure(args)
    if args.command == "download-weights":
        return _cmd_download(args)
    if args.command == "generate-checkpoint":
        return _cmd_generate(args)
    if args.command == "export":
        from ._cli_export import run_export

        return run_export(args)
    if args.command == "batch":
        from ._cli_batch import run_batch_command

        return run_batch_command(args)
    if args.command == "session":
        from ._cli_session import run_session

        return run_session(args)
    if args.command == "report":
        from ._cli_report import run_report

        return run_report(args)
    raise AssertionError(args.command)  # argparse restricts the choices


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return int(exc.code or 0)
    try:
        return _dispatch(args)
    except KeyboardInterrupt as exc:
        if args.command == "download-weights":
            print("\ncancelled; the partial download is kept: run the same command again to resume", file=sys.stderr)
        elif args.command in ("segment", "track"):
            print("\ncancelled; files already written are complete (writes are atomic); the lesions a case "
                  "finished are kept in <case>.partial/ beside the outputs: run the same command with "
                  "--continue_prediction to resume", file=sys.stderr)
        else:
            print("\ncancelled; files already written are complete (writes are atomic)", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return exit_code_for(exc)
    except LesionLocatorError as exc:
        if args.debug:
            traceback.print_exc()
        kind = "cancelled" if isinstance(exc, Cancelled) else "error"
        print(f"{kind}: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except OSError as exc:  # disk full, permission denied...: the user can act on it
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - last resort: one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

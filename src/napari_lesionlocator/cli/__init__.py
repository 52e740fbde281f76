"""The ``lesionlocator`` command line: segment, track, measure, export, batch, session, report,
download-weights, generate-checkpoint; one module per command (``add_parser(sub)`` and ``run(args)``),
the parser kit, exit codes and shared helpers in :mod:`.common`.

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
import importlib
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..core.errors import Cancelled, LesionLocatorError
from .common import (
    EXIT_CANCELLED,
    EXIT_CODES_HELP,
    EXIT_ERROR,
    EXIT_EXISTS,
    EXIT_OK,
    EXIT_USAGE,
    Formatter,
    common_flags,
    exit_code_for,
)

__all__ = ["main", "build_parser", "exit_code_for", "COMMANDS", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE",
           "EXIT_EXISTS", "EXIT_CANCELLED"]

#: command name -> its module in this package, in the order ``--help`` lists them
COMMANDS = {
    "segment": "segment",
    "track": "track",
    "measure": "measure",
    "download-weights": "download",
    "generate-checkpoint": "generate",
    "batch": "batch",
    "export": "export",
    "session": "session",
    "report": "report",
}


def _module(command: str):
    return importlib.import_module(f".{COMMANDS[command]}", __name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesionlocator", formatter_class=Formatter, parents=[common_flags(False)], allow_abbrev=False,
        description="Lesion segmentation, longitudinal tracking and RECIST measurements in CT "
                    "(LesionLocator engine or an embedded classical engine).",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        _module(command).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return int(exc.code or 0)
    try:
        return _module(args.command).run(args)
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

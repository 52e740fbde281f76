"""``lesionlocator report SESSION_DIR -o OUT``: the self-contained HTML response report of a saved review."""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_OK, add_command, add_session_input, session_input

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub, "report",
        help="write the HTML response report of a saved review",
        description="Restore a session folder (images checked as by 'lesionlocator session') and write one "
                    "self-contained HTML page: study dates, lesion table, RECIST 1.1 response per follow-up with "
                    "reasons, size-over-time plot with the -30 %% and +20 %% thresholds, and one key slice per "
                    "lesion per timepoint with its mask outline and RECIST axes.",
    )
    add_session_input(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="report file (.html) or folder (OUT/report.html is written)")
    p.add_argument("--title", default=None, help="page title (default: 'Response report: <patient>')")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report (default: refuse, exit 3)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..io.session import load_session
    from ..report import write_report

    folder, relocate, search = session_input(args)
    study = load_session(folder, relocate=relocate, search=search)
    path = write_report(study, args.output, overwrite=args.overwrite, title=args.title)
    if not args.quiet:
        print(f"report -> {path}", file=sys.stderr)
    print(path)
    return EXIT_OK

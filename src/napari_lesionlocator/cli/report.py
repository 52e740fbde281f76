"""``lesionlocator report SESSION_DIR -o OUT``: the self-contained HTML response report of a saved review."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_report_parser", "run_report"]


def add_report_parser(sub, *, parents, formatter_class, epilog: str) -> None:
    from ._cli_session import add_relocation_args

    p = sub.add_parser(
        "report", parents=parents, formatter_class=formatter_class, allow_abbrev=False, epilog=epilog,
        help="write the HTML response report of a saved review",
        description="Restore a session folder (images checked as by 'lesionlocator session') and write one "
                    "self-contained HTML page: study dates, lesion table, RECIST 1.1 response per follow-up with "
                    "reasons, size-over-time plot with the -30 %% and +20 %% thresholds, and one key slice per "
                    "lesion per timepoint with its mask outline and RECIST axes.",
    )
    p.add_argument("session", metavar="SESSION_DIR", help="the session folder")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="report file (.html) or folder (OUT/report.html is written)")
    p.add_argument("--title", default=None, help="page title (default: 'Response report: <patient>')")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report (default: refuse, exit 3)")
    add_relocation_args(p)


def run_report(args: argparse.Namespace) -> int:
    from ._cli_session import relocation_of
    from .cli import EXIT_OK
    from .io.session import load_session
    from .report import write_report

    study = load_session(args.session, relocate=relocation_of(args), search=args.search)
    path = write_report(study, args.output, overwrite=args.overwrite, title=args.title)
    if not args.quiet:
        print(f"report -> {path}", file=sys.stderr)
    print(path)
    return EXIT_OK

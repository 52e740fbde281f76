"""``lesionlocator session SESSION_DIR``: validate a saved review and print its summary.

Every image is checked (file checksum, or the same voxels when the file was re-encoded) and every
mask read; a session whose images moved or changed is refused (exit 2) with the file named, and
``--relocate TIMEPOINT=PATH`` / ``--search FOLDER`` re-point it (``--save`` writes the new places).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_session_parser", "add_relocation_args", "relocation_of", "run_session", "summary_lines"]


def add_relocation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images that moved")
    g.add_argument("--relocate", nargs="+", default=[], metavar="TIMEPOINT=PATH",
                   help="where a timepoint's image is now (timepoint name or the saved path = new path)")
    g.add_argument("--search", nargs="+", default=[], metavar="FOLDER",
                   help="folders to look in for images that are not where they were saved (by file name)")


def relocation_of(args: argparse.Namespace) -> dict[str, str]:
    from .core.errors import InputImageError

    out = {}
    for item in args.relocate:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InputImageError(f"--relocate {item!r}: write TIMEPOINT=NEW_PATH")
        out[key] = value
    return out


def add_session_parser(sub, *, parents, formatter_class, epilog: str) -> None:
    p = sub.add_parser(
        "session", parents=parents, formatter_class=formatter_class, allow_abbrev=False, epilog=epilog,
        help="validate a saved review (session folder) and print its summary",
        description="Check a session folder written by the napari widgets (or the demo): every image must be the "
                    "one saved (SHA-256 of the file, or the same voxels), every mask readable. Prints the "
                    "timepoints, the lesions with their status per timepoint, what is still unverified and the "
                    "RECIST 1.1 response per follow-up. A session whose images moved or changed is refused (exit 2) "
                    "naming the file; re-point it with --relocate/--search (and --save to keep the new places).",
    )
    p.add_argument("session", metavar="SESSION_DIR", nargs="?", default=None, help="the session folder")
    p.add_argument("--recoveries", action="store_true",
                   help="list the autosaves a crashed review left in the recovery folder ($LESIONLOCATOR_RECOVERY "
                        "or the per-user data folder), newest first; open one with: lesionlocator session FOLDER")
    add_relocation_args(p)
    p.add_argument("--save", action="store_true", help="write the re-pointed image locations into the session")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--csv", metavar="FILE", default=None,
                   help="also write the lesion table with provenance (one row per lesion per timepoint) as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")


def summary_lines(study, checks=()) -> list[str]:
    """The human-readable summary of a restored study."""
    from .core.recist import recist_for_study

    head = (f"patient {study.patient_id}: {len(study)} timepoint(s), {len(study.lesion_ids)} lesion(s), "
            f"next lesion id {study.next_lesion_id()}")
    lines = [head]
    by_check = {c.timepoint: c for c in checks}
    for k, tp in enumerate(study.timepoints):
        c = by_check.get(tp.name)
        where = c.path if c is not None else (tp.image.source or "(kept in the session)")
        state = f" [{c.status}]" if c is not None else ""
        lines.append(f"  {k}  {tp.name:<20} {tp.acquisition_date or 'undated':<10}  {where}{state}")
    if study.engine:
        lines.append(f"engine: {study.engine}")
    lines.append("lesions (status per timepoint):")
    for lid in study.lesion_ids:
        statuses = ", ".join(study.table_status(lid, n) for n in study.names)
        lines.append(f"  {lid:>3}  {study.lesion_name(lid):<18} {study.site(lid):<11} {study.role(lid):<12} {statuses}")
    unverified = study.unverified()
    lines.append(f"unverified: {len(unverified)}" + (
        " (" + ", ".join(f"{lid}@{n}" for lid, n in unverified) + ")" if unverified else ""))
    try:
        recist = recist_for_study(study)
    except ValueError as exc:
        lines.append(f"RECIST: not assessed ({exc})")
    else:
        lines.append("RECIST 1.1 (targets " + ", ".join(map(str, recist.targets)) + "):")
        for t in recist.timepoints[1:]:
            total = "n/a" if t.sum_mm is None else f"{t.sum_mm:.1f} mm"
            lines.append(f"  {study.names[t.timepoint]}: sum {total}, {t.label}: {t.reason}")
    return lines


def run_session(args: argparse.Namespace) -> int:
    import json

    from .cli import EXIT_OK
    from .io.session import repoint_session, validate_session

    if args.recoveries:
        from .io.session import default_recovery_root, find_recoveries

        found = find_recoveries()
        print(f"recovery folder {default_recovery_root()}: {len(found)} autosaved review(s)")
        for rec in found:
            print(f"  {rec.folder}  {rec.describe()}")
        if args.session is None:
            return EXIT_OK
    if args.session is None:
        from .core.errors import InputImageError

        raise InputImageError("give a SESSION_DIR (or --recoveries)")
    relocate = relocation_of(args)
    study, checks = validate_session(args.session, relocate=relocate, search=args.search)
    if args.save and (relocate or args.search):
        repoint_session(args.session, relocate=relocate, search=args.search)
        print(f"re-pointed: {args.session} now names the images where they are", file=sys.stderr)
    if args.csv:
        from .io.atomic import atomic_write_text

        atomic_write_text(args.csv, study.review_csv(), overwrite=args.overwrite)
        print(f"lesion table with provenance -> {args.csv}", file=sys.stderr)
    if args.json:
        from .core.recist import recist_for_study

        try:
            recist = recist_for_study(study).to_dict()
        except ValueError:
            recist = None
        doc = {
            "session": str(args.session),
            "patient_id": study.patient_id,
            "timepoints": [{"name": c.timepoint, "image": c.path, "status": c.status} for c in checks],
            "lesions": [{"id": les.id, "name": les.name, "site": les.site, "role": les.role,
                         "status": {n: study.table_status(les.id, n) for n in study.names}} for les in study.lesions()],
            "next_id": study.next_lesion_id(),
            "unverified": [list(u) for u in study.unverified()],
            "recist": recist,
        }
        print(json.dumps(doc, indent=1))
    else:
        print(f"session {args.session}: valid")
        print("\n".join(summary_lines(study, checks)))
    return EXIT_OK

"""``lesionlocator session SESSION_DIR``: validate a saved review and print its summary.

Every image is checked (file checksum, or the same voxels when the file was re-encoded) and every
mask read; a session whose images moved or changed is refused (exit 2) with the file named, and
``--relocate TIMEPOINT=PATH`` / ``--search FOLDER`` re-point it (``--save`` writes the new places).
"""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_OK, add_command, add_session_input, session_input

__all__ = ["add_parser", "run", "summary_lines"]


def add_parser(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub, "session",
        help="validate a saved review (session folder) and print its summary",
        description="Check a session folder written by the napari widgets (or the demo): every image must be the "
                    "one saved (SHA-256 of the file, or the same voxels), every mask readable. Prints the "
                    "timepoints, the lesions with their status per timepoint, what is still unverified and the "
                    "RECIST 1.1 response per follow-up. A session whose images moved or changed is refused (exit 2) "
                    "naming the file; re-point it with --relocate/--search (and --save to keep the new places).",
    )
    add_session_input(p, optional=True)  # optional: --recoveries alone lists the autosaves
    p.add_argument("--recoveries", action="store_true",
                   help="list the autosaves a crashed review left in the recovery folder ($LESIONLOCATOR_RECOVERY "
                        "or the per-user data folder), newest first; open one with: lesionlocator session FOLDER")
    p.add_argument("--save", action="store_true", help="write the re-pointed image locations into the session")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--csv", metavar="FILE", default=None,
                   help="also write the lesion table with provenance (one row per lesion per timepoint) as CSV")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    return p


def summary_lines(study, checks=()) -> list[str]:
    """The human-readable summary of a restored study."""
    from ..core.recist import recist_for_study

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


def run(args: argparse.Namespace) -> int:
    import json

    from ..io.session import repoint_session, validate_session

    if args.recoveries:
        from ..io.session import default_recovery_root, find_recoveries

        found = find_recoveries()
        print(f"recovery folder {default_recovery_root()}: {len(found)} autosaved review(s)")
        for rec in found:
            print(f"  {rec.folder}  {rec.describe()}")
        if args.session is None:
            return EXIT_OK
    if args.session is None:
        from ..core.errors import InputImageError

        raise InputImageError("give a SESSION_DIR (or --recoveries)")
    folder, relocate, search = session_input(args)
    study, checks = validate_session(folder, relocate=relocate, search=search)
    if args.save and (relocate or search):
        repoint_session(folder, relocate=relocate, search=search)
        print(f"re-pointed: {args.session} now names the images where they are", file=sys.stderr)
    if args.csv:
        from ..io.atomic import atomic_write_text

        atomic_write_text(args.csv, study.review_csv(), overwrite=args.overwrite)
        print(f"lesion table with provenance -> {args.csv}", file=sys.stderr)
    if args.json:
        from ..core.recist import recist_for_study

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

"""``lesionlocator measure``: lesion table (volume, RECIST axes, HU, centroid) and RECIST 1.1 summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.image import Image, LabelMap
from ..io.images import read_label_map
from .common import UsageError, add_command, info, read_one_volume, warn

__all__ = ["add_parser", "run", "parse_ids"]


def parse_ids(values: list[str] | None, flag: str) -> list[int] | None:
    """``["1,2", "5"]`` -> ``[1, 2, 5]``; UsageError on anything but positive integers."""
    if values is None:
        return None
    out = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            if not part.isdigit() or int(part) < 1:
                raise UsageError(f"{flag}: {part!r} is not a lesion id (positive integer)")
            out.append(int(part))
    return out


def _timepoints(args: argparse.Namespace) -> list[tuple[Image, LabelMap]]:
    if args.study:
        from ..io.study_layout import read_study_layout

        pairs = read_study_layout(args.study, case=args.case)
        missing = [img.name for img, lab in pairs if lab is None]
        if missing:
            raise UsageError(f"{args.study}: no label map for {', '.join(missing)}; every timepoint needs one")
        return pairs
    if not args.images or not args.labels:
        raise UsageError("give -i IMAGE [IMAGE ...] and -l LABELS [LABELS ...] (one per timepoint), or --study FOLDER")
    if len(args.images) != len(args.labels):
        raise UsageError(f"{len(args.images)} image(s) but {len(args.labels)} label map(s): give one label map "
                         "per image, in the same (timepoint) order")
    pairs = []
    for img_path, lab_path in zip(args.images, args.labels):
        image = read_one_volume(Path(img_path))
        pairs.append((image, read_label_map(lab_path, like=image)))  # GeometryMismatchError -> exit 2
    return pairs


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``measure`` on the ``lesionlocator`` subparsers (called by :func:`.build_parser`)."""
    p = add_command(
        sub, "measure",
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
    return p


def run(args: argparse.Namespace) -> int:
    from ..api import measure_timepoints, write_measurements
    from ..io.atomic import require_output_folder

    require_output_folder(Path(args.output).parent, what="folder of the output prefix")  # exit 2 before any work
    targets = parse_ids(args.targets, "--targets")
    nodes = parse_ids(args.nodes, "--nodes") or []
    pairs = _timepoints(args)
    if args.dates is not None and len(args.dates) != len(pairs):
        raise UsageError(f"--dates has {len(args.dates)} value(s) for {len(pairs)} timepoint(s)")
    for image, labels in pairs:
        info(f"measuring {image.name} ({len(labels.ids)} lesion(s))", args)
    try:
        # Timepoints stay in the order given (not re-sorted by date): the first one is the baseline.
        result = measure_timepoints(pairs, targets=targets, nodes=nodes, dates=args.dates)
    except ValueError as exc:
        raise UsageError(str(exc).replace("given as targets/nodes", "given in --targets/--nodes")) from None
    for note in result.notes:
        warn(note.replace("choose targets explicitly", "choose targets with --targets"))
    rows, recist = result.rows, result.recist
    paths = write_measurements(args.output, result, overwrite=args.overwrite,
                               metadata={"images": [img.source or img.name for img, _ in pairs]})
    # A short human summary on stdout; the files hold everything.
    print(f"{'tp':>2} {'lesion':>6} {'present':>7} {'vol_ml':>9} {'long_mm':>8} {'short_mm':>8} {'mean_HU':>8}")
    for r in rows:
        print(f"{r.timepoint:>2} {r.lesion_id:>6} {'yes' if r.present else 'no':>7} {r.volume_ml:>9.3f} "
              f"{r.long_axis_mm:>8.1f} {r.short_axis_mm:>8.1f} {r.mean_hu:>8.1f}")
    if recist is not None:
        print(f"RECIST 1.1, targets {list(recist.targets)}" + (f", nodes {list(recist.nodes)}" if recist.nodes else ""))
        for t in recist.timepoints:
            sod = "NE" if t.sum_mm is None else f"{t.sum_mm:.1f} mm"
            change = "" if t.change_vs_baseline_pct is None else f" ({t.change_vs_baseline_pct:+.1f} % vs baseline)"
            print(f"  tp {t.timepoint}: sum {sod}{change} -> {t.response}")
    for p in paths.values():
        print(f"wrote {p}")
    return 0

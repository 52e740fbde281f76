"""``lesionlocator segment``: one mask per prompt, for one image or a folder of images."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputImageError
from ..core.results import overlaps
from ..io.images import case_name, is_image_path
from .common import (
    ProgressBar,
    UsageError,
    add_command,
    add_engine_args,
    add_output_args,
    add_series_arg,
    case_writer,
    checked_prompts,
    info,
    make_engine,
    plan_outputs,
    read_one_volume,
    read_prompt_file,
    report_lesions,
    run_key,
    segment_case,
    strip_channel,
    warn,
    warn_if_not_ct,
)

__all__ = ["add_parser", "run", "pair_cases"]

PROMPT_SUFFIXES = (".json", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Case:
    name: str
    image_path: Path
    prompt_path: Path


def _prompt_name(path: Path) -> str:
    return path.stem if path.suffix.lower() == ".json" else case_name(path)


def _folder_images(folder: Path) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p) and not p.name.startswith("."))
    if images:
        return images
    return [folder]  # a DICOM folder: one case (read_volume explains what it holds)


def pair_cases(images: list[Path], prompts: list[Path]) -> tuple[list[Case], list[Path], list[Path]]:
    """Pair images and prompt files by case name (``case[_0000].nii.gz`` <-> ``case.json`` or a label map).

    Returns (pairs, images without a prompt, prompts without an image); never pairs by order.
    """
    by_name: dict[str, Path] = {}
    for p in prompts:
        name = _prompt_name(p)
        if name not in by_name or p.suffix.lower() == ".json":  # a JSON wins over a label map of the same name
            by_name[name] = p
    pairs, lonely_images, used = [], [], set()
    for img in images:
        raw = case_name(img) if img.is_file() else img.name
        for name in (raw, strip_channel(raw)):
            if name in by_name:
                pairs.append(Case(strip_channel(raw), img, by_name[name]))
                used.add(name)
                break
        else:
            lonely_images.append(img)
    lonely_prompts = [p for name, p in sorted(by_name.items()) if name not in used]
    return pairs, lonely_images, lonely_prompts


def _cases(args: argparse.Namespace) -> list[Case]:
    src, prm = Path(args.input), Path(args.prompts)
    if not src.exists():
        raise InputImageError(f"no such image file or folder: {src}")
    if not prm.exists():
        raise UsageError(f"no such prompt file or folder: {prm}")
    images = [src] if src.is_file() else _folder_images(src)
    if prm.is_file():
        if len(images) != 1:
            raise UsageError(f"-p {prm} is one prompt file but -i {src} holds {len(images)} images; give a folder "
                             "of prompt files named like the images (case.nii.gz <-> case.json)")
        name = case_name(images[0]) if images[0].is_file() else images[0].name
        return [Case(strip_channel(name), images[0], prm)]
    from ..io.voc import is_voc_folder

    if is_voc_folder(prm) and len(images) == 1:  # PASCAL VOC boxes (Lung-PET-CT-Dx): one folder per series
        series = images[0]
        if series.is_dir() and not any(p.suffix.lower() == ".dcm" for p in series.iterdir()):
            from ..io.voc import series_folder_for_voc  # a patient/study folder: the series the boxes name

            series, n = series_folder_for_voc(series, prm)
            info(f"{prm.name}: {n} XML file(s) name slices of the series in {series}", args)
        return [Case(strip_channel(series.name if series.is_dir() else case_name(series)), series, prm)]
    prompt_files = sorted(p for p in prm.iterdir() if p.is_file() and p.name.lower().endswith(PROMPT_SUFFIXES)
                          and not p.name.startswith("."))
    pairs, lonely_images, lonely_prompts = pair_cases(images, prompt_files)
    problems = []
    if lonely_images:
        problems.append("images without a prompt: " + ", ".join(p.name for p in lonely_images))
    if lonely_prompts:
        problems.append("prompts without an image: " + ", ".join(p.name for p in lonely_prompts))
    if problems and not args.skip_unmatched:
        raise UsageError("cannot pair every image with its prompt by case name (" + "; ".join(problems)
                         + "). Rename the files, or pass --skip_unmatched to process only the pairs")
    names = [c.name for c in pairs]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UsageError("several images would write the same case name(s) " + ", ".join(clash) + ": "
                         + ", ".join(c.image_path.name for c in pairs if c.name in clash)
                         + " (multi-channel _0000/_0001 images are not supported; keep one image per case)")
    for line in problems:
        warn(f"skipping {line}")
    if not pairs:
        raise UsageError(f"no image in {src} has a prompt in {prm} (prompts are matched by case name)")
    return pairs


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``segment`` on the ``lesionlocator`` subparsers (called by :func:`.build_parser`)."""
    p = add_command(
        sub, "segment",
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
    add_series_arg(p)
    p.add_argument("--skip_unmatched", action="store_true",
                   help="process the image/prompt pairs that match and only warn about the rest (default: exit 2)")
    add_engine_args(p)
    add_output_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..io.atomic import require_output_folder

    require_output_folder(args.output)  # exit 2 before any work
    out = Path(args.output)
    cases = _cases(args)
    # Phase 1: read prompts, check them and the outputs for every case before any work.
    jobs = []
    for case in cases:
        image = read_one_volume(case.image_path, args.series)
        warn_if_not_ct(image)
        prompts, label_prompt = read_prompt_file(case.prompt_path, image, args.prompt_type)
        prompts = checked_prompts(prompts, image, source=case.prompt_path.name)
        ids = [p.lesion_id for p in prompts]
        plan = plan_outputs(out, case.name, ids, image.geometry, args, what=f"case {case.name}")
        if plan.action == "skip":
            info(f"{case.name}: outputs complete, skipped (--continue_prediction)", args)
            continue
        keep = len(cases) == 1  # several cases: read each again when its turn comes (memory)
        jobs.append((case, prompts, label_prompt if keep else None, plan, image if keep else None))
    if not jobs:
        info("nothing to do: every case is finished", args)
        return 0
    engine = make_engine(args)
    bar = ProgressBar(sum(len(j[1]) for j in jobs), "segment", args)
    try:
        for case, prompts, label_prompt, plan, image in jobs:
            if image is None:
                image = read_one_volume(case.image_path, args.series)
                label_prompt = read_prompt_file(case.prompt_path, image, args.prompt_type)[1]
            bar.bar.set_description(case.name)
            ids = [p.lesion_id for p in prompts]
            # Each lesion's own mask is written as soon as it is finished (a cancelled run keeps it).
            writer = case_writer(out, case.name, image.geometry, ids, plan,
                                 run_key(args, case.prompt_path, case.image_path.name), args)
            bar.advance(len(writer.done))
            result = segment_case(engine, image, prompts, label_prompt, args.prompt_type, writer, bar)
            bar.advance(len(prompts) - len(writer.resumed))
            lesions = {i: writer.done[i] for i in ids if i in writer.done}
            report_lesions(case.name, lesions, args)
            for msg in result.messages:
                if not msg.startswith("lesion "):  # per-lesion notes are reported with the lesion's status
                    info(f"{case.name}: {msg}", args)
            files = writer.finish()
            for a, b, n in overlaps(lesions):
                info(f"{case.name}: lesions {a} and {b} overlap in {n} voxel(s) (both files hold them; the "
                     f"instance map shows {b} there)", args)
            info(f"{case.name}: wrote {len(files)} file(s) to {out}", args)
    finally:
        bar.close()
    return 0

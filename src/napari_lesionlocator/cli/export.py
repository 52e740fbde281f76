"""``lesionlocator export``: a study's lesions in the formats PACS, viewers and the field use.

Inputs: one image per timepoint (files or DICOM series folders) and, for each, its lesions: an
instance map, or a ``segment``/``track`` output (``<case>_lesions.nii.gz`` with its
``<case>_summary.json`` and ``<case>_lesion_<N>.nii.gz``: each lesion's **own** whole mask, so
overlapping lesions stay apart), or a DICOM-SEG file.

Formats (``--formats``; default ``nifti lesions prompts tables dicom-seg dicom-sr``)::

    nifti | nrrd | mha   <tp>_lesions.<ext>         display instance map in the image's geometry
    lesions              <tp>_lesion_<N>.nii.gz     each lesion's own mask (uint8 0/1), the official tool's names
    prompts              <tp>_prompts.json          LesionLocator prompt JSON (box or point per lesion)
    tables               lesion_table_lesions.csv, lesion_table_recist.csv, lesion_table.json
    dicom-seg            dicom/<tp>_seg.dcm (+ dicom/<tp>_ct/ when the image was not DICOM)
    dicom-sr             dicom/<tp>_sr.dcm          TID 1500 report referencing the SEG (needs dicom-seg)

Every file is planned first: if any exists the command writes nothing and exits 3 unless
``--overwrite``. Each file is written atomically with the user's umask (``io.atomic``).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import OutputExistsError
from ..core.image import Image
from ..core.results import LesionResult, compose_label_map, results_from_label_map

__all__ = ["FORMATS", "DEFAULT_FORMATS", "ExportPlan", "plan_export", "export_study", "iter_export_study",
           "export_study_model", "study_model_inputs", "add_parser", "run"]

FORMATS = ("nifti", "nrrd", "mha", "lesions", "prompts", "tables", "dicom-seg", "dicom-sr")
DEFAULT_FORMATS = ("nifti", "lesions", "prompts", "tables", "dicom-seg", "dicom-sr")
_MAP_SUFFIX = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "image"


@dataclass
class ExportPlan:
    """Every file an export writes, per format (folders for the DICOM CT series)."""

    files: dict[str, list[Path]] = field(default_factory=dict)

    def all(self) -> list[Path]:
        return [p for paths in self.files.values() for p in paths]

    def existing(self) -> list[Path]:
        out = []
        for p in self.all():
            if p.exists() and (p.is_file() or any(p.iterdir())):
                out.append(p)
        return out


def plan_export(out: str | os.PathLike, names: Sequence[str], lesion_ids: Sequence[Sequence[int]],
                formats: Sequence[str], *, dicom_ct: Sequence[bool] = ()) -> ExportPlan:
    """The files :func:`export_study` will write (``dicom_ct[k]``: timepoint k needs its CT series written)."""
    out = Path(out)
    plan = ExportPlan()
    for fmt in formats:
        paths: list[Path] = []
        for k, name in enumerate(names):
            n = _safe(name)
            if fmt in _MAP_SUFFIX:
                paths.append(out / f"{n}_lesions{_MAP_SUFFIX[fmt]}")
            elif fmt == "lesions":
                paths.extend(out / f"{n}_lesion_{int(i)}.nii.gz" for i in lesion_ids[k])
            elif fmt == "prompts":
                paths.append(out / f"{n}_prompts.json")
            elif fmt == "dicom-seg":
                paths.append(out / "dicom" / f"{n}_seg.dcm")
                if k < len(dicom_ct) and dicom_ct[k]:
                    paths.append(out / "dicom" / f"{n}_ct")
            elif fmt == "dicom-sr":
                paths.append(out / "dicom" / f"{n}_sr.dcm")
        if fmt == "tables":
            from ..io.tables import table_paths

            paths.extend(table_paths(out / "lesion_table").values())
        plan.files[fmt] = paths
    return plan


def export_study(images: Sequence[Image], lesions: Sequence[Mapping[int, LesionResult]], out: str | os.PathLike,
                 *, progress=None, **kw) -> dict[str, list[Path]]:
    """Write a study's lesions (``lesions[k]`` = timepoint k's own masks); see :func:`iter_export_study`.

    ``progress(step, total, message)`` is called between steps. Returns the paths written, per format.
    """
    gen = iter_export_study(images, lesions, out, **kw)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(ev.step, ev.total, ev.message)


def iter_export_study(
    images: Sequence[Image],
    lesions: Sequence[Mapping[int, LesionResult]],
    out: str | os.PathLike,
    *,
    formats: Sequence[str] = DEFAULT_FORMATS,
    names: Mapping[int, str] | None = None,
    sites: Mapping[int, str | None] | None = None,
    engine: str | None = None,
    model: str | None = None,
    prompt_type: str = "box",
    targets: Sequence[int] | None = None,
    nodes: Sequence[int] = (),
    overwrite: bool = False,
):
    """Generator: write ``formats`` (see the module doc), yielding a ProgressEvent before each step and
    returning ``{format: [paths written]}``.

    Refuses (OutputExistsError) before writing anything when a planned file exists and not
    ``overwrite``; ValueError for unknown formats or mismatched inputs.
    """
    from ..core.progress import ProgressEvent
    from ..io.dicom_seg import source_datasets_of

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}")
    wanted = set(formats) | ({"dicom-seg"} if "dicom-sr" in formats else set())  # the SR references the SEG
    formats = [f for f in FORMATS if f in wanted]
    if len(images) != len(lesions):
        raise ValueError(f"{len(images)} image(s) but {len(lesions)} lesion set(s)")
    tp_names = [img.name for img in images]
    if len({_safe(n) for n in tp_names}) != len(tp_names):
        raise ValueError(f"timepoint names {tp_names} are not distinct as file names")
    ids = [sorted(int(i) for i in les) for les in lesions]
    needs_ct = [source_datasets_of(img) is None for img in images] if "dicom-seg" in formats else []
    plan = plan_export(out, tp_names, ids, formats, dicom_ct=needs_ct)
    existing = plan.existing()
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
        raise OutputExistsError(f"{len(existing)} output(s) already exist: {shown}; nothing was written "
                                "(use --overwrite to replace them)")
    out = Path(out)
    pairs = list(zip(images, lesions, strict=True))
    state: dict = {}

    def maps(fmt):
        from ..io.images import write_label_map

        return [write_label_map(compose_label_map(les, img.geometry, name=f"{img.name}_lesions"),
                                out / f"{_safe(img.name)}_lesions{_MAP_SUFFIX[fmt]}", overwrite=overwrite)
                for img, les in pairs]

    def own_masks(img, les):
        from ..io.images import write_label_map

        return [write_label_map(les[lid].mask.to_full().astype(np.uint8),
                                out / f"{_safe(img.name)}_lesion_{lid}.nii.gz", geometry=img.geometry,
                                overwrite=overwrite) for lid in sorted(les)]

    def prompts_json(img, les):
        from ..core.prompts import prompts_from_label_map
        from ..io.prompt_files import write_prompt_json

        prompts = []
        for lid in sorted(les):
            if not les[lid].mask.is_empty:
                prompts.extend(prompts_from_label_map(les[lid].mask.to_full().astype(np.uint32) * lid, prompt_type))
        return [write_prompt_json(prompts, out / f"{_safe(img.name)}_prompts.json", overwrite=overwrite)]

    def measured():
        if "rows" not in state:
            state["rows"], state["recist"] = _measure(images, lesions, targets, nodes)
        return state["rows"], state["recist"]

    def tables():
        from ..io.tables import write_lesion_table

        rows, recist = measured()
        return list(write_lesion_table(out / "lesion_table", rows, recist, overwrite=overwrite,
                                       metadata={"images": [img.source or img.name for img in images]}).values())

    def segs():
        from ..io.dicom_seg import export_dicom_study

        exp = export_dicom_study(images, lesions, out / "dicom", names=names, sites=sites, engine=engine,
                                 model=model, overwrite=overwrite)
        state["seg"] = exp
        return [p for seg, ct in zip(exp.seg_paths, exp.ct_folders, strict=True) for p in (seg, ct) if p is not None]

    def sr(k, img):
        from ..io.dicom_sr import write_dicom_sr

        rows, recist = measured()
        exp = state["seg"]
        rec = recist.timepoints[k] if recist is not None else None
        return [write_dicom_sr(out / "dicom" / f"{_safe(img.name)}_sr.dcm", exp.builds[k],
                               [r for r in rows if r.timepoint == k], exp.descriptions, timepoint_index=k,
                               recist=rec, overwrite=overwrite)]

    tasks = []
    for fmt in formats:
        if fmt in _MAP_SUFFIX:
            tasks.append((fmt, f"{fmt} instance maps", lambda fmt=fmt: maps(fmt)))
        elif fmt == "lesions":
            tasks.extend((fmt, f"{img.name}: lesion masks", lambda i=img, le=les: own_masks(i, le))
                         for img, les in pairs)
        elif fmt == "prompts":
            tasks.extend((fmt, f"{img.name}: prompts", lambda i=img, le=les: prompts_json(i, le)) for img, les in pairs)
        elif fmt == "tables":
            tasks.append((fmt, "lesion table and RECIST", tables))
        elif fmt == "dicom-seg":
            tasks.append((fmt, "DICOM-SEG", segs))
        elif fmt == "dicom-sr":
            tasks.extend((fmt, f"{img.name}: DICOM SR", lambda k=k, i=img: sr(k, i)) for k, img in enumerate(images))
    written: dict[str, list[Path]] = {f: [] for f in formats}
    for n, (fmt, label, fn) in enumerate(tasks):
        yield ProgressEvent(n, len(tasks), label)
        written[fmt].extend(fn())
    yield ProgressEvent(len(tasks), len(tasks), "done")
    return written


def _measure(images, lesions, targets, nodes):
    """Lesion table rows (each lesion's own mask) and RECIST (None without a measurable target)."""
    from ..core.measurements import measure_mask
    from ..core.recist import recist_from_measurements, select_targets

    all_ids = sorted({int(i) for les in lesions for i in les})
    rows = []
    for k, (img, les) in enumerate(zip(images, lesions, strict=True)):
        for lid in all_ids:
            r = les.get(lid)
            mask = r.mask.to_full() if r is not None else np.zeros(img.shape, bool)
            rows.append(measure_mask(mask, img.geometry, lesion_id=lid, image=img, timepoint=k,
                                     date=img.acquisition_date))
    chosen = list(targets) if targets is not None else select_targets([r for r in rows if r.timepoint == 0],
                                                                      nodes=nodes)
    if not chosen:
        return rows, None
    return rows, recist_from_measurements(rows, chosen, nodes=[n for n in nodes if n in chosen],
                                          n_timepoints=len(images))


# ----------------------------------------------------------------- reading inputs
def read_lesions_for(image: Image, path: str | os.PathLike) -> tuple[dict[int, LesionResult], list[str]]:
    """Each lesion's own mask for ``image`` from ``path`` (a segment/track output, an instance map or a SEG)."""
    from ..api.outputs import read_case_lesions
    from ..io.dicom_seg import is_dicom_seg, read_dicom_seg
    from ..io.images import read_label_map

    path = Path(path)
    notes: list[str] = []
    if is_dicom_seg(path):
        imp = read_dicom_seg(path, image)
        return imp.lesions, imp.messages
    name = path.name
    if name.endswith("_lesions.nii.gz"):
        case = name[: -len("_lesions.nii.gz")]
        own = read_case_lesions(path.parent, case, image.geometry)
        if own is not None:
            notes.append(f"{name}: each lesion's own mask read from {case}_lesion_<N>.nii.gz")
            return own, notes
    labels = read_label_map(path, like=image)
    return results_from_label_map(labels), notes


def _pairs(values: Sequence[str] | None, flag: str) -> dict[int, str]:
    from .common import UsageError

    out = {}
    for v in values or []:
        key, sep, text = str(v).partition("=")
        if not sep or not key.strip().isdigit():
            raise UsageError(f"{flag}: {v!r} is not ID=TEXT (e.g. {flag} 1=lung '2=lymph node')")
        out[int(key)] = text.strip()
    return out


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``export`` on the ``lesionlocator`` subparsers (called by :func:`.build_parser`)."""
    from .common import add_command

    p = add_command(
        sub, "export",
        help="write a study's lesions as NIfTI/NRRD/MHA, per-lesion masks, prompts, tables, DICOM-SEG and DICOM SR",
        description=__doc__.split("\n\n", 1)[1].split("Every file is planned")[0].strip()
        + "\n\nNothing is written when any planned file exists, unless --overwrite.",
    )
    p.add_argument("-i", "--images", nargs="+", required=True, metavar="IMAGE",
                   help="one image per timepoint, baseline first (files or DICOM series folders)")
    p.add_argument("-l", "--labels", nargs="+", metavar="LABELS",
                   help="per image: an instance map, a segment/track output <case>_lesions.nii.gz (each lesion's own "
                        "mask is read from its <case>_lesion_<N>.nii.gz), or a DICOM-SEG")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if needed)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(DEFAULT_FORMATS), metavar="FORMAT",
                   help=f"formats to write, any of {', '.join(FORMATS)} (default: {' '.join(DEFAULT_FORMATS)})")
    p.add_argument("--names", nargs="+", metavar="ID=NAME", help="lesion names, e.g. 1='RUL mass'")
    p.add_argument("--sites", nargs="+", metavar="ID=SITE", help="finding sites, e.g. 1=lung '2=lymph node'")
    p.add_argument("--edited", nargs="+", type=int, default=[], metavar="ID",
                   help="lesions a reader corrected by hand (their segments say MANUAL)")
    p.add_argument("--engine-name", default=None, metavar="NAME",
                   help="the engine that made the masks, for the SEG's algorithm identification (e.g. classical)")
    p.add_argument("--model", default=None, metavar="MODEL", help="model / checkpoint name for the SEG")
    p.add_argument("--prompt-type", choices=["box", "point"], default="box", help="prompts JSON kind (default box)")
    p.add_argument("--targets", nargs="+", type=int, metavar="ID", help="RECIST target ids (default: up to 5 largest)")
    p.add_argument("--nodes", nargs="+", type=int, default=[], metavar="ID", help="target ids that are lymph nodes")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse, exit 3)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..io.atomic import require_output_folder
    from .common import ProgressBar, UsageError, info, read_one_volume, warn

    require_output_folder(args.output)  # a file or an unwritable place: exit 2 before any work

    if not args.labels or len(args.labels) != len(args.images):
        raise UsageError(f"give one -l per -i image ({len(args.images)} image(s), "
                         f"{len(args.labels or [])} label input(s)), in the same timepoint order")
    images, lesions = [], []
    for img_path, lab_path in zip(args.images, args.labels, strict=True):
        image = read_one_volume(Path(img_path))
        own, notes = read_lesions_for(image, lab_path)
        for note in notes:
            info(note, args)
        for lid in args.edited:
            if lid in own:
                own[lid].provenance["edited"] = True
        images.append(image)
        lesions.append(own)
    names, sites = _pairs(args.names, "--names"), _pairs(args.sites, "--sites")
    bar = ProgressBar(0, "export", args, unit="file")

    def progress(step: int, total: int, message: str) -> None:
        bar.bar.total = total
        bar.bar.n = step
        bar.bar.set_postfix_str(message[:60], refresh=False)
        bar.bar.refresh()

    try:
        written = export_study(images, lesions, args.output, formats=args.formats, names=names, sites=sites,
                               engine=args.engine_name, model=args.model, prompt_type=args.prompt_type,
                               targets=args.targets, nodes=args.nodes, overwrite=args.overwrite, progress=progress)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
    empty = [(img.name, lid) for img, les in zip(images, lesions, strict=True) for lid, r in les.items()
             if r.mask.is_empty]
    for name, lid in empty:
        warn(f"{name}: lesion {lid} has no voxels (no DICOM segment; an empty mask file where asked)")
    for fmt, paths in written.items():
        for p in paths:
            print(f"{fmt}: {p}")
    return 0


def study_model_inputs(study) -> dict:
    """The inputs of :func:`export_study` from a :class:`~.core.study.Study` (what the napari review
    holds): each lesion's own mask per timepoint with its provenance (edited -> MANUAL, tracked ->
    AUTOMATIC), the study's lesion names and sites (``"other"`` left out of the SEG), RECIST targets
    and nodes."""
    images, lesions = [], []
    for tp in study.timepoints:
        images.append(tp.image)
        per = {}
        for lid, obs in study.observations(tp.name).items():
            prov = obs.provenance.to_dict() if hasattr(obs.provenance, "to_dict") else dict(obs.provenance or {})
            per[lid] = LesionResult(lid, obs.mask, status=obs.result.status, messages=list(obs.result.messages),
                                    provenance=prov)
        lesions.append(per)
    ids = study.lesion_ids
    sites = {lid: study.site(lid) for lid in ids if study.site(lid) not in ("", "other")}
    targets = list(study.targets()) if hasattr(study, "targets") else []
    return {"images": images, "lesions": lesions, "names": {lid: study.lesion_name(lid) for lid in ids},
            "sites": sites, "targets": targets or None,
            "nodes": [t for t in targets if sites.get(t) == "lymph node"]}


def export_study_model(study, out: str | os.PathLike, *, formats: Sequence[str] = DEFAULT_FORMATS,
                       overwrite: bool = False, progress=None, **kw) -> dict[str, list[Path]]:
    """:func:`export_study` of a :class:`~.core.study.Study` (see :func:`study_model_inputs`)."""
    inputs = study_model_inputs(study)
    inputs.update(kw)
    images, lesions = inputs.pop("images"), inputs.pop("lesions")
    return export_study(images, lesions, out, formats=formats, overwrite=overwrite, progress=progress, **inputs)

"""PASCAL VOC XML lesion boxes (as in TCIA's Lung-PET-CT-Dx) -> 3D box prompts on a DICOM series.

The collection ships one LabelImg/PASCAL VOC file per annotated slice, named
``<SOPInstanceUID>.xml``, with ``<object><name>`` (the histology class: A, B, E, G) and
``<bndbox>`` ``xmin, ymin, xmax, ymax`` in pixels of the stored slice.

Rules (see ``../shared/data/real/lung_pet_ct_dx/SOURCE.md``):

* An XML file is matched to a slice **by SOPInstanceUID read from the DICOM headers** (the file
  name's stem; a ``<filename>`` holding a UID is used when the stem is not one), never by file
  name order or InstanceNumber (which runs against z in this collection).
* The slice's z index comes from its ImagePositionPatient on the image's own grid.
* ``x`` is the pixel **column** and ``y`` the pixel **row** of the stored array (no flip);
  ``xmin..xmax`` and ``ymin..ymax`` are inclusive pixel indices (LabelImg writes the corner
  pixels), so the voxel box is ``[ymin, ymax + 1) x [xmin, xmax + 1)``.
* Boxes of the same class that overlap in-plane on consecutive slices belong to one lesion: each
  such group becomes one 3D :class:`~..core.prompts.BoxPrompt` (the union of its boxes over its
  slices, max exclusive), ids 1, 2, ... ordered by (first slice, row, column).
* XML files whose SOPInstanceUID is in no slice of the series are listed (``unmatched``), never
  silently dropped; boxes that lie outside their slice are listed in ``problems`` (and clipped
  when they only reach outside).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError, PromptError
from ..core.image import Image
from ..core.prompts import BoxPrompt

__all__ = [
    "VocBox",
    "VocFile",
    "VocLesion",
    "VocPrompts",
    "read_voc_xml",
    "list_voc_files",
    "is_voc_folder",
    "slice_index_by_sop_uid",
    "voc_box_prompts",
    "write_voc_xml",
    "voc_cli_prompts",
    "series_folder_for_voc",
]

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")


@dataclass(frozen=True)
class VocBox:
    """One ``<object>``: class name and the inclusive pixel box (column = x, row = y)."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int


@dataclass
class VocFile:
    path: Path
    sop_instance_uid: str
    boxes: list[VocBox]
    width: int | None = None
    height: int | None = None


@dataclass
class VocLesion:
    """One lesion: its 3D box prompt, class, and the per-slice boxes it was built from."""

    prompt: BoxPrompt
    name: str
    slices: list[tuple[int, VocBox, Path]] = field(default_factory=list)  # (z index, box, xml file)


@dataclass
class VocPrompts:
    """What a folder of VOC files gives on one series."""

    lesions: list[VocLesion]
    unmatched: list[Path]
    problems: list[str]
    matched_files: list[Path]

    @property
    def prompts(self) -> list[BoxPrompt]:
        return [les.prompt for les in self.lesions]

    def summary(self) -> str:
        parts = [f"{len(self.lesions)} lesion box(es) from {len(self.matched_files)} XML file(s)"]
        if self.unmatched:
            parts.append(f"{len(self.unmatched)} XML file(s) match no slice of this series: "
                         + ", ".join(p.name for p in self.unmatched[:5]) + (" ..." if len(self.unmatched) > 5 else ""))
        parts.extend(self.problems)
        return "; ".join(parts)


def _int(el, tag: str, path: Path) -> int:
    node = el.find(tag)
    if node is None or node.text is None:
        raise PromptError(f"{path.name}: <{tag}> is missing")
    try:
        return int(round(float(node.text.strip())))
    except ValueError:
        raise PromptError(f"{path.name}: <{tag}> is not a number ({node.text.strip()!r})") from None


def read_voc_xml(path: str | os.PathLike) -> VocFile:
    """Parse one PASCAL VOC file; PromptError naming the file when it is not one."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise PromptError(f"{path.name}: not a readable PASCAL VOC XML file ({exc})") from None
    if root.tag != "annotation":
        raise PromptError(f"{path.name}: not a PASCAL VOC file (root element <{root.tag}>, expected <annotation>)")
    uid = path.stem
    filename = (root.findtext("filename") or "").strip()
    if not _UID_RE.match(uid) and _UID_RE.match(Path(filename).stem):
        uid = Path(filename).stem
    width = height = None
    size = root.find("size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        width, height = _int(size, "width", path), _int(size, "height", path)
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            raise PromptError(f"{path.name}: an <object> has no <bndbox>")
        box = VocBox((obj.findtext("name") or "").strip(), _int(bb, "xmin", path), _int(bb, "ymin", path),
                     _int(bb, "xmax", path), _int(bb, "ymax", path))
        if box.xmax < box.xmin or box.ymax < box.ymin:
            raise PromptError(f"{path.name}: box {box} has max < min")
        boxes.append(box)
    return VocFile(path, uid, boxes, width, height)


def list_voc_files(folder: str | os.PathLike) -> list[Path]:
    """The ``*.xml`` files directly in ``folder`` (hidden files skipped), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PromptError(f"{folder} is not a folder of PASCAL VOC XML files")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".xml"
                  and not p.name.startswith("."))


def is_voc_folder(path: str | os.PathLike) -> bool:
    """A folder holding ``.xml`` files (and no other prompt files): a VOC annotation folder."""
    p = Path(path)
    return p.is_dir() and bool(list_voc_files(p))


def slice_index_by_sop_uid(image: Image) -> dict[str, int]:
    """SOPInstanceUID -> z index of ``image`` (a series read from DICOM), from each file's header.

    The z index is where the slice's ImagePositionPatient lies on the image's own grid, never the
    file order or InstanceNumber.
    """
    import pydicom

    md = image.metadata or {}
    folder, uid = md.get("folder"), md.get("series_instance_uid")
    if not folder or not uid:
        raise InputImageError(f"{image.name} was not read from a DICOM series: VOC boxes are matched to slices by "
                              "SOPInstanceUID, so open the DICOM series itself")
    from .dicom import list_dicom_series

    infos = [i for i in list_dicom_series(folder) if i.uid == uid]
    if not infos:
        raise InputImageError(f"{folder}: the series {uid} of {image.name} is no longer there")
    out: dict[str, int] = {}
    for f in infos[0].files:
        ds = pydicom.dcmread(f, stop_before_pixels=True,
                             specific_tags=["SOPInstanceUID", "ImagePositionPatient"])
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        idx = image.geometry.world_to_index(ipp[::-1])
        k = int(round(float(idx[0])))
        if abs(idx[0] - k) > 0.05 or not 0 <= k < image.shape[0]:
            raise InputImageError(f"{f}: slice at z index {idx[0]:.2f}, off the grid of {image.name}")
        out[str(ds.SOPInstanceUID)] = k
    return out


def voc_box_prompts(
    xml: str | os.PathLike | Sequence[str | os.PathLike],
    image: Image,
    *,
    first_id: int = 1,
    max_gap: int = 0,
) -> VocPrompts:
    """Box prompts on ``image`` (a DICOM series) from a folder (or list) of VOC files.

    Parameters
    ----------
    xml : folder or list of files
    image : Image
        Read from a DICOM series (its metadata names the folder and series UID).
    first_id : int
        Id of the first lesion.
    max_gap : int
        Slices without a box allowed between two boxes of one lesion (0: strictly consecutive).
    """
    files = list_voc_files(xml) if isinstance(xml, str | os.PathLike) and Path(xml).is_dir() else \
        [Path(p) for p in ([xml] if isinstance(xml, str | os.PathLike) else xml)]
    by_uid = slice_index_by_sop_uid(image)
    _, rows, cols = image.shape
    entries: list[tuple[int, VocBox, Path]] = []
    unmatched, problems, matched = [], [], []
    for f in files:
        try:
            vf = read_voc_xml(f)
        except PromptError as exc:
            problems.append(str(exc))
            continue
        k = by_uid.get(vf.sop_instance_uid)
        if k is None:
            unmatched.append(f)
            continue
        matched.append(f)
        if vf.width and vf.height and (vf.width, vf.height) != (cols, rows):
            problems.append(f"{f.name}: made on a {vf.width}x{vf.height} image, the slice is {cols}x{rows}")
        for b in vf.boxes:
            if b.xmin >= cols or b.ymin >= rows or b.xmax < 0 or b.ymax < 0:
                problems.append(f"{f.name}: box x {b.xmin}-{b.xmax}, y {b.ymin}-{b.ymax} lies outside its "
                                f"{cols}x{rows} slice; ignored")
                continue
            clipped = VocBox(b.name, max(b.xmin, 0), max(b.ymin, 0), min(b.xmax, cols - 1), min(b.ymax, rows - 1))
            if clipped != b:
                problems.append(f"{f.name}: box x {b.xmin}-{b.xmax}, y {b.ymin}-{b.ymax} reaches outside its "
                                f"{cols}x{rows} slice; clipped")
            entries.append((k, clipped, f))
    # Group: same class, in-plane overlap, slices at most max_gap + 1 apart (union-find).
    parent = list(range(len(entries)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (ki, bi, _) in enumerate(entries):
        for j in range(i + 1, len(entries)):
            kj, bj, _ = entries[j]
            if bi.name == bj.name and 1 <= abs(ki - kj) <= max_gap + 1 and _overlap(bi, bj):
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(entries)):
        groups.setdefault(find(i), []).append(i)
    lesions = []
    for members in groups.values():
        ks = [entries[i][0] for i in members]
        bs = [entries[i][1] for i in members]
        box = (min(ks), max(ks) + 1, min(b.ymin for b in bs), max(b.ymax for b in bs) + 1,
               min(b.xmin for b in bs), max(b.xmax for b in bs) + 1)
        lesions.append((box, bs[0].name, sorted((entries[i] for i in members), key=lambda e: e[0])))
    lesions.sort(key=lambda t: (t[0][0], t[0][2], t[0][4]))
    out = [VocLesion(BoxPrompt(first_id + n, box), name, slices) for n, (box, name, slices) in enumerate(lesions)]
    return VocPrompts(out, unmatched, problems, matched)


def _overlap(a: VocBox, b: VocBox) -> bool:
    return a.xmin <= b.xmax and b.xmin <= a.xmax and a.ymin <= b.ymax and b.ymin <= a.ymax


def write_voc_xml(path: str | os.PathLike, sop_instance_uid: str, boxes: Sequence[VocBox], *, width: int,
                  height: int, overwrite: bool = False) -> Path:
    """Write one VOC file in the collection's layout (tests, exporting boxes back), atomically."""
    path = Path(path)
    root = ET.Element("annotation", verified="no")
    for tag in ("folder", "filename", "path"):
        ET.SubElement(root, tag).text = sop_instance_uid if tag == "filename" else "Unknow"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(int(width))
    ET.SubElement(size, "height").text = str(int(height))
    ET.SubElement(size, "depth").text = "1"
    ET.SubElement(root, "segmented").text = "0"
    for b in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = b.name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "Difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            ET.SubElement(bb, tag).text = str(int(getattr(b, tag)))
    from .atomic import atomic_write_text

    atomic_write_text(path, ET.tostring(root, encoding="unicode"), overwrite=overwrite)
    return path


def voc_cli_prompts(folder: str | os.PathLike, image: Image, kind: str) -> tuple[list, list[str]]:
    """Prompts for ``lesionlocator segment -p XML_DIR``: 3D boxes (``-t box``) or their centres
    (``-t point``), plus the lines to warn about (unmatched XML files, boxes outside their slice).

    Raises PromptError when no XML file matches a slice of the series.
    """
    from ..core.prompts import PointPrompt

    res = voc_box_prompts(folder, image)
    notes = list(res.problems)
    if res.unmatched:
        notes.append(f"{len(res.unmatched)} XML file(s) in {Path(folder).name} match no slice of this series (by "
                     "SOPInstanceUID): " + ", ".join(p.name for p in res.unmatched[:6])
                     + (" ..." if len(res.unmatched) > 6 else ""))
    if not res.lesions:
        raise PromptError(f"{folder}: no box in these XML files lies on a slice of {image.name} "
                          f"({len(res.unmatched)} file(s) match no slice)")
    if kind == "point":
        return [PointPrompt(les.prompt.lesion_id, tuple(int(round(v)) for v in les.prompt.center))
                for les in res.lesions], notes
    return res.prompts, notes


def series_folder_for_voc(folder: str | os.PathLike, xml: str | os.PathLike, max_depth: int = 4) -> tuple[Path, int]:
    """The DICOM series folder under ``folder`` whose slices the most XML files name (by SOPInstanceUID).

    For a patient/study folder holding several series (Lung-PET-CT-Dx: two reconstructions of one
    acquisition, the boxes split between them). Returns (series folder, number of XML files matched);
    PromptError when no series has a slice any XML file names.
    """
    import pydicom

    from .dicom import is_dicom_file

    folder = Path(folder)
    wanted = {read_voc_xml(p).sop_instance_uid for p in list_voc_files(xml)} if Path(xml).is_dir() else set()
    best: tuple[Path, int] | None = None
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if len(Path(root).parts) - base >= max_depth:
            dirs[:] = []
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        uids = set()
        for f in files:
            p = Path(root) / f
            if f.startswith(".") or not is_dicom_file(p):
                continue
            try:
                uids.add(str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                             .SOPInstanceUID))
            except Exception:  # noqa: BLE001 - an unreadable file matches nothing
                continue
        n = len(uids & wanted)
        if n and (best is None or n > best[1]):
            best = (Path(root), n)
    if best is None:
        raise PromptError(f"no DICOM series under {folder} has a slice that the XML files in {xml} name "
                          "(matched by SOPInstanceUID)")
    return best

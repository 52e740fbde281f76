"""DICOM Segmentation (SEG) objects: one SEG per timepoint, one segment per lesion (highdicom).

Writing (:func:`write_dicom_seg`)
    Each lesion becomes one segment: its own whole mask (segments may overlap, as the lesions'
    own masks may), its name as the segment label, its finding site as the anatomic region, a
    tracking id (``lesion-<id>``) and a tracking UID that is the same for the same lesion at every
    timepoint of a study (:func:`tracking_uid`), the category *Morphologically abnormal structure*
    / type *Lesion*, and how the mask came to be: ``SEMIAUTOMATIC`` (segmented from a prompt) or
    ``AUTOMATIC`` (tracked) with the algorithm identification (engine, version, model), or
    ``MANUAL`` once a reader edited it. Lesions without voxels (lost, empty) get no segment and
    are reported.

    When the image came from a DICOM series (:func:`~.dicom.read_dicom_folder`), the SEG
    references every instance of that series and shares its frame of reference, patient and
    study. Otherwise (NIfTI, NRRD, MHA, a synthetic image) :func:`ct_series_datasets` makes a CT
    series with new UIDs on the image's exact patient-space geometry (:func:`export_dicom_study`
    writes it next to the SEG, so PACS, OHIF and Slicer can load both).

Reading (:func:`read_dicom_seg`, :func:`read_dicom_seg_folder`)
    A SEG gives its CT image (the referenced series, found next to the SEG, in sibling folders, or
    given) and one lesion per segment: each segment's own whole mask on the CT grid, placed frame
    by frame from the per-frame plane positions (so SEGs without ``SpatialLocationsPreserved``,
    sparse SEGs and frame subsets all work). Segment labels, sites and tracking ids are kept; the
    lesion id is the number in a ``lesion-<id>`` tracking id (our own SEGs round-trip their ids),
    else the segment number. Overlapping segments are reported and kept apart; the display map
    lets the later (or, if chosen, the earlier) segment win. A missing referenced series, a
    different frame of reference, other slice orientation or pixel spacing, and unreadable files
    give :class:`~..core.errors.InputImageError` with a message naming what is wrong.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError, OutputExistsError
from ..core.geometry import Geometry
from ..core.image import Image, LabelMap
from ..core.results import LesionMask, LesionResult, compose_label_map, overlaps
from .dicom import set_image_plane

__all__ = [
    "SEG_SOP_CLASS_UID",
    "LesionDescription",
    "SegImport",
    "tracking_uid",
    "tracking_id_for",
    "lesion_id_from_tracking_id",
    "describe_lesions",
    "algorithm_type_of",
    "source_datasets_of",
    "ct_series_datasets",
    "write_ct_series",
    "build_dicom_seg",
    "write_dicom_seg",
    "export_dicom_study",
    "is_dicom_seg",
    "read_dicom_seg",
    "read_dicom_seg_folder",
    "find_dicom_segs",
]

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
#: Segmentation Storage and Label Map Segmentation Storage (DICOM 2024): both are read.
SEG_SOP_CLASS_UIDS = (SEG_SOP_CLASS_UID, "1.2.840.10008.5.1.4.1.1.66.7")
CT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.2"
_SOP_BY_MODALITY = {"CT": CT_SOP_CLASS_UID, "MR": "1.2.840.10008.5.1.4.1.1.4"}
MANUFACTURER = "napari-lesionlocator"
#: The UID root our deterministic tracking UIDs are derived under (pydicom's root; entropy-based).
_TRACKING_NAMESPACE = "napari-lesionlocator tracking"
_TRACKING_ID_RE = re.compile(r"^\s*lesion[\s_-]*(\d+)\s*$", re.IGNORECASE)


# ----------------------------------------------------------------- descriptions
def tracking_uid(study_key: str, lesion_id: int) -> str:
    """The tracking UID of lesion ``lesion_id`` in the study ``study_key`` (deterministic).

    The same key and id give the same UID at every timepoint and in every export, so PACS and
    viewers can follow a lesion across SEGs and SRs; different studies get different UIDs.
    """
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[_TRACKING_NAMESPACE, str(study_key), str(int(lesion_id))]))


def tracking_id_for(lesion_id: int) -> str:
    """The human-readable tracking identifier we write: ``lesion-<id>``."""
    return f"lesion-{int(lesion_id)}"


def lesion_id_from_tracking_id(text: str | None) -> int | None:
    """``"lesion-7"`` (also ``"Lesion 7"``, ``"lesion_7"``) -> 7; anything else -> None."""
    if not text:
        return None
    m = _TRACKING_ID_RE.match(str(text))
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


@dataclass
class LesionDescription:
    """What a segment says about its lesion.

    ``algorithm_type`` is ``"SEMIAUTOMATIC"`` (segmented by an engine from a reader's prompt),
    ``"AUTOMATIC"`` (tracked by an engine) or ``"MANUAL"`` (a reader edited the mask; no algorithm
    is named then). ``engine``/``engine_version``/``model`` identify the algorithm otherwise.
    """

    lesion_id: int
    label: str = ""
    site: str | None = None
    tracking_id: str = ""
    tracking_uid: str = ""
    algorithm_type: str = "SEMIAUTOMATIC"
    engine: str | None = None
    engine_version: str | None = None
    model: str | None = None
    segment_number: int | None = None  # set when read from a SEG
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lesion_id = int(self.lesion_id)
        self.label = self.label or f"Lesion {self.lesion_id}"
        self.tracking_id = self.tracking_id or tracking_id_for(self.lesion_id)
        self.algorithm_type = str(self.algorithm_type).upper()
        if self.algorithm_type not in ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"):
            raise ValueError(f"algorithm type must be AUTOMATIC, SEMIAUTOMATIC or MANUAL, got {self.algorithm_type!r}")


def algorithm_type_of(provenance: Mapping | None) -> str:
    """``MANUAL`` when the mask was edited by a reader, ``AUTOMATIC`` when tracked, else ``SEMIAUTOMATIC``.

    Reads a provenance dict or :class:`~..core.study.Provenance`: ``edits`` / ``edited`` or
    ``source == "manual"`` (a reader changed or drew the mask), ``tracked_from`` or
    ``source == "tracked"`` (propagated) and ``algorithm_type`` (explicit).
    """
    prov = dict(provenance.to_dict() if hasattr(provenance, "to_dict") else provenance or {})
    if prov.get("algorithm_type"):
        return str(prov["algorithm_type"]).upper()
    if prov.get("edited") or prov.get("manual_edits") or prov.get("edits") or prov.get("source") == "manual":
        return "MANUAL"
    if prov.get("tracked_from") is not None or prov.get("source") == "tracked":
        return "AUTOMATIC"
    return "SEMIAUTOMATIC"


def describe_lesions(
    lesion_ids: Iterable[int],
    *,
    study_key: str,
    names: Mapping[int, str] | None = None,
    sites: Mapping[int, str | None] | None = None,
    provenance: Mapping[int, Mapping] | None = None,
    engine: str | None = None,
    engine_version: str | None = None,
    model: str | None = None,
) -> dict[int, LesionDescription]:
    """One :class:`LesionDescription` per id, with study-wide tracking UIDs.

    ``provenance[id]`` (a :class:`~..core.results.LesionResult`'s ``provenance``) may name the
    ``engine``, ``engine_version``, ``model`` and whether the mask was ``edited``; the keyword
    arguments are the defaults for lesions whose provenance does not say.
    """
    from .. import __version__

    names, sites, provenance = names or {}, sites or {}, provenance or {}
    out = {}
    for lid in (int(i) for i in lesion_ids):
        raw = provenance.get(lid)
        prov = dict(raw.to_dict() if hasattr(raw, "to_dict") else raw or {})
        out[lid] = LesionDescription(
            lesion_id=lid,
            label=names.get(lid) or "",
            site=sites.get(lid) or prov.get("site"),
            tracking_uid=tracking_uid(study_key, lid),
            algorithm_type=algorithm_type_of(prov),
            engine=prov.get("engine") or engine,
            engine_version=str(prov.get("engine_version") or engine_version or __version__),
            model=prov.get("model") or model,
        )
    return out


# ----------------------------------------------------------------- codes
def _codes():
    from pydicom.sr.codedict import codes

    return codes


def _site_code(site: str | None):
    """A SNOMED CT code for a finding site name (``"lung"``, ``"lymph node"``, ...), or a local code."""
    if not site:
        return None
    from highdicom.sr import CodedConcept

    codes = _codes()
    key = "".join(w[:1].upper() + w[1:].lower() for w in re.split(r"[\s_-]+", str(site).strip()) if w)
    code = getattr(codes.SCT, key, None) if key else None
    if code is not None:
        return code
    # Not in SNOMED's dictionary under that name: keep the reader's word under a local scheme.
    value = re.sub(r"[^A-Za-z0-9]+", "-", str(site).strip()).strip("-").upper()[:16] or "SITE"
    return CodedConcept(value=value, scheme_designator="99NLL", meaning=str(site).strip()[:64])


def _algorithm_sequence(desc: LesionDescription):
    if desc.algorithm_type == "MANUAL":
        return None
    import highdicom as hd

    codes = _codes()
    name = desc.engine or "napari-lesionlocator"
    family = codes.cid7162.ArtificialIntelligence if (desc.engine or "").lower() == "lesionlocator" else \
        codes.cid7162.EdgeDetection if (desc.engine or "").lower() == "classical" else \
        codes.cid7162.ArtificialIntelligence
    params = {"model": str(desc.model)} if desc.model else None
    return hd.AlgorithmIdentificationSequence(name=str(name)[:64], family=family,
                                             version=str(desc.engine_version or "unknown")[:64],
                                             source=MANUFACTURER, parameters=params)


def _segment_description(number: int, desc: LesionDescription):
    import highdicom as hd

    codes = _codes()
    site = _site_code(desc.site)
    algo = _algorithm_sequence(desc)
    rgb = _colour(desc.lesion_id)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=str(desc.label)[:64],
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=desc.algorithm_type,
        algorithm_identification=algo,
        tracking_uid=desc.tracking_uid or tracking_uid("unknown study", desc.lesion_id),
        tracking_id=str(desc.tracking_id)[:64],
        anatomic_regions=[site] if site is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )


def _colour(lesion_id: int) -> tuple[int, int, int]:
    """A bright, stable colour per lesion id (golden-angle hues)."""
    import colorsys

    h = (int(lesion_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


# ----------------------------------------------------------------- source images
def _dcmread(path, **kw):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), **kw)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise InputImageError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None


def _slice_index(ds, geometry: Geometry) -> float:
    ipp = [float(v) for v in ds.ImagePositionPatient]
    return float(geometry.world_to_index(np.asarray(ipp[::-1]))[0])


def source_datasets_of(image: Image) -> list | None:
    """The headers (no pixels) of the DICOM series ``image`` was read from, in array z order.

    ``None`` when the image did not come from a DICOM series (no ``series_instance_uid`` and
    ``folder`` in its metadata). Raises InputImageError when the series changed since reading
    (files missing, slices that do not sit on the image's grid).
    """
    from .dicom import list_dicom_series

    md = image.metadata or {}
    uid, folder = md.get("series_instance_uid"), md.get("folder")
    if (not uid or not folder) and image.source and Path(image.source).is_dir():
        # An image that only knows its folder (e.g. a napari layer): the one series there on its grid.
        return _series_on_grid(image)
    if not uid or not folder:
        return None
    infos = [i for i in list_dicom_series(folder) if i.uid == uid]
    if not infos:
        raise InputImageError(f"{folder}: the series {uid} that {image.name} was read from is no longer there")
    headers = [_dcmread(f, stop_before_pixels=True) for f in infos[0].files]
    return _order_on_grid(headers, image.geometry, what=f"series {uid}")


def _series_on_grid(image: Image) -> list | None:
    """Headers of the one series in ``image.source`` whose slices are exactly ``image``'s grid, else None."""
    from .dicom import list_dicom_series

    try:
        infos = list_dicom_series(image.source)
    except InputImageError:
        return None
    fits = []
    for info in infos:
        if len(info.files) != image.shape[0] or info.modality == "SEG":
            continue
        try:
            headers = [_dcmread(f, stop_before_pixels=True) for f in info.files]
            ordered = _order_on_grid(headers, image.geometry, what=info.uid)
            _check_in_plane(ordered[0], image.geometry, image.name)
        except (InputImageError, AttributeError):
            continue
        fits.append(ordered)
    return fits[0] if len(fits) == 1 else None


def _order_on_grid(headers: list, geometry: Geometry, what: str) -> list:
    by_k: dict[int, object] = {}
    for ds in headers:
        k = _slice_index(ds, geometry)
        kk = int(round(k))
        if abs(k - kk) > 0.05 or not 0 <= kk < geometry.shape[0]:
            raise InputImageError(f"{what}: slice {ds.SOPInstanceUID} lies at z index {k:.2f}, off the image grid")
        by_k[kk] = ds
    if len(by_k) != geometry.shape[0]:
        raise InputImageError(f"{what}: {len(by_k)} distinct slices for an image of {geometry.shape[0]} slices")
    return [by_k[k] for k in range(geometry.shape[0])]


def _dicom_date(iso: str | None) -> str:
    return (iso or "").replace("-", "")[:8]


def ct_series_datasets(
    image: Image,
    *,
    patient_id: str = "ANONYMOUS",
    patient_name: str = "Anonymous^Patient",
    study_uid: str | None = None,
    study_id: str = "1",
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "",
    accession_number: str = "",
    with_pixels: bool = True,
) -> list:
    """A CT (or, for an MR image, MR) Image Storage series on ``image``'s exact geometry, one dataset
    per z slice, new UIDs.

    Every slice carries ImagePositionPatient/ImageOrientationPatient/PixelSpacing from the image's
    origin, direction and spacing, so a SEG made on it maps voxel for voxel. Values are stored as
    int16 (rounded, clipped to the int16 range). Other modalities (PET, ...) are refused.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    modality = (image.modality or "CT").upper()
    if modality not in _SOP_BY_MODALITY:
        raise InputImageError(f"{image.name} is {modality}: a new DICOM series can be made for CT or MR images only "
                              "(export the masks as NIfTI/NRRD, or open the original DICOM series)")
    sop_class = _SOP_BY_MODALITY[modality]
    geom = image.geometry
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    date = _dicom_date(image.acquisition_date) or _dt.date.today().strftime("%Y%m%d")
    if with_pixels:
        arr = np.clip(np.round(np.asarray(image.array, dtype=np.float64)), -32768, 32767).astype(np.int16)
    out = []
    for k in range(geom.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.Modality = modality
        ds.Manufacturer = MANUFACTURER
        ds.PatientID = str(patient_id)
        ds.PatientName = str(patient_name)
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyInstanceUID = study_uid
        ds.StudyID = str(study_id)
        ds.StudyDate = date
        ds.StudyTime = "000000"
        ds.SeriesDate = date
        ds.AcquisitionDate = date
        ds.ContentDate = date
        ds.ReferringPhysicianName = ""
        ds.AccessionNumber = str(accession_number)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = int(series_number)
        ds.SeriesDescription = series_description or image.name
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        set_image_plane(ds, geom, k, signed=True)
        ds.SpacingBetweenSlices = float(geom.spacing[0])
        if modality == "CT":
            ds.KVP = ""
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "RM", "NONE", "", "3D"
            ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "", "", ""
        if modality == "CT":
            ds.RescaleIntercept = 0
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
        if with_pixels:
            ds.PixelData = np.ascontiguousarray(arr[k]).tobytes()
        out.append(ds)
    return out


def _umask_mode() -> int:
    from .atomic import file_mode

    return file_mode()


def _verify_dicom(tmp: Path) -> None:
    """The written file reads back as DICOM (a full disk can leave a short file without an error)."""
    import pydicom

    from ..core.errors import OutputWriteError

    try:
        pydicom.dcmread(str(tmp), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read back is a failed write
        raise OutputWriteError(f"the DICOM file written to {tmp.name} does not read back ({exc})") from None


def _save_atomic(ds, path: Path, *, overwrite: bool) -> Path:
    """Save a dataset atomically with the user's umask (io.atomic); refuse to replace ``path`` unless ``overwrite``."""
    from .atomic import atomic_write

    path = Path(path)
    with atomic_write(path, overwrite=overwrite, verify=_verify_dicom) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)
    return path


def write_ct_series(datasets: Sequence, folder: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Write a series (:func:`ct_series_datasets`) as ``CT_<k>.dcm`` files into ``folder``.

    Refuses (OutputExistsError) before writing anything when a target exists and not ``overwrite``;
    each file is written atomically.
    """
    folder = Path(folder)
    targets = [folder / f"CT_{k + 1:04d}.dcm" for k in range(len(datasets))]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; refusing to overwrite it (use overwrite)")
    folder.mkdir(parents=True, exist_ok=True)
    return [_save_atomic(ds, t, overwrite=overwrite) for ds, t in zip(datasets, targets, strict=True)]


# ----------------------------------------------------------------- writing
LesionsLike = Mapping[int, LesionResult | LesionMask] | LabelMap


def _lesion_masks(lesions: LesionsLike, geometry: Geometry) -> dict[int, tuple[LesionMask, dict]]:
    """``{id: (own whole mask, provenance)}`` from per-lesion results, masks or a label map."""
    if isinstance(lesions, LabelMap):
        from ..core.results import results_from_label_map

        geometry.require_same_grid(lesions.geometry, what="the image and the label map")
        return {lid: (r.mask, {}) for lid, r in results_from_label_map(lesions).items()}
    out = {}
    for lid, item in lesions.items():
        mask, prov = (item.mask, dict(item.provenance)) if isinstance(item, LesionResult) else (item, {})
        if not isinstance(mask, LesionMask):
            raise TypeError(f"lesion {lid}: expected a LesionResult or LesionMask, got {type(item).__name__}")
        geometry.require_same_grid(mask.geometry, what=f"the image and lesion {lid}'s mask")
        out[int(lid)] = (mask, prov)
    return out


@dataclass
class SegBuild:
    """A built SEG (not yet written) and what went into it."""

    dataset: object
    segment_of: dict[int, int]  # lesion id -> segment number
    skipped: list[int]  # lesion ids without voxels (no segment)
    source: list  # the source image datasets, in z order


def build_dicom_seg(
    image: Image,
    lesions: LesionsLike,
    *,
    descriptions: Mapping[int, LesionDescription] | None = None,
    source: Sequence | None = None,
    study_key: str | None = None,
    series_description: str = "Lesions",
    series_number: int = 300,
    content_creator: str | None = None,
) -> SegBuild:
    """Build (in memory) the SEG of ``image``'s lesions; see :func:`write_dicom_seg`."""
    import highdicom as hd

    from .. import __version__

    geometry = image.geometry
    masks = _lesion_masks(lesions, geometry)
    if source is None:
        source = source_datasets_of(image)
    if source is None:
        raise InputImageError(
            f"{image.name} did not come from a DICOM series: make its CT series first "
            "(ct_series_datasets / export_dicom_study write one with new UIDs on its exact geometry)"
        )
    ordered = _order_on_grid(list(source), geometry, what=f"the source series of {image.name}")
    source = [_with_type2(ds) for ds in ordered]
    _check_in_plane(source[0], geometry, image.name)
    key = study_key or _study_key_of(source[0])
    if descriptions is None:
        descriptions = describe_lesions(masks, study_key=key, provenance={k: v[1] for k, v in masks.items()})
    ids = sorted(masks)
    kept = [lid for lid in ids if not masks[lid][0].is_empty]
    skipped = [lid for lid in ids if lid not in kept]
    if not kept:
        raise InputImageError(f"{image.name}: no lesion has any voxel; a SEG needs at least one segment")
    z0 = min(masks[lid][0].start[0] for lid in kept)
    z1 = max(masks[lid][0].stop[0] for lid in kept)
    affine = np.eye(4)
    affine[:3, :3] = (geometry.direction_matrix @ np.diag(geometry.spacing))[::-1, :]
    affine[:3, 3] = geometry.index_to_world(np.array([z0, 0.0, 0.0]))[::-1]
    shape = (z1 - z0, geometry.shape[1], geometry.shape[2])
    for_uid = source[0].FrameOfReferenceUID
    if not overlaps({lid: LesionResult(lid, masks[lid][0]) for lid in kept}):
        # No two masks share a voxel: one label-map style array (segment number per voxel) holds them all,
        # instead of one full stack per segment (memory: 1-2 bytes per voxel of the z range, any count).
        lab = np.zeros(shape, dtype=np.uint8 if len(kept) < 256 else np.uint16)
        for s, lid in enumerate(kept):
            m = masks[lid][0]
            sl = m.slices
            lab[sl[0].start - z0:sl[0].stop - z0, sl[1], sl[2]][m.array] = s + 1
        volume = hd.Volume(lab, affine, "PATIENT", frame_of_reference_uid=for_uid)
    else:  # overlapping own masks: stacked segments (BINARY SEG segments may overlap)
        stack = np.zeros((*shape, len(kept)), dtype=np.uint8)
        for s, lid in enumerate(kept):
            m = masks[lid][0]
            sl = m.slices
            stack[sl[0].start - z0:sl[0].stop - z0, sl[1], sl[2], s][m.array] = 1
        volume = hd.Volume(stack, affine, "PATIENT", frame_of_reference_uid=for_uid,
                           channels={"SegmentNumber": list(range(1, len(kept) + 1))})
    segs = []
    for s, lid in enumerate(kept):
        desc = descriptions.get(lid) or LesionDescription(lid, tracking_uid=tracking_uid(key, lid))
        segs.append(_segment_description(s + 1, desc))
    creator = content_creator
    if creator is None and any(descriptions.get(lid) and descriptions[lid].algorithm_type == "MANUAL" for lid in kept):
        creator = _reader_name()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # single-component person names in anonymised data
        seg = hd.seg.Segmentation(
            source_images=source,
            pixel_array=volume,
            segmentation_type="BINARY",
            segment_descriptions=segs,
            series_instance_uid=hd.UID(),
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name="napari-lesionlocator",
            software_versions=str(__version__),
            device_serial_number="0",
            content_description=series_description[:64],
            content_label="LESIONS",
            content_creator_name=creator,
            series_description=series_description[:64],
        )
    return SegBuild(seg, {lid: s + 1 for s, lid in enumerate(kept)}, skipped, source)


_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "AccessionNumber", "StudyID", "Manufacturer")


def _with_type2(ds):
    """A header copy with the patient/study attributes a SEG inherits present (empty when unknown).

    Minimal writers (and some anonymisers) drop these Type 2 attributes, some scanners write an
    empty SpecificCharacterSet; highdicom needs the former and refuses the latter.
    """
    blank_charset = "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet or "").strip()
    if all(k in ds for k in _TYPE2) and not blank_charset:
        return ds
    import copy

    out = copy.deepcopy(ds)
    for k in _TYPE2:
        if k not in out:
            setattr(out, k, "")
    if blank_charset:  # an empty (0008,0005) means the default repertoire; highdicom refuses the empty value
        del out.SpecificCharacterSet
    return out


def _reader_name() -> str:
    import getpass

    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "reader"
    return f"{re.sub(r'[^A-Za-z0-9 ]+', ' ', user).strip() or 'reader'}^"


def _study_key_of(ds) -> str:
    return f"{getattr(ds, 'PatientID', '')}|{getattr(ds, 'StudyInstanceUID', '')}"


def _check_in_plane(ds, geometry: Geometry, what: str) -> None:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    d_xyz = geometry.direction_matrix[::-1, ::-1]
    if not (np.allclose(iop[:3], d_xyz[:, 0], atol=1e-3) and np.allclose(iop[3:], d_xyz[:, 1], atol=1e-3)):
        raise InputImageError(f"{what}: the DICOM slices' orientation {iop.round(4).tolist()} does not match the "
                              "image's direction (the image was reoriented after reading)")
    if (int(ds.Rows), int(ds.Columns)) != geometry.shape[1:]:
        raise InputImageError(f"{what}: DICOM slices are {ds.Rows}x{ds.Columns}, the image {geometry.shape[1:]}")


def write_dicom_seg(
    image: Image,
    lesions: LesionsLike,
    path: str | os.PathLike,
    *,
    descriptions: Mapping[int, LesionDescription] | None = None,
    source: Sequence | None = None,
    study_key: str | None = None,
    series_description: str = "Lesions",
    series_number: int = 300,
    overwrite: bool = False,
    content_creator: str | None = None,
) -> SegBuild:
    """Write ``image``'s lesions as one DICOM-SEG file (atomic, user's umask, never silently replaced).

    Parameters
    ----------
    image : Image
        The CT the masks are on. From a DICOM series, its instances are referenced (``source``
        defaults to that series' headers); otherwise pass ``source`` (e.g. :func:`ct_series_datasets`).
    lesions : mapping or LabelMap
        ``{id: LesionResult}`` (each lesion's own whole mask; masks may overlap) or
        ``{id: LesionMask}``, or an instance map.
    descriptions : mapping, optional
        ``{id: LesionDescription}``; default from :func:`describe_lesions` (tracking UIDs keyed by
        ``study_key``, default the source's PatientID + StudyInstanceUID).

    Returns
    -------
    SegBuild
        The dataset, the lesion id -> segment number map, and the ids skipped (no voxels).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; refusing to overwrite it (use overwrite)")
    built = build_dicom_seg(image, lesions, descriptions=descriptions, source=source, study_key=study_key,
                            series_description=series_description, series_number=series_number,
                            content_creator=content_creator)
    _save_atomic(built.dataset, path, overwrite=overwrite)
    return built


@dataclass
class StudyExport:
    """What :func:`export_dicom_study` wrote, per timepoint (in order)."""

    seg_paths: list[Path]
    ct_folders: list[Path | None]  # None where the image came from DICOM (its own series is referenced)
    builds: list[SegBuild]
    descriptions: dict[int, LesionDescription]
    messages: list[str]


def export_dicom_study(
    images: Sequence[Image],
    lesions_per_timepoint: Sequence[LesionsLike],
    out: str | os.PathLike,
    *,
    names: Mapping[int, str] | None = None,
    sites: Mapping[int, str | None] | None = None,
    engine: str | None = None,
    model: str | None = None,
    patient_id: str | None = None,
    study_key: str | None = None,
    overwrite: bool = False,
) -> StudyExport:
    """One SEG per timepoint into ``out`` (``<name>_seg.dcm``), with study-wide tracking UIDs.

    A timepoint whose image did not come from DICOM also gets its CT series (``<name>_ct/``, new
    UIDs, exact geometry) so the SEG's references resolve. Every timepoint shares the patient id
    and the tracking UIDs; the baseline's lesions keep the provenance they had at each timepoint
    (SEMIAUTOMATIC at the baseline, AUTOMATIC when tracked, MANUAL once edited).
    """
    out = Path(out)
    if len(images) != len(lesions_per_timepoint):
        raise ValueError(f"{len(images)} images but {len(lesions_per_timepoint)} lesion sets")
    seg_paths = [out / f"{_safe(img.name)}_seg.dcm" for img in images]
    existing = [p for p in seg_paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; refusing to overwrite it (use overwrite)")
    pid = patient_id or next((img.metadata.get("patient_id") for img in images if img.metadata.get("patient_id")),
                             None) or "ANONYMOUS"
    key = study_key or f"{pid}|{images[0].metadata.get('study_instance_uid') or images[0].name}"
    res = StudyExport([], [], [], {}, [])
    for k, (image, lesions) in enumerate(zip(images, lesions_per_timepoint, strict=True)):
        masks = _lesion_masks(lesions, image.geometry)
        prov = {lid: dict(v[1]) for lid, v in masks.items()}
        if k > 0:
            for p in prov.values():
                if p.get("source") not in ("segmented", "manual", "imported") and not p.get("prompt"):
                    p.setdefault("tracked_from", 0)  # a follow-up mask without a say: propagated
        desc = describe_lesions(masks, study_key=key, names=names, sites=sites, provenance=prov, engine=engine,
                                model=model)
        for lid, d in desc.items():
            res.descriptions.setdefault(lid, d)
        source = source_datasets_of(image)
        ct_folder = None
        if source is None:
            ct_folder = out / f"{_safe(image.name)}_ct"
            source = ct_series_datasets(image, patient_id=pid, series_description=f"{image.name} (CT)",
                                        series_number=k + 1)
            write_ct_series(source, ct_folder, overwrite=overwrite)
        own = {lid: m for lid, (m, _) in masks.items()}
        built = write_dicom_seg(image, own, seg_paths[k], descriptions=desc, source=source, study_key=key,
                                series_description=f"Lesions {image.name}"[:64], overwrite=overwrite)
        if built.skipped:
            res.messages.append(f"{image.name}: lesion(s) {built.skipped} have no voxels here (no segment)")
        res.seg_paths.append(seg_paths[k])
        res.ct_folders.append(ct_folder)
        res.builds.append(built)
    return res


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "image"


# ----------------------------------------------------------------- reading
def is_dicom_seg(path: str | os.PathLike) -> bool:
    """True when ``path`` is a DICOM file of the Segmentation Storage SOP class (header only)."""
    from .dicom import is_dicom_file

    p = Path(path)
    if not p.is_file() or not is_dicom_file(p):
        return False
    try:
        import pydicom

        ds = pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - a probe: any unreadable file is simply not a SEG
        return False
    return str(getattr(ds, "SOPClassUID", "")) in SEG_SOP_CLASS_UIDS


def find_dicom_segs(folder: str | os.PathLike, max_depth: int = 4) -> list[Path]:
    """Every DICOM-SEG file in ``folder`` and its sub-folders (up to ``max_depth`` levels), sorted."""
    folder = Path(folder)
    out = []
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if len(Path(root).parts) - base >= max_depth:
            dirs[:] = []
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if not f.startswith(".") and is_dicom_seg(Path(root) / f):
                out.append(Path(root) / f)
    return out


@dataclass
class SegImport:
    """A SEG read onto its CT: the image, each segment's own whole mask, and what was noticed."""

    image: Image
    lesions: dict[int, LesionResult]
    descriptions: dict[int, LesionDescription]
    labels: LabelMap
    overlaps: list[tuple[int, int, int]]
    messages: list[str]
    seg_path: Path
    seg_series_uid: str
    seg_sop_instance_uid: str
    referenced_series_uid: str

    @property
    def names(self) -> dict[int, str]:
        return {lid: d.label for lid, d in self.descriptions.items()}


def _ref_series_uids(seg) -> list[str]:
    return [str(item.SeriesInstanceUID) for item in getattr(seg, "ReferencedSeriesSequence", [])]


def _ref_instance_uids(seg) -> set[str]:
    out = set()
    for item in getattr(seg, "ReferencedSeriesSequence", []):
        for inst in getattr(item, "ReferencedInstanceSequence", []):
            out.add(str(inst.ReferencedSOPInstanceUID))
    return out


def _candidate_folders(seg_path: Path) -> list[Path]:
    """Where to look for a SEG's CT: its own folder, then every folder below its parent (depth 3)."""
    seen, out = set(), []
    for root in (seg_path.parent, seg_path.parent.parent):
        base = len(root.parts)
        for dirpath, dirs, _files in os.walk(root):
            if len(Path(dirpath).parts) - base >= 3:
                dirs[:] = []
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            p = Path(dirpath)
            if p not in seen:
                seen.add(p)
                out.append(p)
    return out


def _find_series(uids: Sequence[str], folders: Sequence[Path], seg=None,
                 messages: list[str] | None = None) -> tuple[Image | None, list[str]]:
    """Read the first of ``uids`` found in ``folders``; (None, [what was found]) otherwise.

    A referenced series that is not a regular volume (missing slices, a single slice) is read as
    the regular run of slices the SEG's frames lie on, and ``messages`` says so.
    """
    from .dicom import list_dicom_series, read_dicom_series

    found: list[str] = []
    for folder in folders:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                infos = list_dicom_series(folder)
        except InputImageError:
            continue
        for info in infos:
            if info.uid in uids:
                try:
                    return read_dicom_series(info), found
                except InputImageError as exc:
                    if seg is None:
                        raise
                    image, notes = _covered_slices_image(info.files, seg, str(exc))
                    if messages is not None:
                        messages.extend(notes)
                    return image, found
            if info.modality != "SEG":
                found.append(f"{info.describe()} in {folder}")
    return None, found


def _frame_positions(seg) -> np.ndarray:
    n = int(getattr(seg, "NumberOfFrames", 1) or 1)
    out = []
    for f in range(n):
        pos = _functional(seg, f, "PlanePositionSequence")
        if pos is not None:
            out.append([float(v) for v in pos.ImagePositionPatient])
    return np.asarray(out, dtype=float).reshape(-1, 3)


def _covered_slices_image(files: Sequence[str], seg, why: str) -> tuple[Image, list[str]]:
    """The CT slices a SEG's frames lie on, as a regular volume (largest evenly spaced run).

    For referenced series that are not regular volumes themselves (missing slices, one slice).
    Raises InputImageError when no frame lies on any of the series' slices.
    """
    headers = [_dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.asarray([float(v) for v in headers[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    pos = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in headers]) @ normal
    order = np.argsort(pos)
    headers, pos, files = [headers[i] for i in order], pos[order], [files[i] for i in order]
    frame_pos = _frame_positions(seg) @ normal
    covered = [i for i, p in enumerate(pos) if np.any(np.abs(frame_pos - p) < 0.05)]
    if not covered:
        raise InputImageError(f"{why}; and none of the SEG's frames lies on one of its slices")
    # Split the sorted slices into evenly spaced runs; keep the run holding most covered slices.
    runs, start = [], 0
    for i in range(2, len(pos)):
        first_step = pos[start + 1] - pos[start]
        if abs((pos[i] - pos[i - 1]) - first_step) > 0.01 * first_step + 1e-3:
            runs.append((start, i))
            start = i - 1
    runs.append((start, len(pos)))
    best = max(runs, key=lambda r: sum(r[0] <= c < r[1] for c in covered))
    inside = [c for c in covered if best[0] <= c < best[1]]
    lo, hi = min(inside), max(inside) + 1
    left_out = len(covered) - len(inside)
    import pydicom

    chosen = [pydicom.dcmread(files[i]) for i in range(lo, hi)]
    arr = np.stack([np.asarray(d.pixel_array, dtype=np.float32) * float(getattr(d, "RescaleSlope", 1) or 1)
                    + float(getattr(d, "RescaleIntercept", 0) or 0) for d in chosen])
    first = chosen[0]
    ps = [float(v) for v in first.PixelSpacing]
    if hi - lo > 1:
        step = float(pos[lo + 1] - pos[lo])
    else:
        step = float(getattr(first, "SpacingBetweenSlices", None) or getattr(first, "SliceThickness", None) or 1.0)
    slice_dir = normal if step > 0 else -normal
    d_zyx = np.zeros((3, 3))
    d_zyx[:, 0] = slice_dir[::-1]
    d_zyx[:, 1] = iop[3:][::-1]
    d_zyx[:, 2] = iop[:3][::-1]
    ipp = np.asarray([float(v) for v in first.ImagePositionPatient])
    geom = Geometry(arr.shape, (abs(step), ps[0], ps[1]), tuple(ipp[::-1]), tuple(d_zyx.reshape(-1)))
    from .dicom import _date_of  # noqa: PLC2701 - the same date rule as the series reader

    def get(tag: str) -> str:
        group, elem = (int(x, 16) for x in tag.split("|"))
        el = first.get((group, elem))
        return str(el.value) if el is not None else ""

    image = Image(arr, geom, name=_safe(f"{Path(files[0]).parent.name}_s{getattr(first, 'SeriesNumber', 'x')}"),
                  acquisition_date=_date_of(get), source=str(Path(files[0]).parent),
                  modality=str(getattr(first, "Modality", "") or "") or None,
                  metadata={"series_instance_uid": str(first.SeriesInstanceUID),
                            "series_description": str(getattr(first, "SeriesDescription", "")),
                            "study_instance_uid": str(getattr(first, "StudyInstanceUID", "")),
                            "patient_id": str(getattr(first, "PatientID", "")),
                            "frame_of_reference_uid": str(getattr(first, "FrameOfReferenceUID", "")),
                            "folder": str(Path(files[0]).parent), "n_files": hi - lo, "partial_series": True})
    notes = [f"the CT is not a regular volume ({why}); opened the {hi - lo} slice(s) the SEG's frames lie on"]
    if left_out:
        notes.append(f"{left_out} slice(s) with SEG frames are not evenly spaced with the others: their frames are "
                     "left out")
    return image, notes


def _frame_of_reference_of(image: Image) -> str | None:
    from .dicom import list_dicom_series

    md = image.metadata or {}
    if md.get("frame_of_reference_uid"):
        return str(md["frame_of_reference_uid"])
    folder, uid = md.get("folder"), md.get("series_instance_uid")
    if not folder or not uid:
        return None
    infos = [i for i in list_dicom_series(folder) if i.uid == uid]
    if not infos:
        return None
    ds = _dcmread(infos[0].files[0], stop_before_pixels=True, specific_tags=["FrameOfReferenceUID"])
    return str(getattr(ds, "FrameOfReferenceUID", "")) or None


def _functional(seg, frame_index: int, group: str):
    """A functional group item for a frame: per-frame first, else shared."""
    pf = getattr(seg, "PerFrameFunctionalGroupsSequence", None)
    if pf is not None and len(pf) > frame_index:
        item = pf[frame_index]
        if group in item:
            return item[group].value[0]
    shared = getattr(seg, "SharedFunctionalGroupsSequence", None)
    if shared and group in shared[0]:
        return shared[0][group].value[0]
    return None


def _mask_from_pieces(geom: Geometry, parts: list[tuple[int, int, int, np.ndarray]]) -> LesionMask:
    """A lesion mask from 2D pieces ``(z, row0, col0, bool array)`` (pieces on one slice are OR-ed)."""
    if not parts:
        return LesionMask.empty(geom)
    lo = np.array([min(p[0] for p in parts), min(p[1] for p in parts), min(p[2] for p in parts)])
    hi = np.array([max(p[0] for p in parts) + 1, max(p[1] + p[3].shape[0] for p in parts),
                   max(p[2] + p[3].shape[1] for p in parts)])
    crop = np.zeros(tuple(hi - lo), dtype=bool)
    for k, r, c, part in parts:
        crop[k - lo[0], r - lo[1]:r - lo[1] + part.shape[0], c - lo[2]:c - lo[2] + part.shape[1]] |= part
    return LesionMask.from_crop(geom, tuple(int(v) for v in lo), crop)


def _frame_source_uids(seg) -> set[str]:
    """The CT instances the SEG's frames were derived from (per-frame DerivationImageSequence)."""
    out = set()
    for item in getattr(seg, "PerFrameFunctionalGroupsSequence", []) or []:
        for der in getattr(item, "DerivationImageSequence", []) or []:
            for src in getattr(der, "SourceImageSequence", []) or []:
                out.add(str(src.ReferencedSOPInstanceUID))
    return out


def _check_frames_sources(seg, image: Image, seg_path: Path) -> None:
    """Every CT slice the frames were made on must be in the series as read (not missing, not unreadable)."""
    from .dicom import list_dicom_series

    md = image.metadata or {}
    if md.get("partial_series") or not md.get("folder") or not md.get("series_instance_uid"):
        return
    wanted = _frame_source_uids(seg)
    if not wanted:
        return
    infos = [i for i in list_dicom_series(md["folder"]) if i.uid == md["series_instance_uid"]]
    if not infos:
        return
    import pydicom

    present = set()
    for f in infos[0].files:
        try:
            present.add(str(pydicom.dcmread(f, stop_before_pixels=True,
                                            specific_tags=["SOPInstanceUID"]).SOPInstanceUID))
        except Exception:  # noqa: BLE001 - an unreadable slice is simply not present
            continue
    if len(present) != image.shape[0]:
        present = set()  # the image holds fewer slices than readable files: trust nothing but the grid
    missing = wanted - present
    if missing and present:
        raise InputImageError(
            f"{seg_path.name}: {len(missing)} of the {len(wanted)} CT slice(s) its frames were made on are not in "
            f"{image.name} as read ({image.shape[0]} slices: a slice file is missing or unreadable); the masks "
            "cannot be placed voxel for voxel. Restore the series' files and open it again")


def read_dicom_seg(
    seg_path: str | os.PathLike,
    ct: Image | str | os.PathLike | None = None,
    *,
    overlap_winner: str = "later",
    fractional_threshold: float = 0.5,
) -> SegImport:
    """Read a DICOM-SEG and place each segment on its CT.

    Parameters
    ----------
    seg_path : path
        The SEG file.
    ct : Image, path or None
        The CT: an Image already read, a DICOM folder/file, or None to look for the referenced
        series next to the SEG (its folder, and the folders under its parent).
    overlap_winner : ``"later"`` or ``"earlier"``
        Which segment the display label map shows where segments overlap (each lesion keeps its
        own whole mask either way).
    fractional_threshold : float
        FRACTIONAL SEGs are made binary at this fraction of MaximumFractionalValue (reported).

    Raises
    ------
    InputImageError
        Unreadable/truncated file, not a SEG, referenced series not found, different frame of
        reference, frames not on the CT's slice planes (orientation, pixel spacing, position).
    """
    import highdicom as hd

    seg_path = Path(seg_path)
    if not seg_path.is_file():
        raise InputImageError(f"no such SEG file: {seg_path}")
    header = _dcmread(seg_path, stop_before_pixels=True)
    if str(getattr(header, "SOPClassUID", "")) not in SEG_SOP_CLASS_UIDS:
        raise InputImageError(f"{seg_path.name} is not a DICOM-SEG (SOP class {getattr(header, 'SOPClassUID', '?')}, "
                              f"modality {getattr(header, 'Modality', '?')})")
    try:
        seg = hd.seg.segread(str(seg_path))
    except Exception as exc:  # noqa: BLE001 - a damaged file: say so in one line
        raise InputImageError(f"{seg_path.name}: the SEG cannot be decoded ({type(exc).__name__}: {exc}); "
                              "the file may be truncated") from None
    messages: list[str] = []
    ref_uids = _ref_series_uids(seg)
    if isinstance(ct, Image):
        image = ct
        if ref_uids and image.metadata.get("series_instance_uid") and \
                image.metadata["series_instance_uid"] not in ref_uids:
            messages.append(f"{seg_path.name} references series {', '.join(ref_uids)}, not the given image's "
                            f"{image.metadata['series_instance_uid']}; placed by patient-space position")
    else:
        folders = [Path(ct)] if ct is not None else _candidate_folders(seg_path)
        if ct is not None and Path(ct).is_file():
            folders = [Path(ct).parent]
        if not ref_uids:
            raise InputImageError(f"{seg_path.name} names no referenced series (ReferencedSeriesSequence); "
                                  "open its CT and give it explicitly")
        image, found = _find_series(ref_uids, folders, seg, messages)
        if image is None:
            where = ", ".join(str(f) for f in folders[:4]) + (" ..." if len(folders) > 4 else "")
            other = ("; found instead: " + "; ".join(found[:4])) if found else ""
            raise InputImageError(f"{seg_path.name}: its CT series {', '.join(ref_uids)} is not in {where}{other}. "
                                  "Put the SEG next to its CT series or give the CT folder")
    seg_for = str(getattr(seg, "FrameOfReferenceUID", "") or "")
    ct_for = _frame_of_reference_of(image)
    if seg_for and ct_for and seg_for != ct_for:
        raise InputImageError(f"{seg_path.name} is on frame of reference {seg_for} but its CT {image.name} is on "
                              f"{ct_for}: the masks cannot be placed on this CT")
    _check_frames_sources(seg, image, seg_path)
    # ------------------------------------------------------------ segments
    seg_type = str(getattr(seg, "SegmentationType", "BINARY")).upper()
    max_frac = float(getattr(seg, "MaximumFractionalValue", 255) or 255)
    descs: dict[int, LesionDescription] = {}
    number_to_id: dict[int, int] = {}
    items = list(getattr(seg, "SegmentSequence", []))
    parsed = [lesion_id_from_tracking_id(getattr(it, "TrackingID", None)) for it in items]
    use_tracking = all(p is not None for p in parsed) and len(set(parsed)) == len(parsed)
    for it, pid in zip(items, parsed, strict=True):
        number = int(it.SegmentNumber)
        lid = pid if use_tracking else number
        number_to_id[number] = lid
        site = None
        regions = getattr(it, "AnatomicRegionSequence", None)
        if regions:
            site = str(regions[0].CodeMeaning)
        algos = getattr(it, "SegmentationAlgorithmIdentificationSequence", None)
        algo = algos[0] if algos else None
        params = {}
        if algo is not None and getattr(algo, "AlgorithmParameters", None):
            params = dict(p.split("=", 1) for p in str(algo.AlgorithmParameters).split(",") if "=" in p)
        descs[lid] = LesionDescription(
            lesion_id=lid,
            label=str(getattr(it, "SegmentLabel", "") or ""),
            site=site,
            tracking_id=str(getattr(it, "TrackingID", "") or ""),
            tracking_uid=str(getattr(it, "TrackingUID", "") or ""),
            algorithm_type=str(getattr(it, "SegmentAlgorithmType", "MANUAL") or "MANUAL"),
            engine=str(algo.AlgorithmName) if algo is not None else None,
            engine_version=str(algo.AlgorithmVersion) if algo is not None else None,
            model=params.get("model"),
            segment_number=number,
            extra={"property_type": str(it.SegmentedPropertyTypeCodeSequence[0].CodeMeaning)
                   if getattr(it, "SegmentedPropertyTypeCodeSequence", None) else None},
        )
    # Per segment, the 2D pieces it has on each slice (memory follows the frames, not segments x grid:
    # IDC's SEGs can hold 100+ segments on a 512 x 512 x 500 CT).
    pieces: dict[int, list[tuple[int, int, int, np.ndarray]]] = {lid: [] for lid in descs}
    geom = image.geometry
    d_xyz = geom.direction_matrix[::-1, ::-1]
    n_frames = int(getattr(seg, "NumberOfFrames", 1) or 1)
    outside = 0
    for f in range(n_frames):
        orient = _functional(seg, f, "PlaneOrientationSequence")
        measures = _functional(seg, f, "PixelMeasuresSequence")
        position = _functional(seg, f, "PlanePositionSequence")
        if orient is None or position is None:
            raise InputImageError(f"{seg_path.name}: frame {f + 1} has no plane position/orientation; "
                                  "only SEGs of patient-space CT frames are supported")
        iop = np.asarray([float(v) for v in orient.ImageOrientationPatient])
        if not (np.allclose(iop[:3], d_xyz[:, 0], atol=1e-3) and np.allclose(iop[3:], d_xyz[:, 1], atol=1e-3)):
            raise InputImageError(f"{seg_path.name}: frame {f + 1} is oriented {iop.round(4).tolist()}, not on the "
                                  f"slice planes of {image.name}; resampling a SEG is not supported")
        if measures is not None and getattr(measures, "PixelSpacing", None) is not None:
            ps = [float(v) for v in measures.PixelSpacing]
            if not np.allclose(ps, geom.spacing[1:], rtol=1e-3, atol=1e-4):
                raise InputImageError(f"{seg_path.name}: pixel spacing {ps} mm differs from the CT's "
                                      f"{list(geom.spacing[1:])} mm")
        ipp = np.asarray([float(v) for v in position.ImagePositionPatient])
        idx = geom.world_to_index(ipp[::-1])
        k, r0, c0 = (int(round(v)) for v in idx)
        if np.max(np.abs(idx - np.round(idx))) > 0.05:
            raise InputImageError(f"{seg_path.name}: frame {f + 1} sits at voxel {idx.round(3).tolist()} of "
                                  f"{image.name}, between its voxels (a missing or unreadable slice file changes "
                                  "the series' grid)")
        try:
            frame = np.asarray(seg.get_stored_frame(f + 1))
        except Exception as exc:  # noqa: BLE001 - damaged pixel data: one clear line
            raise InputImageError(f"{seg_path.name}: frame {f + 1} of {n_frames} cannot be decoded ({exc}); the file "
                                  "is probably truncated") from None
        if seg_type == "FRACTIONAL":
            frame_mask = frame.astype(np.float64) >= fractional_threshold * max_frac
        elif seg_type == "LABELMAP":
            frame_mask = None
        else:
            frame_mask = frame.astype(bool)
        rows, cols = frame.shape[:2]
        if not (0 <= k < geom.shape[0]):
            outside += 1
            continue
        rs, re_ = max(r0, 0), min(r0 + rows, geom.shape[1])
        cs, ce = max(c0, 0), min(c0 + cols, geom.shape[2])
        if rs >= re_ or cs >= ce:
            outside += 1
            continue
        sub = (slice(rs - r0, re_ - r0), slice(cs - c0, ce - c0))
        if seg_type == "LABELMAP":
            for number, lid in number_to_id.items():
                part = frame[sub] == number
                if part.any():
                    pieces[lid].append((k, rs, cs, part))
            continue
        ident = _functional(seg, f, "SegmentIdentificationSequence")
        number = int(ident.ReferencedSegmentNumber) if ident is not None else 1
        if number not in number_to_id:
            messages.append(f"frame {f + 1} names segment {number}, which the SEG does not describe; skipped")
            continue
        part = frame_mask[sub]
        if part.any():
            pieces[number_to_id[number]].append((k, rs, cs, part))
    if outside:
        messages.append(f"{outside} frame(s) lie outside {image.name}'s volume and were left out")
    if seg_type == "FRACTIONAL":
        messages.append(f"FRACTIONAL SEG: masks are the voxels >= {fractional_threshold:g} of the maximum "
                        f"({int(max_frac)})")
    lesions = {}
    for lid, parts in pieces.items():
        mask = _mask_from_pieces(geom, parts)
        status = "ok" if not mask.is_empty else "empty"
        d = descs[lid]
        lesions[lid] = LesionResult(lid, mask, status=status,
                                    messages=[] if status == "ok" else [f"segment {d.segment_number} is empty"],
                                    provenance={"source": str(seg_path), "segment_number": d.segment_number,
                                                "algorithm_type": d.algorithm_type, "engine": d.engine,
                                                "engine_version": d.engine_version, "model": d.model,
                                                "site": d.site})
    pairs = overlaps(lesions)
    for a, b, n in pairs:
        messages.append(f"segments '{descs[a].label}' (id {a}) and '{descs[b].label}' (id {b}) overlap in {n} voxels; "
                        "each keeps its own mask")
    if overlap_winner not in ("later", "earlier"):
        raise ValueError("overlap_winner must be 'later' or 'earlier'")
    order = sorted(lesions, key=lambda i: descs[i].segment_number or 0)
    if overlap_winner == "earlier":
        order = order[::-1]
    labels = compose_label_map([lesions[i] for i in order], geom, name=f"{image.name} lesions")
    return SegImport(
        image=image,
        lesions=lesions,
        descriptions=descs,
        labels=labels,
        overlaps=pairs,
        messages=messages,
        seg_path=seg_path,
        seg_series_uid=str(getattr(seg, "SeriesInstanceUID", "")),
        seg_sop_instance_uid=str(getattr(seg, "SOPInstanceUID", "")),
        referenced_series_uid=ref_uids[0] if ref_uids else str(image.metadata.get("series_instance_uid", "")),
    )


@dataclass
class SegFolderImport:
    """Everything a folder of CT series and SEGs holds: each SEG on its CT, and what failed."""

    segs: list[SegImport]
    images: list[Image]  # every usable CT series (those without a SEG too)
    problems: list[str]


def read_dicom_seg_folder(folder: str | os.PathLike) -> SegFolderImport:
    """Read every SEG under ``folder`` onto its CT series (also under ``folder``).

    A SEG whose series is missing, whose frame of reference differs, or which cannot be read is
    listed in ``problems``; the other SEGs and every usable CT series still load. Raises
    InputImageError only when nothing at all could be read.
    """
    from .dicom import DicomSeriesWarning, is_dicom_file, read_dicom_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(f"{folder} is not a folder")
    seg_files = find_dicom_segs(folder)
    problems: list[str] = []
    images: list[Image] = []
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if len(Path(root).parts) - base >= 4:
            dirs[:] = []
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if not any(is_dicom_file(Path(root) / f) for f in files):
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                images.extend(read_dicom_folder(root))
            except InputImageError as exc:
                # The SEG files themselves show up as one-file "series": only the others are problems.
                other = [part for part in str(exc).split(" | ") if "(SEG," not in part]
                if other and not (len(other) == 1 and "no usable 3D series" in other[0] and " | " in str(exc)):
                    problems.append(" | ".join(other))
        for w in caught:
            text = str(w.message)
            if issubclass(w.category, DicomSeriesWarning) and "(SEG," not in text:
                problems.append(text)
    by_uid = {img.metadata.get("series_instance_uid"): img for img in images if img.metadata.get("series_instance_uid")}
    segs: list[SegImport] = []
    for path in seg_files:
        try:
            header = _dcmread(path, stop_before_pixels=True)
            refs = _ref_series_uids(header)
            image = next((by_uid[u] for u in refs if u in by_uid), None)
            if image is None:
                raise InputImageError(f"{path.name}: its CT series {', '.join(refs) or '(none named)'} is not in "
                                      f"{folder}")
            segs.append(read_dicom_seg(path, image))
        except InputImageError as exc:
            problems.append(str(exc))
    if not segs and not images:
        raise InputImageError(f"{folder}: nothing could be read. " + " | ".join(problems))
    return SegFolderImport(segs, images, problems)


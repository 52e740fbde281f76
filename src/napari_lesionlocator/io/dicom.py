"""DICOM folders: one :class:`~..core.image.Image` per series, slices sorted by position.

Reading uses SimpleITK's GDCM series reader (which applies RescaleSlope/Intercept, so CT comes
out in HU). Each image carries, in ``metadata``: ``series_instance_uid``, ``series_description``,
``series_number``, ``study_instance_uid``, ``patient_id``, ``n_files``, ``folder``; and in its
fields ``modality`` and ``acquisition_date`` (ISO; AcquisitionDate, else SeriesDate, StudyDate,
ContentDate).

Series that are not usable 3D volumes (a single slice such as a scout, unequal slice spacing,
missing slices, gantry tilt) are reported, not silently reformatted: :func:`read_dicom_folder`
skips them with a warning when other series are usable and raises :class:`InputImageError`
listing every series otherwise.

:func:`write_dicom_series` writes a minimal, valid CT/MR/PT series with pydicom (tests, demos).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError
from ..core.geometry import Geometry
from ..core.image import Image
from .images import geometry_of_sitk

__all__ = [
    "DicomSeriesInfo",
    "DicomSeriesWarning",
    "is_dicom_file",
    "list_dicom_series",
    "read_dicom_series",
    "read_dicom_folder",
    "write_dicom_series",
]


class DicomSeriesWarning(UserWarning):
    """A series in a DICOM folder was skipped (not a usable 3D volume)."""


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file has the DICOM preamble magic ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One series found in a folder (from the first file's header; no pixels read)."""

    uid: str
    files: tuple[str, ...]
    modality: str | None
    description: str
    series_number: str
    acquisition_date: str | None
    damaged: tuple[tuple[str, str], ...] = ()  # (file, reason): DICOM files of the folder that no series could use

    def describe(self) -> str:
        date = self.acquisition_date or "no date"
        desc = self.description or "no description"
        return (
            f"series {self.series_number or '?'} '{desc}' ({self.modality or 'no modality'}, {date}, "
            f"{len(self.files)} files, UID {self.uid})"
        )


_TAGS = {
    "modality": "0008|0060",
    "description": "0008|103e",
    "series_number": "0020|0011",
    "acquisition_date": "0008|0022",
    "series_date": "0008|0021",
    "study_date": "0008|0020",
    "content_date": "0008|0023",
    "series_uid": "0020|000e",
    "study_uid": "0020|000d",
    "patient_id": "0010|0020",
    "ipp": "0020|0032",
    "iop": "0020|0037",
}


def _sitk():
    import SimpleITK as sitk

    return sitk


def _tag(get, key: str) -> str:
    try:
        return str(get(_TAGS[key])).strip().rstrip("\x00").strip()
    except RuntimeError:
        return ""


def _iso_date(raw: str) -> str | None:
    raw = raw.strip()
    if re.fullmatch(r"\d{8}", raw):
        return f"{raw[:4]}-{raw[4:6]}-{raw[6:]}"
    return None


def _date_of(get) -> str | None:
    for key in ("acquisition_date", "series_date", "study_date", "content_date"):
        date = _iso_date(_tag(get, key))
        if date:
            return date
    return None


def _header_getter(filename: str):
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(filename)
    reader.ReadImageInformation()

    def get(key: str) -> str:
        return reader.GetMetaData(key) if reader.HasMetaDataKey(key) else ""

    return get


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """Every DICOM series directly in ``folder`` (not recursive), files sorted by slice position.

    Raises
    ------
    InputImageError
        When the folder does not exist or holds no DICOM series.
    """
    sitk = _sitk()
    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(f"{folder} is not a folder")
    reader = sitk.ImageSeriesReader()
    uids = reader.GetGDCMSeriesIDs(str(folder))
    if not uids:
        raise InputImageError(f"{folder} holds no DICOM series (no readable DICOM image files directly inside it)")
    out = []
    series_files = {str(Path(f)) for uid in uids for f in reader.GetGDCMSeriesFileNames(str(folder), uid)}
    damaged = _damaged_files(folder, series_files)
    for uid in uids:
        files = tuple(reader.GetGDCMSeriesFileNames(str(folder), uid))
        get = _header_getter(files[0])
        out.append(
            DicomSeriesInfo(
                uid=uid,
                files=files,
                modality=_tag(get, "modality") or None,
                description=_tag(get, "description"),
                series_number=_tag(get, "series_number"),
                acquisition_date=_date_of(get),
                damaged=damaged,
            )
        )
    return sorted(out, key=lambda s: (_int_or_inf(s.series_number), s.uid))


def _damaged_reason(path: Path) -> str | None:
    """Why a DICOM file that GDCM left out of every series cannot be used, or None when it is simply
    not an image (DICOMDIR, SEG, SR, RT structures, presentation states...)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        return f"cannot be parsed ({type(exc).__name__}: {str(exc)[:80]})"
    if "PixelData" not in ds:
        if "Rows" in ds or "Modality" not in ds:  # an image whose file ends before its pixels
            return "truncated: the file ends before its pixel data"
        return None
    if not {"Rows", "Columns", "BitsAllocated"} <= set(ds.dir()):
        return None
    if str(getattr(ds, "Modality", "")).upper() in ("SEG", "SR", "RTSTRUCT", "PR", "KO"):
        return None
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and getattr(ts, "is_compressed", False):
        return None  # encapsulated pixels: their length is not fixed
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    need = int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1) or 1) * frames \
        * int(ds.BitsAllocated) // 8
    have = len(ds.PixelData)
    if have < need:
        return f"truncated: its pixel data holds {have} of {need} bytes"
    return None


def _damaged_files(folder: Path, series_files: set[str], limit: int = 2000) -> tuple[tuple[str, str], ...]:
    """DICOM files directly in ``folder`` that belong to no series GDCM found, with the reason."""
    out = []
    for n, p in enumerate(sorted(folder.iterdir())):
        if n >= limit:
            break
        if not p.is_file() or p.name.startswith(".") or p.name.upper() == "DICOMDIR" or str(p) in series_files:
            continue
        if not (is_dicom_file(p) or p.suffix.lower() == ".dcm"):
            continue
        reason = _damaged_reason(p)
        if reason is not None:
            out.append((p.name, reason))
    return tuple(out)


def _damaged_note(info: DicomSeriesInfo) -> str:
    if not info.damaged:
        return ""
    shown = "; ".join(f"{name} {why}" for name, why in info.damaged[:5])
    more = f" (and {len(info.damaged) - 5} more)" if len(info.damaged) > 5 else ""
    return (f". The folder holds {len(info.damaged)} DICOM file(s) that could not be read: {shown}{more}; "
            "copy them again (a missing slice makes the spacing look uneven)")


def _int_or_inf(text: str) -> float:
    try:
        return float(int(text))
    except ValueError:
        return float("inf")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "series"


def _check_slice_positions(info: DicomSeriesInfo, ipps: list[str], iop: str) -> float:
    """Check even spacing along the slice normal; return the slice spacing (mm)."""
    try:
        pos = np.array([[float(v) for v in p.split("\\")] for p in ipps])
        cos = np.array([float(v) for v in iop.split("\\")])
    except ValueError:
        raise InputImageError(f"{info.describe()}: slice position/orientation tags are missing or unreadable") from None
    if pos.shape != (len(ipps), 3) or cos.shape != (6,):
        raise InputImageError(f"{info.describe()}: slice position/orientation tags are malformed")
    normal = np.cross(cos[:3], cos[3:])
    along = pos @ normal
    steps = np.diff(along)
    if np.any(np.abs(steps) < 1e-3):
        raise InputImageError(f"{info.describe()}: several slices share one position (duplicates or several "
                              "acquisitions in one series); split the series first")
    spacing = float(np.median(np.abs(steps)))
    if np.max(np.abs(np.abs(steps) - spacing)) > max(0.01 * spacing, 1e-3):
        raise InputImageError(
            f"{info.describe()}: slices are not evenly spaced (steps {np.round(np.abs(steps).min(), 3)} to "
            f"{np.round(np.abs(steps).max(), 3)} mm: missing slices or variable thickness); "
            "resample it to a regular grid first"
        )
    # Positions must move along the normal: otherwise the stack is sheared (gantry tilt).
    step_vec = pos[-1] - pos[0]
    cos_angle = abs(step_vec @ normal) / (np.linalg.norm(step_vec) + 1e-12)
    if cos_angle < np.cos(np.deg2rad(0.5)):
        angle = float(np.rad2deg(np.arccos(min(1.0, cos_angle))))
        raise InputImageError(
            f"{info.describe()}: the slices are sheared by {angle:.1f} degrees (gantry tilt); "
            "resample it to an orthogonal grid first"
        )
    return spacing


def read_dicom_series(info: DicomSeriesInfo, *, name: str | None = None) -> Image:
    """Read one series (see :func:`list_dicom_series`) as a float32 Image with its DICOM metadata.

    Raises
    ------
    InputImageError
        Single-slice series, uneven spacing/missing slices, gantry tilt, or unreadable pixels.
    """
    sitk = _sitk()
    if len(info.files) < 2:
        frames = _header_getter(info.files[0])("0028|0008").strip()
        if frames and frames.isdigit() and int(frames) > 1:
            raise InputImageError(
                f"{info.describe()}: one multi-frame (enhanced) file with {frames} frames; this reader needs "
                "one file per slice (convert it, e.g. with dcm2niix, or export classic DICOM)"
            )
        raise InputImageError(f"{info.describe()}: a single slice (e.g. a scout/localizer), not a 3D volume")
    from .limits import check_memory, check_spacing

    head = _header_getter(info.files[0])
    try:
        rows, cols = int(head("0028|0010").strip() or 0), int(head("0028|0011").strip() or 0)
        bits = int(head("0028|0100").strip() or 16)
    except ValueError:
        rows = cols = 0
        bits = 16
    raw_spacing = head("0028|0030").strip()
    if raw_spacing:  # GDCM takes a PixelSpacing of 0 as 1 mm
        try:
            check_spacing(f"{info.describe()}: PixelSpacing", [float(v) for v in raw_spacing.split("\\")])
        except ValueError:
            raise InputImageError(f"{info.describe()}: PixelSpacing {raw_spacing!r} is not a pair of numbers") \
                from None
    if rows and cols:  # refuse before reading what would not fit in memory
        check_memory(info.describe(), (cols, rows, len(info.files)), max(1, bits // 8))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(info.files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"{info.describe()}: cannot read the pixels ({str(exc).strip().splitlines()[-1]})") \
            from None
    n = len(info.files)
    ipps = [reader.GetMetaData(i, _TAGS["ipp"]) if reader.HasMetaDataKey(i, _TAGS["ipp"]) else "" for i in range(n)]
    iop = reader.GetMetaData(0, _TAGS["iop"]) if reader.HasMetaDataKey(0, _TAGS["iop"]) else ""
    slice_spacing = _check_slice_positions(info, ipps, iop)
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{info.describe()}: not a single-channel 3D volume (size {img.GetSize()})")
    if img.GetSize()[2] < 2:
        raise InputImageError(f"{info.describe()}: a single slice, not a 3D volume")
    check_spacing(info.describe(), img.GetSpacing())

    def get(key: str) -> str:
        return reader.GetMetaData(0, key) if reader.HasMetaDataKey(0, key) else ""

    folder = Path(info.files[0]).parent
    array = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    default_name = _safe_name(f"{folder.name}_s{info.series_number or 'x'}_{info.description}")
    return Image(
        array=array,
        geometry=geometry_of_sitk(img),
        name=name or default_name,
        acquisition_date=_date_of(get),
        source=str(folder),
        modality=info.modality,
        metadata={
            "series_instance_uid": info.uid,
            "series_description": info.description,
            "series_number": info.series_number,
            "study_instance_uid": _tag(get, "study_uid"),
            "patient_id": _tag(get, "patient_id"),
            "n_files": n,
            "slice_spacing_mm": slice_spacing,
            "folder": str(folder),
        },
    )


def read_dicom_folder(path: str | os.PathLike) -> list[Image]:
    """Read every usable 3D series of a DICOM folder, one Image per series (ordered by series number).

    A path to a single DICOM file reads the series that file belongs to (from its folder).
    Unusable series are skipped with a :class:`DicomSeriesWarning` when at least one series is
    usable; otherwise an :class:`InputImageError` lists every series and why it was refused.
    Image names are unique (``<folder>_s<series number>_<description>``, suffixed when needed).
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"no such file or folder: {path}")
    only_uid = None
    if path.is_file():
        if not is_dicom_file(path):
            raise InputImageError(f"{path.name} is not a DICOM file")
        only_uid = _tag(_header_getter(str(path)), "series_uid")
        path = path.parent
    infos = list_dicom_series(path)
    if only_uid:
        infos = [i for i in infos if i.uid == only_uid] or infos
    images: list[Image] = []
    problems: list[str] = []
    for info in infos:
        try:
            images.append(read_dicom_series(info))
        except InputImageError as exc:
            problems.append(str(exc) + _damaged_note(info))
    if images and infos and infos[0].damaged:
        warnings.warn(_damaged_note(infos[0]).lstrip(". "), DicomSeriesWarning, stacklevel=2)
    if not images:
        raise InputImageError(f"{path}: no usable 3D series. " + " | ".join(problems))
    for msg in problems:
        warnings.warn(f"skipped {msg}", DicomSeriesWarning, stacklevel=2)
    seen: dict[str, int] = {}
    for img in images:
        count = seen.get(img.name, 0)
        seen[img.name] = count + 1
        if count:
            img.name = f"{img.name}_{count + 1}"
    return images


def describe_series(images: list[Image]) -> str:
    """One line per series image, for messages asking the user to pick one."""
    lines = []
    for i, img in enumerate(images):
        md = img.metadata
        lines.append(
            f"[{i}] {img.name}: {img.modality or 'no modality'}, {img.acquisition_date or 'no date'}, "
            f"'{md.get('series_description', '')}', {img.shape[0]} slices"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ writing
def set_image_plane(ds, geom: Geometry, k: int, *, signed: bool) -> None:
    """Image Plane and 16-bit monochrome Image Pixel attributes of slice ``k`` of ``geom`` on ``ds``.

    DICOM orientation: the row direction is the world direction of x (array axis 2), the column
    direction that of y (axis 1), both in LPS x, y, z order; our direction matrix is (z, y, x) on
    both sides. PixelSpacing is (between rows = y, between columns = x).
    """
    d_xyz = geom.direction_matrix[::-1, ::-1]
    row_cos, col_cos = d_xyz[:, 0], d_xyz[:, 1]
    sp_z, sp_y, sp_x = geom.spacing
    ds.ImagePositionPatient = [float(v) for v in geom.index_to_world(np.array([k, 0.0, 0.0]))[::-1]]
    ds.ImageOrientationPatient = [float(v) for v in (*row_cos, *col_cos)]
    ds.PixelSpacing = [float(sp_y), float(sp_x)]
    ds.SliceThickness = float(sp_z)
    ds.Rows, ds.Columns = int(geom.shape[1]), int(geom.shape[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0


def write_dicom_series(
    image: Image,
    folder: str | os.PathLike,
    *,
    modality: str = "CT",
    series_description: str = "",
    series_number: int = 1,
    acquisition_date: str | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_id: str = "ANON",
    prefix: str = "slice",
) -> list[Path]:
    """Write ``image`` as a DICOM series (one file per z slice) with its exact geometry.

    Values are rounded to int16 (CT, stored with RescaleIntercept 0 / slope 1) or uint16 (other
    modalities, values clipped at 0). ``acquisition_date`` is ISO ``YYYY-MM-DD``. Files are named
    ``<prefix>_<k>.dcm``; existing files are never replaced (OutputExistsError).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from ..core.errors import OutputExistsError
    from .atomic import atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    geom = image.geometry
    signed = modality.upper() == "CT"
    arr = np.round(np.asarray(image.array, dtype=np.float64))
    arr = np.clip(arr, -32768, 32767) if signed else np.clip(arr, 0, 65535)
    arr = arr.astype(np.int16 if signed else np.uint16)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    date = (acquisition_date or "").replace("-", "")
    paths = []
    targets = [folder / f"{prefix}_{k:04d}.dcm" for k in range(geom.shape[0])]
    for t in targets:
        if t.exists():
            raise OutputExistsError(f"{t} already exists; refusing to overwrite it")
    for k, target in enumerate(targets):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if signed else "1.2.840.10008.5.1.4.1.1.4"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientID = patient_id
        ds.PatientName = patient_id
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = int(series_number)
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = series_description
        if date:
            ds.AcquisitionDate = date
            ds.SeriesDate = date
            ds.StudyDate = date
        set_image_plane(ds, geom, k, signed=signed)
        if signed:
            ds.RescaleIntercept = 0
            ds.RescaleSlope = 1
        ds.PixelData = np.ascontiguousarray(arr[k]).tobytes()
        with atomic_write(target) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(target)
    return paths

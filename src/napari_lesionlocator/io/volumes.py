"""One entry point for "open this path": files, DICOM folders, folders of image files; plus a CT check.

* :func:`read_volumes` (what the napari reader calls) returns every 3D volume a path holds.
* :func:`read_volume` returns exactly one, and explains the choice when the path holds several.
* :func:`check_ct` says whether an image is CT in HU: from its DICOM modality when known, else
  from its value range.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError
from ..core.image import Image
from .dicom import describe_series, is_dicom_file, read_dicom_folder
from .images import case_name, is_image_path, read_image

__all__ = ["read_volumes", "read_volume", "choose_volume", "check_ct", "NotCTWarning", "looks_like_ct_hu"]


class NotCTWarning(UserWarning):
    """The image does not look like CT in Hounsfield units."""


def _folder_kind(folder: Path) -> str:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if any(is_image_path(p) for p in files):
        return "images"
    if any(is_dicom_file(p) for p in files[:50]) or any(p.suffix.lower() == ".dcm" for p in files):
        return "dicom"
    return "none"


def read_volumes(path: str | os.PathLike) -> list[Image]:
    """Every 3D volume at ``path``.

    * an image file (NIfTI, NRRD, MHA/MHD) -> ``[image]``;
    * a DICOM file -> the series it belongs to;
    * a DICOM folder -> one image per usable series (see :func:`~.dicom.read_dicom_folder`);
    * a folder of image files -> each file, sorted by name (hidden files skipped);
    * a folder without either -> every DICOM series in its sub-folders (patient/study/series
      exports), up to 4 levels down.

    Raises
    ------
    InputImageError
        Nothing readable, or any of the reasons :func:`~.images.read_image` gives.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"no such file or folder: {path}")
    if path.is_file():
        if is_image_path(path):
            return [read_image(path)]
        if is_dicom_file(path) or path.suffix.lower() == ".dcm":
            return read_dicom_folder(path)
        return [read_image(path)]  # let SimpleITK try; it raises a clear InputImageError if it cannot
    kind = _folder_kind(path)
    if kind == "images":
        files = sorted(p for p in path.iterdir() if p.is_file() and is_image_path(p) and not p.name.startswith("."))
        return _unique_names([read_image(p) for p in files])
    if kind == "dicom":
        return read_dicom_folder(path)
    if (path / "Baseline").is_dir():
        raise InputImageError(
            f"{path} looks like a study layout (Baseline/, Synthetic_Follow_Up/): open it with read_study_layout"
        )
    # Exports often nest DICOM as patient/study/series folders: read every series folder below.
    nested = _dicom_subfolders(path)
    if nested:
        return _unique_names([img for sub in nested for img in read_dicom_folder(sub)])
    raise InputImageError(f"{path} holds neither image files (.nii.gz, .nrrd, .mha, ...) nor DICOM files")


def _unique_names(images: list[Image]) -> list[Image]:
    """Suffix repeated names (``a``, ``a_2``, ...) so the volumes can share a study or a viewer."""
    taken: set[str] = set()
    for img in images:
        name, k = img.name, 1
        while name in taken:
            k += 1
            name = f"{img.name}_{k}"
        img.name = name
        taken.add(name)
    return images


def _dicom_subfolders(root: Path, max_depth: int = 4, max_folders: int = 500) -> list[Path]:
    """Sub-folders (sorted, up to ``max_depth`` levels down) that directly hold DICOM files."""
    found: list[Path] = []
    for seen, (dirpath, dirnames, _files) in enumerate(os.walk(root)):
        if seen >= max_folders:
            break
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if depth >= max_depth:
            dirnames[:] = []
        if depth and _folder_kind(Path(dirpath)) == "dicom":
            found.append(Path(dirpath))
    return sorted(found)


def read_volume(path: str | os.PathLike, *, series: int | str | None = None) -> Image:
    """Exactly one volume from ``path``.

    Parameters
    ----------
    series : int or str, optional
        When the path holds several volumes: their index in :func:`read_volumes` order, or a
        name, SeriesInstanceUID or series description.

    Raises
    ------
    InputImageError
        When the path holds several volumes and ``series`` does not pick one; the message lists them.
    """
    return choose_volume(read_volumes(path), path, series)


def choose_volume(images: list[Image], path: str | os.PathLike, series: int | str | None = None) -> Image:
    """The one volume of ``images`` (read from ``path``) that ``series`` names; see :func:`read_volume`.

    A single volume is returned whatever ``series`` says only when ``series`` is None; a string of
    digits is taken as an index.
    """
    if len(images) == 1 and series is None:
        return images[0]
    if series is None:
        raise InputImageError(
            f"{path} holds {len(images)} volumes; choose one with --series INDEX, UID or DESCRIPTION on the "
            "command line (series=... in Python):\n" + describe_series(images)
        )
    if isinstance(series, str) and series.strip().isdigit():
        series = int(series.strip())
    if isinstance(series, int):
        if 0 <= series < len(images):
            return images[series]
    else:
        for img in images:
            md = img.metadata
            if series in (img.name, md.get("series_instance_uid"), md.get("series_description"), case_name(img.name)):
                return img
    raise InputImageError(f"{path}: no volume {series!r}; it holds:\n" + describe_series(images))


# CT in HU: air is -1000, fat about -100, water 0, dense bone up to ~3000; scanners pad outside
# the field of view with -1024, -2000 or -3024. MR and PET hold non-negative values.
_CT_MIN_HU = -3100.0
_CT_MAX_HU = 40000.0  # metal/dense contrast in extended-HU scales


def looks_like_ct_hu(array: np.ndarray) -> tuple[bool, str]:
    """(verdict, reason) from the value range alone.

    CT in HU always holds some voxels below -50 (air or fat) and nothing below about -3100; a
    volume with only non-negative values is MR, PET or CT without its rescale to HU.
    """
    a = np.asarray(array)
    sample = a[:: max(1, a.shape[0] // 32), ::4, ::4] if a.ndim == 3 else a
    if sample.size == 0 or not np.isfinite(sample).any():
        return False, "the image holds no finite values"
    lo, hi = float(np.nanmin(sample)), float(np.nanmax(sample))
    if lo == hi:
        return False, f"the image is constant ({lo:g})"
    if lo < _CT_MIN_HU or hi > _CT_MAX_HU:
        return False, f"values {lo:g}..{hi:g} are outside the CT Hounsfield range"
    if lo >= -50:
        return False, (
            f"no value below -50 (range {lo:g}..{hi:g}); CT in HU holds air (-1000) or fat (-100), "
            "so this looks like MR, PET or CT without its HU rescale"
        )
    return True, f"values {lo:g}..{hi:g} look like HU"


def check_ct(image: Image, *, strict: bool = True) -> str | None:
    """Check that an image is CT in HU; return ``None`` when it is, else a message.

    The DICOM modality decides when the image has one (``CT`` passes; ``MR``, ``PT``, ... fail);
    otherwise the value range does (:func:`looks_like_ct_hu`).

    Parameters
    ----------
    strict : bool
        Raise :class:`InputImageError` on a problem (default); with ``False`` issue a
        :class:`NotCTWarning` and return the message instead (the user may go on at their risk).
    """
    modality = (image.modality or "").strip().upper()
    msg = None
    if modality and modality != "CT":
        msg = (
            f"{image.name} is {modality}, not CT: the models and HU windows here are for CT "
            f"(modality tag {modality!r})"
        )
    elif not modality:
        ok, reason = looks_like_ct_hu(image.array)
        if not ok:
            msg = f"{image.name} may not be CT in Hounsfield units: {reason}"
    if msg is None:
        return None
    if strict:
        raise InputImageError(msg)
    warnings.warn(msg, NotCTWarning, stacklevel=2)
    return msg

"""Reading and writing volumes with exact geometry (SimpleITK), atomically.

Every writer takes the geometry from the object it writes, so a mask written for an image
carries exactly that image's origin, spacing and direction.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError, OutputExistsError
from ..core.geometry import Geometry
from ..core.image import Image, LabelMap

__all__ = [
    "IMAGE_SUFFIXES",
    "case_name",
    "is_image_path",
    "read_image",
    "read_label_map",
    "write_image",
    "write_label_map",
    "atomic_output_path",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def case_name(path: str | os.PathLike) -> str:
    """File name without its image suffix (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_image_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _sitk():
    import SimpleITK as sitk

    return sitk


def _geometry_of(img) -> Geometry:
    return Geometry.from_itk(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def _read_sitk(path: Path):
    sitk = _sitk()
    if not path.exists():
        raise InputImageError(f"no such file: {path}")
    if path.is_dir():
        raise InputImageError(f"{path} is a folder; use read_dicom_series for DICOM folders")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise InputImageError(f"cannot read {path.name}: not a readable image or a corrupt/truncated file ({first})") from None
    dim = img.GetDimension()
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{path.name}: multi-component (e.g. RGB) images are not CT volumes")
    if dim == 4:
        size = img.GetSize()
        if size[3] == 1:
            img = img[:, :, :, 0]
        else:
            raise InputImageError(
                f"{path.name} is 4D ({size[3]} volumes); split it into 3D volumes (one per timepoint) first"
            )
    elif dim != 3:
        raise InputImageError(f"{path.name} is {dim}D; a 3D CT volume is needed")
    if min(img.GetSize()) < 2 and img.GetSize()[2] < 2:
        raise InputImageError(f"{path.name} holds a single slice {img.GetSize()}; a 3D CT volume is needed")
    return img


def read_image(path: str | os.PathLike, *, name: str | None = None) -> Image:
    """Read a 3D image file (NIfTI, NRRD, MHA/MHD) as float32 HU with its geometry."""
    path = Path(path)
    img = _read_sitk(path)
    array = _sitk().GetArrayFromImage(img)
    if not np.issubdtype(array.dtype, np.number):
        raise InputImageError(f"{path.name}: voxel type {array.dtype} is not numeric")
    modality = None
    if img.HasMetaDataKey("0008|0060"):
        modality = img.GetMetaData("0008|0060").strip() or None
    return Image(
        array=array.astype(np.float32, copy=False),
        geometry=_geometry_of(img),
        name=name or case_name(path),
        source=str(path),
        modality=modality,
    )


def read_label_map(path: str | os.PathLike, like: Image | None = None) -> LabelMap:
    """Read an integer label map; with ``like``, its grid must match that image's."""
    path = Path(path)
    img = _read_sitk(path)
    array = _sitk().GetArrayFromImage(img)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputImageError(f"{path.name}: a label map must hold whole numbers, found fractional values")
    if array.min() < 0:
        raise InputImageError(f"{path.name}: a label map must not hold negative values")
    labels = LabelMap(array.astype(np.uint32 if array.max() > 65535 else np.uint16), _geometry_of(img), case_name(path))
    if like is not None:
        like.geometry.require_same_grid(labels.geometry, what=f"label map {path.name} and image {like.name}")
    return labels


# ------------------------------------------------------------------ writing
def atomic_output_path(path: Path, *, overwrite: bool):
    """Context manager yielding a temp path in the target folder, renamed onto ``path`` on success."""
    from contextlib import contextmanager

    @contextmanager
    def _ctx():
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; refusing to overwrite it (use overwrite)")
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s))[:7] or path.suffix
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    return _ctx()


def _to_sitk(array: np.ndarray, geometry: Geometry):
    sitk = _sitk()
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} != geometry shape {geometry.shape}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    itk = geometry.to_itk()
    img.SetSpacing(itk["spacing"])
    img.SetOrigin(itk["origin"])
    img.SetDirection(itk["direction"])
    return img


def _write(array: np.ndarray, geometry: Geometry, path: Path, overwrite: bool) -> Path:
    sitk = _sitk()
    img = _to_sitk(array, geometry)
    with atomic_output_path(path, overwrite=overwrite) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return path


def write_image(image: Image, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write an image (int16 when it holds whole HU values in range, else float32)."""
    arr = image.array
    if np.issubdtype(arr.dtype, np.floating) and arr.size and np.all(arr == np.round(arr)) \
            and arr.min() >= -32768 and arr.max() <= 32767:
        arr = arr.astype(np.int16)
    return _write(arr, image.geometry, Path(path), overwrite)


def write_label_map(labels: LabelMap | np.ndarray, path: str | os.PathLike, *, geometry: Geometry | None = None,
                    overwrite: bool = False) -> Path:
    """Write a label map (uint8 when ids fit, else uint16/uint32) on its own grid, atomically."""
    if isinstance(labels, LabelMap):
        array, geometry = labels.array, labels.geometry
    else:
        if geometry is None:
            raise ValueError("writing a bare array needs the geometry of its source image")
        array = np.asarray(labels)
    top = int(array.max()) if array.size else 0
    dtype = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.uint32)
    return _write(array.astype(dtype), geometry, Path(path), overwrite)

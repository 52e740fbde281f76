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
    "to_sitk",
    "geometry_of_sitk",
    "WRITE_SUFFIXES",
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


def geometry_of_sitk(img) -> Geometry:
    """Geometry of a 3D SimpleITK image (its x, y, z values converted to our z, y, x order)."""
    return Geometry.from_itk(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def _first_error_line(exc: Exception) -> str:
    """The informative line of an ITK exception (they span several lines of C++ context)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    for ln in lines:
        if "ERROR" in ln or "Reason" in ln or "expected" in ln:
            return ln
    return lines[-1] if lines else "unknown error"


def _check_gzip_complete(path: Path) -> None:
    """Raise InputImageError when a .gz file is truncated or corrupt.

    ITK's NIfTI reader silently fills the missing part of a truncated ``.nii.gz`` with zeros, so
    the stream is decompressed here (in chunks, nothing kept) to find the end-of-stream marker.
    """
    import zlib

    with path.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return  # named .gz but stored plain (some tools do this); the image reader copes
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                decomp.decompress(chunk, 0)
                while decomp.unconsumed_tail:
                    decomp.decompress(decomp.unconsumed_tail, 0)
                if decomp.eof:
                    break
    except zlib.error as exc:
        raise InputImageError(f"{path.name}: corrupt gzip data ({exc}); the file is damaged, copy it again") from None
    if not decomp.eof:
        raise InputImageError(
            f"{path.name}: the gzip stream ends early (truncated file, e.g. an interrupted download or copy); "
            "copy it again"
        )


def _read_sitk(path: Path):
    sitk = _sitk()
    if not path.exists():
        raise InputImageError(f"no such file: {path}")
    if path.is_dir():
        raise InputImageError(f"{path} is a folder; use read_dicom_folder (or read_volumes) for DICOM folders")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path.name} is empty (0 bytes)")
    if path.name.lower().endswith(".gz"):
        _check_gzip_complete(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = _first_error_line(exc)
        if "Unable to determine ImageIO reader" in detail:
            raise InputImageError(
                f"{path.name} is not an image file that can be read (supported: NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, "
                "MetaImage .mha/.mhd, or a DICOM folder)"
            ) from None
        raise InputImageError(f"cannot read {path.name}: corrupt or truncated image file ({detail})") from None
    dim = img.GetDimension()
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{path.name} has {img.GetNumberOfComponentsPerPixel()} values per voxel (e.g. RGB or a vector field); "
            "a CT volume has one"
        )
    if dim == 4:
        size = img.GetSize()
        if size[3] == 1:
            img = img[:, :, :, 0]
        else:
            raise InputImageError(
                f"{path.name} is 4D ({size[3]} volumes of {size[0]}x{size[1]}x{size[2]}); "
                "split it into 3D volumes (one per timepoint) first"
            )
    elif dim != 3:
        raise InputImageError(f"{path.name} is a {dim}D image {img.GetSize()}; a 3D CT volume is needed")
    if img.GetSize()[2] < 2:
        raise InputImageError(
            f"{path.name} holds a single slice (size x, y, z = {img.GetSize()}); a 3D CT volume is needed"
        )
    return img


def read_image(path: str | os.PathLike, *, name: str | None = None) -> Image:
    """Read a 3D image file (NIfTI, NRRD, MHA/MHD) as float32 (HU for CT) with its exact geometry.

    Raises
    ------
    InputImageError
        Missing, empty, truncated or corrupt file; not an image; 2D, single-slice, 4D (several
        volumes) or multi-component images.
    """
    path = Path(path)
    img = _read_sitk(path)
    array = _sitk().GetArrayFromImage(img)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InputImageError(f"{path.name}: voxel type {array.dtype} is not a real number type")
    modality = None
    if img.HasMetaDataKey("0008|0060"):
        modality = img.GetMetaData("0008|0060").strip() or None
    return Image(
        array=array.astype(np.float32, copy=False),
        geometry=geometry_of_sitk(img),
        name=name or case_name(path),
        source=str(path),
        modality=modality,
        metadata={"file_dtype": str(array.dtype)},
    )


def read_label_map(path: str | os.PathLike, like: Image | None = None, *, name: str | None = None) -> LabelMap:
    """Read an integer instance label map (0 = background; ids kept as they are, never renumbered).

    Parameters
    ----------
    path : path
        Label file (same formats as :func:`read_image`).
    like : Image, optional
        When given, the label map must lie on exactly this image's grid.
    name : str, optional
        Layer/case name; defaults to the file name without suffix.

    Raises
    ------
    InputImageError
        Unreadable file, fractional or negative values.
    GeometryMismatchError
        (an InputImageError) when ``like`` is given and the grids differ; the message names both
        grids. :func:`napari_lesionlocator.io.resample.resample_label_map_to` can move a label map
        onto another grid when that is really wanted.
    """
    path = Path(path)
    img = _read_sitk(path)
    array = _sitk().GetArrayFromImage(img)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise InputImageError(f"{path.name}: a label map must hold whole numbers, found fractional values")
    elif not np.issubdtype(array.dtype, np.integer):
        raise InputImageError(f"{path.name}: a label map must hold integers, got voxel type {array.dtype}")
    if array.size and array.min() < 0:
        raise InputImageError(f"{path.name}: a label map must not hold negative values (min {array.min()})")
    top = int(array.max()) if array.size else 0
    dtype = np.uint16 if top <= 65535 else np.uint32
    labels = LabelMap(array.astype(dtype), geometry_of_sitk(img), name or case_name(path))
    if like is not None:
        like.geometry.require_same_grid(labels.geometry, what=f"label map {path.name} and image {like.name}")
    return labels


# ------------------------------------------------------------------ writing
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
_DETACHED = {".mhd": (".zraw", ".raw"), ".nhdr": (".raw.gz", ".raw")}


def _image_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in WRITE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(
        f"cannot write {path.name}: unknown image format; use one of {', '.join(WRITE_SUFFIXES)}"
    )


def atomic_output_path(path: Path, *, overwrite: bool):
    """Context manager yielding a temp path in the target folder, renamed onto ``path`` on success.

    Refuses (OutputExistsError) when ``path`` exists and ``overwrite`` is false, before anything
    is written. For formats whose pixels live in a second file (``.mhd``, ``.nhdr``) the yielded
    path sits in a private temp folder with the final name, and every file written there is moved
    next to ``path`` (data first, header last), so the header's reference stays valid.
    On error nothing is left behind and an existing ``path`` is untouched.
    """
    import shutil
    from contextlib import contextmanager

    path = Path(path)

    @contextmanager
    def _ctx():
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; refusing to overwrite it (use overwrite)")
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = next((s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
        if suffix in _DETACHED:
            tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            try:
                yield tmpdir / path.name
                written = sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name)  # header last
                for f in written:
                    target = path.parent / f.name
                    if target != path and target.exists() and not overwrite:
                        raise OutputExistsError(f"{target} already exists; refusing to overwrite it (use overwrite)")
                for f in written:
                    os.replace(f, path.parent / f.name)
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    return _ctx()


def to_sitk(array: np.ndarray, geometry: Geometry):
    """A SimpleITK image of ``array`` (z, y, x) carrying ``geometry`` (converted to ITK's x, y, z)."""
    sitk = _sitk()
    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} != geometry shape {geometry.shape}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    itk = geometry.to_itk()
    img.SetSpacing(itk["spacing"])
    img.SetOrigin(itk["origin"])
    img.SetDirection(itk["direction"])
    return img


_to_sitk = to_sitk


def _write(array: np.ndarray, geometry: Geometry, path: Path, overwrite: bool) -> Path:
    sitk = _sitk()
    _image_suffix(path)
    img = to_sitk(array, geometry)
    with atomic_output_path(path, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(img, str(tmp), useCompression=True)
        except RuntimeError as exc:
            raise OSError(f"could not write {path}: {_first_error_line(exc)}") from None
    return path


def write_image(image: Image, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write an image on its own grid, atomically; refuses to replace a file unless ``overwrite``.

    Float data holding only whole numbers in the int16 range (HU) is stored as int16, other float
    data as float32; integer data keeps its type. The format follows the suffix
    (:data:`WRITE_SUFFIXES`).
    """
    arr = np.asarray(image.array)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)) \
                and arr.min() >= -32768 and arr.max() <= 32767:
            arr = arr.astype(np.int16)
        else:
            arr = arr.astype(np.float32)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return _write(arr, image.geometry, Path(path), overwrite)


def write_label_map(labels: LabelMap | np.ndarray, path: str | os.PathLike, *, geometry: Geometry | None = None,
                    overwrite: bool = False) -> Path:
    """Write a label map on its grid, atomically, ids unchanged (uint8 when they fit, else uint16/uint32).

    Parameters
    ----------
    labels : LabelMap or array
        A bare (z, y, x) array needs ``geometry`` (its source image's grid).
    path : path
        Output file; the format follows the suffix (:data:`WRITE_SUFFIXES`).
    overwrite : bool
        Replace an existing file; otherwise OutputExistsError and nothing is written.
    """
    if isinstance(labels, LabelMap):
        array, geometry = labels.array, labels.geometry
    else:
        if geometry is None:
            raise ValueError("writing a bare array needs the geometry of its source image")
        array = np.asarray(labels)
    if array.dtype.kind not in "biu":
        raise ValueError(f"label maps hold integer ids, got {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"label maps must not hold negative ids (min {array.min()})")
    top = int(array.max()) if array.size else 0
    dtype = np.uint8 if top < 256 else (np.uint16 if top < 65536 else np.uint32)
    return _write(array.astype(dtype), geometry, Path(path), overwrite)

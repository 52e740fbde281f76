"""Reading and writing volumes with exact geometry (SimpleITK), atomically.

Every writer takes the geometry from the object it writes, so a mask written for an image
carries exactly that image's origin, spacing and direction.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError
from ..core.geometry import Geometry
from ..core.image import Image, LabelMap
from .limits import _gunzip_length

__all__ = [
    "IMAGE_SUFFIXES",
    "case_name",
    "is_image_path",
    "read_image",
    "read_label_map",
    "write_image",
    "write_label_map",
    "atomic_output_path",
    "verify_image_file",
    "probe_image",
    "check_image_file",
    "ImageHeader",
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


def _check_gzip_complete(path: Path) -> int | None:
    """Raise InputImageError when a .gz file is truncated or corrupt; return its decompressed length.

    ITK's NIfTI reader silently fills the missing part of a truncated ``.nii.gz`` with zeros, so
    the stream is decompressed here (in chunks, nothing kept) to find the end-of-stream marker.
    """
    import zlib

    with path.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return None  # named .gz but stored plain (some tools do this); the image reader copes
    try:
        total, complete = _gunzip_length(path)
    except zlib.error as exc:
        raise InputImageError(f"{path.name}: corrupt gzip data ({exc}); the file is damaged, copy it again") from None
    if not complete:
        raise InputImageError(
            f"{path.name}: the gzip stream ends early (truncated file, e.g. an interrupted download or copy); "
            "copy it again"
        )
    return total


def _itk_read_error(path: Path, exc: RuntimeError) -> InputImageError:
    detail = _first_error_line(exc)
    if "Unable to determine ImageIO reader" in detail:
        return InputImageError(
            f"{path.name} is not an image file that can be read (supported: NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, "
            "MetaImage .mha/.mhd, or a DICOM folder)"
        )
    if "Refusing to change spacing" in str(exc) or "space vector" in str(exc):
        spacing = re.search(r"to (\[[^\]]*\])", str(exc))
        shown = f" {spacing.group(1)}" if spacing else ""
        from ..core.errors import SpacingError

        return SpacingError(
            f"{path.name}: the header's voxel spacing{shown} is not a positive number of mm (0 or NaN); a volume "
            "or diameter measured with a made-up 1 mm would be wrong. Fix the header before using it"
        )
    return InputImageError(f"cannot read {path.name}: corrupt or truncated image file ({detail})")


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header declares (no voxel read): size and spacing in x, y, z order."""

    path: Path
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    components: int
    bytes_per_component: int
    pixel_type: str

    @property
    def voxel_bytes(self) -> int:
        return int(np.prod(self.size, dtype=np.int64)) * self.components * self.bytes_per_component


def probe_image(path: str | os.PathLike) -> ImageHeader:
    """Read only the header of an image file (InputImageError when it is not a readable image)."""
    path = Path(path)
    reader = _sitk().ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _itk_read_error(path, exc) from None
    ptype = _sitk().GetPixelIDValueAsString(reader.GetPixelIDValue())
    return ImageHeader(path, tuple(int(v) for v in reader.GetSize()), tuple(float(v) for v in reader.GetSpacing()),
                       int(reader.GetNumberOfComponents()), _SITK_BYTES.get(ptype.replace("vector of ", ""), 8), ptype)


def check_image_file(path: str | os.PathLike, *, gzip_length: int | None = None) -> ImageHeader:
    """Every check that can be made before the voxels are read (see :mod:`.limits`).

    The header must parse, a NIfTI file must hold the voxels its header declares and a spacing of
    0/NaN is refused, and reading must fit in the memory available (ResourceLimitError, with both
    figures). The napari reader and the command line both read through here.
    """
    from .limits import check_memory, check_nifti_header, check_spacing

    path = Path(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti_header(path, data_length=gzip_length)
    header = probe_image(path)
    check_spacing(path.name, header.spacing[:3])
    if path.name.lower().endswith((".nrrd", ".mha")) and _attached_raw_data(path) \
            and path.stat().st_size < header.voxel_bytes:
        from .limits import format_bytes

        dims = "x".join(str(v) for v in header.size)
        raise InputImageError(
            f"{path.name}: the header declares a {dims} volume ({format_bytes(header.voxel_bytes)} of voxels), but "
            f"the file holds only {format_bytes(path.stat().st_size)}: it is truncated or its header is wrong; "
            "nothing was read. Copy or export it again"
        )
    check_memory(path.name, header.size[:3], header.components * header.bytes_per_component
                 * int(np.prod(header.size[3:], dtype=np.int64)))
    return header


def _read_sitk(path: Path):
    sitk = _sitk()
    if not path.exists():
        raise InputImageError(f"no such file: {path}")
    if path.is_dir():
        raise InputImageError(f"{path} is a folder; use read_dicom_folder (or read_volumes) for DICOM folders")
    if path.stat().st_size == 0:
        raise InputImageError(f"{path.name} is empty (0 bytes)")
    gz_length = _check_gzip_complete(path) if path.name.lower().endswith(".gz") else None
    check_image_file(path, gzip_length=gz_length)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _itk_read_error(path, exc) from None
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


def atomic_output_path(path: Path, *, overwrite: bool, verify=None):
    """Context manager yielding a temp path in the target folder, renamed onto ``path`` on success.

    A thin wrapper of :func:`.atomic.atomic_write` that knows the image formats whose pixels live
    in a second file (``.mhd`` + ``.raw``, ``.nhdr`` + ``.raw.gz``).
    """
    from .atomic import atomic_write

    path = Path(path)
    suffix = next((s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
    return atomic_write(path, overwrite=overwrite, verify=verify, detached=_DETACHED.get(suffix, ()))


_SITK_BYTES = {"8-bit unsigned integer": 1, "8-bit signed integer": 1, "16-bit unsigned integer": 2,
               "16-bit signed integer": 2, "32-bit unsigned integer": 4, "32-bit signed integer": 4,
               "64-bit unsigned integer": 8, "64-bit signed integer": 8, "32-bit float": 4, "64-bit float": 8}


def _gzip_payload_size(path: Path) -> int:
    """Decompressed size of a gzip file, or OutputWriteError-worthy -1 when the stream is incomplete."""
    import zlib

    try:
        total, complete = _gunzip_length(path)
    except zlib.error:
        return -1
    return total if complete else -1


def verify_image_file(path: str | os.PathLike, geometry: Geometry, *, final: str | os.PathLike | None = None,
                      full: bool = True) -> None:
    """Check that a written image is complete and carries ``geometry``; OutputWriteError otherwise.

    Reads the header back (size, spacing, origin, direction), and checks that the voxel data is all
    there: for ``.nii.gz`` the whole gzip stream is decompressed (nothing kept) and its length
    compared with the voxels; for plain ``.nii``/``.mha``/``.nrrd`` the file size; other formats
    (compressed NRRD/MHA) are read back completely. SimpleITK's NIfTI writer reports no error on
    a full disk, so this is what catches a truncated result.

    ``full=False`` is the check made on every write, before the rename: the header and geometry
    read back, the size of uncompressed data, and for ``.nii.gz`` the gzip trailer's length field
    (ISIZE), which must equal the header offset plus the voxel bytes. zlib's ``gzwrite`` (what ITK
    writes through) stops writing at its first failed write, so a short write never ends with a
    valid trailer; this costs a few reads instead of inflating the whole file again (see
    ``benchmarks/write_verify.py``). NRRD and MetaImage writers report failed writes themselves.
    ``full=True`` (the default: checking a file found on disk, e.g. for ``--continue_prediction``)
    decompresses everything, or reads compressed NRRD/MetaImage back completely.
    """
    from ..core.errors import OutputWriteError
    from .atomic import _free_space

    path = Path(path)
    final = Path(final) if final is not None else path
    sitk = _sitk()

    def fail(why: str) -> None:
        raise OutputWriteError(f"could not write {final}: {why}{_free_space(final.parent)}; nothing was saved "
                               "under that name (the disk may be full)")

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        fail(f"the written file cannot be read back ({_first_error_line(exc)})")
    size = tuple(int(v) for v in reader.GetSize())
    itk = geometry.to_itk()
    if size != tuple(int(v) for v in itk["size"]):
        fail(f"the written file holds {size} voxels instead of {tuple(geometry.shape[::-1])}")
    if not (np.allclose(reader.GetSpacing(), itk["spacing"], rtol=1e-5, atol=1e-6)
            and np.allclose(reader.GetOrigin(), itk["origin"], rtol=1e-6, atol=1e-4)
            and np.allclose(reader.GetDirection(), itk["direction"], atol=1e-5)):
        fail("the written file does not carry the image's geometry")
    bpp = _SITK_BYTES.get(sitk.GetPixelIDValueAsString(reader.GetPixelIDValue()).replace("vector of ", ""), 1)
    voxel_bytes = int(np.prod(size, dtype=np.int64)) * bpp * reader.GetNumberOfComponents()
    name = final.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from .limits import nifti_header

        hdr = nifti_header(path)
        need = (hdr.vox_offset if hdr is not None else 352) + voxel_bytes
        if name.endswith(".gz") and not full:
            if _gzip_trailer_size(path) != need % 2**32:
                fail("the compressed data ends early (its gzip trailer is missing or wrong)")
            return
        have = _gzip_payload_size(path) if name.endswith(".gz") else path.stat().st_size
        if have < 0:
            fail("the compressed data ends early")
        if have < need:
            fail(f"it holds {have} of {need} bytes")
    elif name.endswith((".mha", ".nrrd")) and not _header_says_compressed(path):
        if path.stat().st_size < voxel_bytes:
            fail(f"it holds {path.stat().st_size} of at least {voxel_bytes} bytes")
    elif full:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError as exc:
            fail(f"the written file cannot be read back ({_first_error_line(exc)})")


def _gzip_trailer_size(path: Path) -> int | None:
    """The gzip trailer's ISIZE field (uncompressed length mod 2^32), or None for a file too short."""
    with path.open("rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return None
        fh.seek(0, os.SEEK_END)
        if fh.tell() < 20:
            return None
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def _attached_raw_data(path: Path) -> bool:
    """True for a NRRD/MetaImage file whose voxels follow the header uncompressed in the same file."""
    with path.open("rb") as fh:
        head = fh.read(4096).decode("latin-1", "replace").lower()
    if "encoding: raw" in head:
        return "data file:" not in head and "datafile:" not in head
    return "elementdatafile = local" in head and "compresseddata = true" not in head


def _header_says_compressed(path: Path) -> bool:
    """True for NRRD/MetaImage headers that declare compressed voxel data."""
    with path.open("rb") as fh:
        head = fh.read(4096).decode("latin-1", "replace").lower()
    return "encoding: gz" in head or "encoding: bz" in head or "compresseddata = true" in head


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

    def _verify(tmp: Path) -> None:
        verify_image_file(tmp, geometry, final=path, full=False)

    with atomic_output_path(path, overwrite=overwrite, verify=_verify) as tmp:
        try:
            sitk.WriteImage(img, str(tmp), useCompression=True)
        except RuntimeError as exc:
            from ..core.errors import OutputWriteError
            from .atomic import _free_space

            raise OutputWriteError(f"could not write {path}: {_first_error_line(exc)}{_free_space(path.parent)}; "
                                   "nothing was saved under that name") from None
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

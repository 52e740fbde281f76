"""Checks made on an image's header *before* its voxels are read: declared size, memory, spacing.

* **Declared size.** A header can declare far more voxels than its file holds (a 4.4 kB
  ``.nii.gz`` declaring 1500^3 int16). ITK then allocates the whole declared volume and fills the
  missing part with zeros. The declared voxel bytes are compared with what the file really holds:
  the file size for uncompressed data, the decompressed stream length for ``.nii.gz``.
* **Memory.** Reading needs about ``(2 x stored bytes + 4) x voxels`` (ITK's buffer, the numpy
  copy, the float32 image), and the work after it one more float32 copy. That estimate is compared
  with the memory available (``MemAvailable``, and the cgroup limit of a container), so that a huge
  volume is refused with both figures instead of the process being killed by the kernel.
  ``LESIONLOCATOR_MEMORY_LIMIT`` (bytes, or e.g. ``8G``) sets the bound by hand.
* **Spacing.** ITK reads a NIfTI ``pixdim`` of 0 or NaN as 1 mm, silently, so every volume and
  diameter would be wrong: the raw header is checked and such an image refused.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputImageError, ResourceLimitError, SpacingError

__all__ = [
    "ENV_MEMORY_LIMIT",
    "READ_BYTES_PER_STORED_BYTE",
    "WORK_BYTES_PER_VOXEL",
    "available_memory",
    "format_bytes",
    "nifti_header",
    "NiftiHeader",
    "check_memory",
    "check_nifti_header",
    "check_spacing",
    "read_memory_estimate",
    "ENGINE_BYTES_PER_VOXEL",
    "check_engine_memory",
]

ENV_MEMORY_LIMIT = "LESIONLOCATOR_MEMORY_LIMIT"
READ_BYTES_PER_STORED_BYTE = 2  # ITK's buffer + the numpy array it is copied into
WORK_BYTES_PER_VOXEL = 8  # the float32 image, plus one float32 working copy (engines, measurements)


def format_bytes(n: float) -> str:
    """``1536`` -> ``1.5 kB``; powers of 1000 above kB shown with one decimal (GB for volumes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def _parse_size(text: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)i?[bB]?\s*", text or "")
    if not m:
        return None
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 or v1), or None when unlimited."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit_file).read_text().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit >= 2**60:  # v1 "unlimited"
                return None
            return max(0, limit - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def available_memory() -> int | None:
    """Bytes of memory this process can still use, or None when unknown.

    ``$LESIONLOCATOR_MEMORY_LIMIT`` wins; otherwise the smaller of the kernel's ``MemAvailable``
    and what the cgroup (container) limit leaves.
    """
    forced = _parse_size(os.environ.get(ENV_MEMORY_LIMIT, ""))
    if forced is not None:
        return forced
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    cg = _cgroup_free()
    if cg is not None:
        avail = cg if avail is None else min(avail, cg)
    return avail


def read_memory_estimate(n_voxels: int, stored_bytes_per_voxel: int) -> int:
    """Peak bytes to read ``n_voxels`` stored with ``stored_bytes_per_voxel`` and work on them."""
    return int(n_voxels) * (READ_BYTES_PER_STORED_BYTE * int(stored_bytes_per_voxel) + WORK_BYTES_PER_VOXEL)


def check_memory(name: str, size_xyz, stored_bytes_per_voxel: int) -> None:
    """ResourceLimitError (exit 2) when reading the declared volume would not fit in memory."""
    n = math.prod(int(v) for v in size_xyz)
    need = read_memory_estimate(n, stored_bytes_per_voxel)
    avail = available_memory()
    if avail is None or need <= avail:
        return
    dims = "x".join(str(int(v)) for v in size_xyz)
    raise ResourceLimitError(
        f"{name}: reading this {dims} volume ({format_bytes(n * stored_bytes_per_voxel)} of voxels as stored) "
        f"needs about {format_bytes(need)} of memory, but only {format_bytes(avail)} is available; refused "
        "before reading. Crop or downsample the volume (e.g. to the region around the lesions), or use a "
        f"machine with more memory (set {ENV_MEMORY_LIMIT} to change the bound)"
    )


def check_spacing(name: str, spacing) -> None:
    """InputImageError unless every spacing value is a finite, positive number of mm."""
    values = [float(v) for v in spacing]
    bad = [v for v in values if not math.isfinite(v) or v <= 0]
    if bad:
        shown = ", ".join(f"{v:g}" for v in values)
        raise SpacingError(
            f"{name}: the header's voxel spacing is ({shown}) mm: a spacing must be a positive number, and a "
            "volume or diameter measured with a made-up 1 mm would be wrong. Fix the header (e.g. re-export "
            "the scan from its DICOM) before using it"
        )


# ------------------------------------------------------------------ NIfTI
@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a NIfTI-1/-2 header that these checks need (x, y, z order, like the file)."""

    version: int
    dim: tuple[int, ...]
    pixdim: tuple[float, ...]
    bitpix: int
    vox_offset: int

    @property
    def size(self) -> tuple[int, ...]:
        n = max(0, min(self.dim[0], 7))
        return tuple(self.dim[1:1 + n])

    @property
    def voxel_bytes(self) -> int:
        return math.prod(max(1, d) for d in self.size) * max(1, self.bitpix // 8)


def nifti_header(path: str | os.PathLike) -> NiftiHeader | None:
    """The NIfTI header of ``path`` (plain or gzip), or None when it is not a NIfTI file."""
    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(540)
    except (OSError, EOFError):
        return None
    if len(raw) < 348:
        return None
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", raw[:4])
        if sizeof_hdr == 348:
            dim = struct.unpack(endian + "8h", raw[40:56])
            bitpix = struct.unpack(endian + "h", raw[72:74])[0]
            pixdim = struct.unpack(endian + "8f", raw[76:108])
            vox_offset = struct.unpack(endian + "f", raw[108:112])[0]
            return NiftiHeader(1, dim, pixdim, bitpix, int(vox_offset) if math.isfinite(vox_offset) else 352)
        if sizeof_hdr == 540 and len(raw) >= 540:
            bitpix = struct.unpack(endian + "h", raw[14:16])[0]
            dim = struct.unpack(endian + "8q", raw[16:80])
            pixdim = struct.unpack(endian + "8d", raw[104:168])
            vox_offset = struct.unpack(endian + "q", raw[168:176])[0]
            return NiftiHeader(2, dim, pixdim, bitpix, int(vox_offset))
    return None


def _gunzip_length(path: Path) -> tuple[int, bool]:
    """(decompressed length, stream complete) of a gzip file, decompressed in chunks, nothing kept.

    Raises ``zlib.error`` for corrupt data.
    """
    import zlib

    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            total += len(decomp.decompress(chunk, 1 << 24))
            while decomp.unconsumed_tail:
                total += len(decomp.decompress(decomp.unconsumed_tail, 1 << 24))
            if decomp.eof:
                break
    return total, decomp.eof


def check_nifti_header(path: str | os.PathLike, *, data_length: int | None = None) -> NiftiHeader | None:
    """Spacing and declared size of a NIfTI file, from its raw header (before ITK reads it).

    Raises InputImageError for a spacing of 0/NaN/inf along a used axis, or when the header
    declares more voxel bytes than the file holds (a forged or truncated file: ITK would allocate
    the declared size and fill it with zeros). Returns the header, or None when it is not NIfTI.
    ``data_length`` is the file's (decompressed) length when the caller already knows it.
    """
    path = Path(path)
    hdr = nifti_header(path)
    if hdr is None:
        return None
    n_spatial = min(3, len(hdr.size))
    check_spacing(path.name, hdr.pixdim[1:1 + n_spatial])
    if data_length is not None:
        have = data_length
    else:
        have = _gunzip_length(path)[0] if path.name.lower().endswith(".gz") else path.stat().st_size
    need = hdr.vox_offset + hdr.voxel_bytes
    if have < need:
        dims = "x".join(str(d) for d in hdr.size)
        raise InputImageError(
            f"{path.name}: the header declares a {dims} volume of {hdr.bitpix}-bit voxels "
            f"({format_bytes(hdr.voxel_bytes)}), but the file holds only {format_bytes(max(0, have - hdr.vox_offset))} "
            "of voxel data: it is truncated or its header is wrong; nothing was read. Copy or export it again"
        )
    return hdr


# Working memory an engine needs on top of the image it works on, per voxel of that image, from the
# measured peaks in the README (classical: 0.65x the float32 volume, 300x512x512; LesionLocator: 3.5x
# once the whole preprocessed image is cached, 600x512x512). The LesionLocator network's own memory
# (about 11 GiB for ResEnc-L at its patch on the CPU, on the GPU for CUDA) does not grow with the scan
# and depends on the checkpoint, so it is not part of this bound.
ENGINE_BYTES_PER_VOXEL = {"classical": 0.65 * 4, "lesionlocator": 3.5 * 4}


def check_engine_memory(name: str, shape, engine: str) -> None:
    """ResourceLimitError (exit 2) when ``engine``'s working memory for a volume of ``shape`` does not
    fit in the memory available now (the image itself is already read). Unknown engines pass."""
    per_voxel = ENGINE_BYTES_PER_VOXEL.get(engine)
    avail = available_memory()
    if per_voxel is None or avail is None:
        return
    n = math.prod(int(v) for v in shape)
    need = int(n * per_voxel)
    if need <= avail:
        return
    dims = "x".join(str(int(v)) for v in shape)
    raise ResourceLimitError(
        f"{name}: the {engine} engine needs about {format_bytes(need)} of working memory for this {dims} volume, "
        f"but only {format_bytes(avail)} is available; refused before starting. Crop the volume to the region "
        f"around the lesions, close other programs, or use a machine with more memory ({ENV_MEMORY_LIMIT} "
        "changes the bound)"
    )

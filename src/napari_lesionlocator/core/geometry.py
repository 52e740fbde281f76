"""Voxel grid geometry: the one place where index <-> world (mm) conversions live.

Conventions (used everywhere in this package):

* Arrays are indexed ``(z, y, x)``, i.e. the numpy order SimpleITK's
  ``GetArrayFromImage`` returns.
* World coordinates are patient coordinates in millimetres in DICOM/ITK LPS
  space, **written in (z, y, x) order** so that the i-th world axis
  corresponds to the i-th array axis when the direction is the identity.
  This is the order napari uses for a layer's world space, which is why
  images and labels from different scans overlay in napari without any extra
  transform.
* ``spacing``, ``origin`` and ``direction`` are stored in that reversed order.
  ``from_itk``/``to_itk`` convert from/to ITK's (x, y, z) order.

The mapping is ``world = origin + direction @ (spacing * index)``, with
``origin`` the centre of voxel ``(0, 0, 0)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputImageError

__all__ = ["Geometry", "GeometryMismatchError"]


class GeometryMismatchError(InputImageError, ValueError):
    """Two grids that must be identical are not (shape, spacing, origin or direction).

    An ``InputImageError`` (so user-facing code shows its message as-is) and a ``ValueError``.
    """


def _as_tuple(values: Sequence[float], n: int, name: str) -> tuple[float, ...]:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.size != n:
        raise ValueError(f"{name} needs {n} values, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return tuple(float(v) for v in arr)


@dataclass(frozen=True)
class Geometry:
    """Immutable description of a 3D voxel grid in patient space.

    Parameters
    ----------
    shape : tuple of int
        Number of voxels along (z, y, x).
    spacing : tuple of float
        Voxel size in mm along (z, y, x).
    origin : tuple of float
        World position (mm, LPS, written z, y, x) of the centre of voxel (0, 0, 0).
    direction : tuple of float
        3x3 direction cosine matrix, row-major, in (z, y, x) order: column ``j``
        is the world direction of array axis ``j``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(default=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be 3 positive integers (z, y, x), got {self.shape}")
        spacing = _as_tuple(self.spacing, 3, "spacing")
        if min(spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {spacing}")
        # Cosines below 1e-12 are round-off (often denormals from a file header); ITK inverts
        # denormal matrices to NaN, so they are snapped to exactly 0.
        direction = tuple(0.0 if abs(v) < 1e-12 else v for v in _as_tuple(self.direction, 9, "direction"))
        d = np.asarray(direction).reshape(3, 3)
        # world_to_index inverts the direction by transposing it, so it must be orthonormal
        # (rotation or reflection), not just of unit determinant (a shear can have det 1).
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
            raise ValueError(f"direction must be orthonormal (a rotation, possibly with flips), got {d.tolist()}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _as_tuple(self.origin, 3, "origin"))
        object.__setattr__(self, "direction", direction)

    # ------------------------------------------------------------------ ITK
    @classmethod
    def from_itk(
        cls,
        size_xyz: Sequence[int],
        spacing_xyz: Sequence[float],
        origin_xyz: Sequence[float],
        direction_xyz: Sequence[float],
    ) -> Geometry:
        """Build from ITK/SimpleITK values, which are all in (x, y, z) order."""
        d = np.asarray(direction_xyz, dtype=float).reshape(3, 3)
        # Reverse both the world axes (rows) and the index axes (columns).
        d_zyx = d[::-1, ::-1]
        return cls(
            shape=tuple(int(s) for s in reversed(tuple(size_xyz))),
            spacing=tuple(reversed(tuple(spacing_xyz))),
            origin=tuple(reversed(tuple(origin_xyz))),
            direction=tuple(d_zyx.reshape(-1)),
        )

    def to_itk(self) -> dict[str, tuple]:
        """Values for SimpleITK ``SetSpacing/SetOrigin/SetDirection`` in (x, y, z) order."""
        d = self.direction_matrix[::-1, ::-1]
        return {
            "size": tuple(reversed(self.shape)),
            "spacing": tuple(reversed(self.spacing)),
            "origin": tuple(reversed(self.origin)),
            "direction": tuple(float(v) for v in d.reshape(-1)),
        }

    # ---------------------------------------------------------- properties
    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 direction cosines in (z, y, x) order; column ``j`` is the world direction of array axis ``j``."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def is_axis_aligned(self) -> bool:
        """True when the direction is the identity (napari needs no affine)."""
        return bool(np.allclose(self.direction_matrix, np.eye(3), atol=1e-6))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def index_to_world_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (z, y, x, 1) indices to world (z, y, x, 1) mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size along each array axis, (z, y, x), in mm."""
        return tuple(float(n * s) for n, s in zip(self.shape, self.spacing, strict=True))

    # ---------------------------------------------------------- conversions
    def index_to_world(self, index_zyx: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map continuous voxel indices, shape (..., 3) in (z, y, x), to world mm (z, y, x)."""
        idx = np.asarray(index_zyx, dtype=float)
        return idx * np.asarray(self.spacing) @ self.direction_matrix.T + np.asarray(self.origin)

    def world_to_index(self, world_zyx: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map world mm (z, y, x), shape (..., 3), to continuous voxel indices (z, y, x)."""
        w = np.asarray(world_zyx, dtype=float) - np.asarray(self.origin)
        # direction is orthonormal, so its inverse is its transpose.
        return (w @ self.direction_matrix) / np.asarray(self.spacing)

    def world_to_nearest_index(self, world_zyx: np.ndarray | Sequence[float]) -> np.ndarray:
        """Nearest voxel index (int) for world points; may lie outside the grid."""
        return np.floor(self.world_to_index(world_zyx) + 0.5).astype(int)

    def contains_index(self, index_zyx: Sequence[float]) -> bool:
        idx = np.asarray(index_zyx, dtype=float)
        return bool(np.all(idx >= -0.5) and np.all(idx < np.asarray(self.shape) - 0.5))

    # ------------------------------------------------------------- napari
    def napari_transform(self) -> dict[str, object]:
        """Keyword arguments for a napari layer so it sits in world (mm) space.

        Axis-aligned grids get ``scale`` and ``translate`` only (napari's tools,
        e.g. the label brush, work best there); rotated grids get ``scale`` plus
        an ``affine`` holding the direction and origin, because napari applies
        ``affine`` after ``scale``/``translate``.
        """
        if self.is_axis_aligned:
            return {"scale": self.spacing, "translate": self.origin}
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix
        affine[:3, 3] = self.origin
        return {"scale": self.spacing, "translate": (0.0, 0.0, 0.0), "affine": affine}

    def to_metadata(self) -> dict[str, list]:
        """JSON-serialisable dict (for napari layer metadata and sidecar files)."""
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_metadata(cls, meta: dict) -> Geometry:
        return cls(
            shape=tuple(meta["shape"]),
            spacing=tuple(meta["spacing"]),
            origin=tuple(meta["origin"]),
            direction=tuple(meta["direction"]),
        )

    # ------------------------------------------------------------ equality
    def same_grid(
        self, other: Geometry, *, spacing_tol: float = 1e-4, origin_tol_mm: float = 1e-3, direction_tol: float = 1e-4
    ) -> bool:
        """True when both describe the same voxel grid, within tolerances.

        Each field is compared against ``other``'s own field (not against self),
        with relative spacing tolerance, absolute origin tolerance in mm and
        absolute direction-cosine tolerance.
        """
        return not self.grid_differences(
            other, spacing_tol=spacing_tol, origin_tol_mm=origin_tol_mm, direction_tol=direction_tol
        )

    def grid_differences(
        self, other: Geometry, *, spacing_tol: float = 1e-4, origin_tol_mm: float = 1e-3, direction_tol: float = 1e-4
    ) -> list[str]:
        """Human-readable list of what differs between two grids (empty when equal)."""
        out = []
        if self.shape != other.shape:
            out.append(f"shape {self.shape} vs {other.shape}")
        s1, s2 = np.asarray(self.spacing), np.asarray(other.spacing)
        if not np.allclose(s1, s2, rtol=spacing_tol, atol=0):
            out.append(f"spacing {self.spacing} vs {other.spacing}")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=origin_tol_mm):
            out.append(f"origin {self.origin} vs {other.origin}")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=direction_tol):
            out.append(f"direction {self.direction} vs {other.direction}")
        return out

    def require_same_grid(self, other: Geometry, what: str = "the two volumes", **tol: float) -> None:
        """Raise GeometryMismatchError naming both grids and what differs, unless they are the same."""
        diffs = self.grid_differences(other, **tol)
        if diffs:
            raise GeometryMismatchError(
                f"{what} are not on the same voxel grid ({'; '.join(diffs)}). "
                f"First: {self.describe()}. Second: {other.describe()}. "
                "Resample one onto the other's grid first (nearest neighbour for labels)."
            )

    def describe(self) -> str:
        """One-line human-readable summary: shape (z, y, x), spacing (mm), origin (mm) and direction."""

        def fmt(values: Sequence[float]) -> str:
            return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"

        if self.is_axis_aligned:
            direction = "identity"
        else:
            direction = fmt(self.direction)
        return (
            f"shape (z, y, x) {self.shape}, spacing {fmt(self.spacing)} mm, origin {fmt(self.origin)} mm, "
            f"direction {direction}"
        )

    # ----------------------------------------------------------- sub-grids
    def crop(self, start_zyx: Sequence[int], stop_zyx: Sequence[int]) -> Geometry:
        """Geometry of ``array[z0:z1, y0:y1, x0:x1]`` (same spacing and direction).

        ``start`` and ``stop`` are voxel indices (z, y, x), half-open. They may lie outside the grid
        (the result then describes a padded region on the same lattice), but ``stop > start`` on
        every axis.
        """
        start = np.asarray(start_zyx, dtype=int).reshape(-1)
        stop = np.asarray(stop_zyx, dtype=int).reshape(-1)
        if start.size != 3 or stop.size != 3:
            raise ValueError(f"crop needs 3 start and 3 stop indices (z, y, x), got {start_zyx}, {stop_zyx}")
        if np.any(stop <= start):
            raise ValueError(f"crop region is empty: start {start.tolist()}, stop {stop.tolist()} (half-open)")
        return Geometry(
            shape=tuple(int(v) for v in stop - start),
            spacing=self.spacing,
            origin=tuple(self.index_to_world(start.astype(float))),
            direction=self.direction,
        )

    def with_spacing(self, spacing_zyx: Sequence[float]) -> Geometry:
        """Same physical extent and origin corner, resampled to a new spacing."""
        spacing = np.asarray(spacing_zyx, dtype=float)
        shape = np.maximum(1, np.round(np.asarray(self.shape) * np.asarray(self.spacing) / spacing)).astype(int)
        # Keep the outer corner of the first voxel fixed.
        corner = self.index_to_world(np.full(3, -0.5))
        origin = corner + self.direction_matrix @ (spacing * 0.5)
        return Geometry(tuple(int(s) for s in shape), tuple(spacing), tuple(origin), self.direction)

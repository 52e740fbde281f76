"""Per-lesion measurements: volume, RECIST long/short axis (axial, physical mm), HU statistics, centroid.

Conventions
-----------
* "Axial" means the plane of one slice of the array's first axis (z): the diameters are measured
  on ``array[z]`` for the single z where the lesion's longest in-plane diameter is largest (RECIST 1.1).
* Diameters are measured in **physical space**: the lesion boundary on that slice is traced with
  marching squares at level 0.5 (sub-voxel, on the voxel edges between lesion and background, so a
  run of ``n`` voxels measures ``n * spacing``), its points are mapped to world mm with the image
  geometry (spacing *and* direction), and the distances are Euclidean in mm. Anisotropic pixels and
  rotated directions therefore give the true physical lengths.
* The long axis is the largest distance between two points of the boundary's convex hull. The short
  axis is the longest chord of that hull **exactly perpendicular** to the long axis (computed in
  closed form: a convex polygon's perpendicular chord length is a concave piecewise-linear function
  of the position along the long axis, so its maximum lies at a hull vertex), which removes the
  need for an angular tolerance.
* World coordinates are LPS mm written (z, y, x), as in :mod:`.geometry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .geometry import Geometry
from .image import Image, LabelMap

__all__ = [
    "AxialDiameters",
    "LesionMeasurement",
    "axial_diameters",
    "dice",
    "measure_lesion_mask",
    "measure_lesions",
    "measure_mask",
    "measure_study",
]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two masks (any non-zero is foreground); 1.0 when both are empty."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@dataclass(frozen=True)
class AxialDiameters:
    """RECIST diameters of one lesion on one axial slice.

    Attributes
    ----------
    slice_index : int
        Index along the array's z axis of the slice measured.
    long_axis_mm, short_axis_mm : float
        Longest in-plane diameter and the longest chord perpendicular to it, in mm.
    long_axis_endpoints_mm, short_axis_endpoints_mm : tuple
        The two end points of each axis as world mm (z, y, x), for drawing.
    """

    slice_index: int
    long_axis_mm: float
    short_axis_mm: float
    long_axis_endpoints_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    short_axis_endpoints_mm: tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True)
class LesionMeasurement:
    """One row of a lesion table: one lesion at one timepoint.

    ``present`` is False when the lesion has no voxel at this timepoint (disappeared, or not
    found by tracking); the sizes are then 0 and the HU statistics and positions are NaN/None.

    Attributes
    ----------
    lesion_id : int
        Stable lesion identity (label value).
    timepoint : int
        Timepoint index in the study (0 = baseline).
    present : bool
        Whether the lesion has at least one voxel.
    voxel_count : int
        Number of voxels.
    volume_ml : float
        ``voxel_count * voxel volume``, in millilitres (cm^3).
    long_axis_mm, short_axis_mm : float
        RECIST diameters in mm (see module docstring), 0 when absent.
    axial_slice : int or None
        z index of the slice the diameters were measured on.
    mean_hu, std_hu : float
        Mean and population standard deviation (ddof=0) of the image inside the mask; NaN when
        absent or when no image was given.
    centroid_mm : tuple or None
        Mean voxel position in world mm (z, y, x).
    name, date, image : str or None
        Lesion name, acquisition date (ISO) and image name, for tables.
    """

    lesion_id: int
    timepoint: int = 0
    present: bool = True
    voxel_count: int = 0
    volume_ml: float = 0.0
    long_axis_mm: float = 0.0
    short_axis_mm: float = 0.0
    axial_slice: int | None = None
    mean_hu: float = float("nan")
    std_hu: float = float("nan")
    centroid_mm: tuple[float, float, float] | None = None
    long_axis_endpoints_mm: tuple | None = None
    short_axis_endpoints_mm: tuple | None = None
    name: str | None = None
    date: str | None = None
    image: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain dict (tuples become lists) for JSON."""
        d = asdict(self)
        for key in ("centroid_mm", "long_axis_endpoints_mm", "short_axis_endpoints_mm"):
            if d[key] is not None:
                d[key] = np.asarray(d[key], dtype=float).tolist()
        return d


# ----------------------------------------------------------------- geometry
def _slice_boundary_points(mask2d: np.ndarray) -> np.ndarray:
    """Sub-voxel boundary points (row, col) of a 2D mask: marching squares at 0.5 on the padded mask."""
    from skimage import measure

    padded = np.pad(mask2d.astype(np.float32), 1)
    contours = measure.find_contours(padded, 0.5)
    if not contours:
        return np.empty((0, 2))
    return np.concatenate(contours, axis=0) - 1.0


def _hull_vertices(points: np.ndarray) -> np.ndarray:
    """Convex hull vertices (in order) of 2D points; the unique points themselves when degenerate."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.unique(np.round(points, 9), axis=0)
    if len(pts) < 3:
        return pts
    try:
        return pts[ConvexHull(pts).vertices]
    except QhullError:  # collinear points: the "hull" is the segment between the extremes
        return pts


def _longest_pair(pts: np.ndarray) -> tuple[float, int, int]:
    diff = pts[:, None, :] - pts[None, :, :]
    d2 = np.einsum("ijk,ijk->ij", diff, diff)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    return float(np.sqrt(d2[i, j])), int(i), int(j)


def _perpendicular_chord(hull: np.ndarray, u: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Longest chord of a convex polygon (2D, ordered vertices) perpendicular to unit vector ``u``.

    The chord length is a concave, piecewise-linear function of the position ``t`` along ``u``,
    so it is evaluated at every vertex position (vectorised over vertices x edges).
    Returns the length and the two end points. Degenerate hulls (segment, point) give 0.
    """
    if len(hull) < 3:
        p = hull[0] if len(hull) else np.zeros(2)
        return 0.0, p, p
    v = np.array([-u[1], u[0]])
    s, w = hull @ u, hull @ v
    s0, s1 = s, np.roll(s, -1)  # edge k goes from vertex k to vertex k + 1
    w0, w1 = w, np.roll(w, -1)
    t = s[:, None]  # (positions, 1) against (edges,)
    lo, hi = np.minimum(s0, s1), np.maximum(s0, s1)
    crosses = (t >= lo - 1e-12) & (t <= hi + 1e-12)
    ds = s1 - s0
    flat = np.abs(ds) < 1e-12  # an edge along the chord direction: both of its ends are on the chord
    a = np.where(flat, 0.0, (t - s0) / np.where(flat, 1.0, ds))
    hit = w0 + a * (w1 - w0)
    top = np.where(crosses, np.maximum(hit, np.where(flat, w1, hit)), -np.inf).max(axis=1)
    bottom = np.where(crosses, np.minimum(hit, np.where(flat, w1, hit)), np.inf).min(axis=1)
    length = np.where(np.isfinite(top) & np.isfinite(bottom), top - bottom, 0.0)
    k = int(np.argmax(length))
    if length[k] <= 0:
        return 0.0, hull[0], hull[0]
    return float(length[k]), s[k] * u + bottom[k] * v, s[k] * u + top[k] * v


def _in_plane_basis(geometry: Geometry) -> np.ndarray:
    """2x3 matrix mapping (row, col) index steps on an axial slice to world mm (z, y, x)."""
    m = geometry.direction_matrix @ np.diag(geometry.spacing)
    return m[:, 1:].T  # columns 1 (y) and 2 (x) of the index-to-world matrix


def axial_diameters(mask: np.ndarray, geometry: Geometry) -> AxialDiameters | None:
    """RECIST long and short axis of a 3D binary mask, on the axial slice with the longest diameter.

    Parameters
    ----------
    mask : np.ndarray
        Boolean array (z, y, x) on ``geometry``'s grid.
    geometry : Geometry
        Grid of the mask: spacing and direction give the physical lengths.

    Returns
    -------
    AxialDiameters or None
        None when the mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return None
    basis = _in_plane_basis(geometry)  # (2, 3): row step and col step as world vectors
    # An orthonormal 2D frame of the slice plane in mm, so that 2D distances equal world distances.
    q, _ = np.linalg.qr(basis.T)  # (3, 2) orthonormal columns spanning the plane
    to_plane = basis @ q  # (2, 2): index (row, col) step -> plane mm coordinates
    # A slice's longest diameter is at most the diagonal of its bounding box (the in-plane axes are
    # orthogonal), so slices are measured largest box first and the rest skipped once no box can
    # beat the best diameter; ties keep the lowest z, as measuring every slice in order would.
    row_mm, col_mm = (float(np.linalg.norm(v)) for v in basis)
    boxes = []
    for z in zs:
        sl = mask[z]
        rows = np.flatnonzero(sl.any(axis=1))
        cols = np.flatnonzero(sl.any(axis=0))
        bound = float(np.hypot((rows[-1] - rows[0] + 1) * row_mm, (cols[-1] - cols[0] + 1) * col_mm))
        boxes.append((bound, int(z), rows, cols))
    boxes.sort(key=lambda t: (-t[0], t[1]))
    best: tuple[float, int, np.ndarray, int, int] | None = None
    for bound, z, rows, cols in boxes:
        if best is not None and bound < best[0] - 1e-9:
            break
        sl = mask[z]
        r0, c0 = rows[0], cols[0]
        pts_idx = _slice_boundary_points(sl[r0: rows[-1] + 1, c0: cols[-1] + 1]) + [r0, c0]
        hull = _hull_vertices(pts_idx @ to_plane)
        length, i, j = _longest_pair(hull)
        if best is None or length > best[0] + 1e-9 or (abs(length - best[0]) <= 1e-9 and z < best[1]):
            best = (length, int(z), hull, i, j)
    length, z, hull, i, j = best
    u = hull[j] - hull[i]
    u = u / np.linalg.norm(u) if length > 0 else np.array([1.0, 0.0])
    short, a, b = _perpendicular_chord(hull, u)

    inv = np.linalg.inv(to_plane)

    def world(p2: np.ndarray) -> tuple[float, float, float]:
        rc = p2 @ inv
        return tuple(float(v) for v in geometry.index_to_world([z, rc[0], rc[1]]))

    return AxialDiameters(
        slice_index=z,
        long_axis_mm=length,
        short_axis_mm=short,
        long_axis_endpoints_mm=(world(hull[i]), world(hull[j])),
        short_axis_endpoints_mm=(world(a), world(b)),
    )


# ----------------------------------------------------------------- lesions
def measure_mask(
    mask: np.ndarray,
    geometry: Geometry,
    *,
    lesion_id: int,
    image: Image | None = None,
    timepoint: int = 0,
    name: str | None = None,
    date: str | None = None,
) -> LesionMeasurement:
    """Measure one binary mask (see :func:`measure_lesions`); an empty mask gives ``present=False``."""
    mask = np.asarray(mask, dtype=bool)
    image_name = image.name if image is not None else None
    count = int(mask.sum())
    if count == 0:
        return LesionMeasurement(lesion_id=int(lesion_id), timepoint=timepoint, present=False, name=name,
                                 date=date, image=image_name)
    idx = np.argwhere(mask)
    centroid = tuple(float(v) for v in geometry.index_to_world(idx.mean(axis=0)))
    if image is not None:
        values = image.array[mask].astype(np.float64)
        mean_hu, std_hu = float(values.mean()), float(values.std())
    else:
        mean_hu = std_hu = float("nan")
    diam = axial_diameters(mask, geometry)
    return LesionMeasurement(
        lesion_id=int(lesion_id),
        timepoint=timepoint,
        present=True,
        voxel_count=count,
        volume_ml=count * geometry.voxel_volume_mm3 / 1000.0,
        long_axis_mm=diam.long_axis_mm,
        short_axis_mm=diam.short_axis_mm,
        axial_slice=diam.slice_index,
        mean_hu=mean_hu,
        std_hu=std_hu,
        centroid_mm=centroid,
        long_axis_endpoints_mm=diam.long_axis_endpoints_mm,
        short_axis_endpoints_mm=diam.short_axis_endpoints_mm,
        name=name,
        date=date,
        image=image_name,
    )


def measure_lesion_mask(
    mask,
    image: Image | None = None,
    *,
    lesion_id: int,
    timepoint: int = 0,
    name: str | None = None,
    date: str | None = None,
) -> LesionMeasurement:
    """Measure one lesion's own mask (a :class:`~.results.LesionMask`: crop + bool) inside its crop.

    Same results as :func:`measure_mask` on the full grid, at the cost of the crop only. ``image``
    (optional, for HU statistics) must be on the mask's grid.
    """
    from dataclasses import replace

    image_name = image.name if image is not None else None
    if image is not None:
        image.geometry.require_same_grid(mask.geometry, what=f"image {image.name} and the mask of lesion {lesion_id}")
        date = date if date is not None else image.acquisition_date
    if mask.is_empty:
        return LesionMeasurement(lesion_id=int(lesion_id), timepoint=timepoint, present=False, name=name,
                                 date=date, image=image_name)
    sub_geom = mask.geometry.crop(mask.start, mask.stop)
    sub_img = image.with_array(image.array[mask.slices], geometry=sub_geom) if image is not None else None
    row = measure_mask(mask.array, sub_geom, lesion_id=lesion_id, image=sub_img, timepoint=timepoint, name=name,
                       date=date)
    return replace(row, axial_slice=row.axial_slice + mask.start[0], image=image_name)


def measure_lesions(
    image: Image | None,
    labels: LabelMap,
    *,
    timepoint: int = 0,
    lesion_ids: Iterable[int] | None = None,
    names: Mapping[int, str] | None = None,
    date: str | None = None,
) -> list[LesionMeasurement]:
    """Measure every lesion of an instance map at one timepoint.

    Parameters
    ----------
    image : Image or None
        CT in HU on the same grid as ``labels`` (None: HU statistics are NaN).
    labels : LabelMap
        Instance map; each non-zero id is one lesion.
    timepoint : int
        Timepoint index written into the rows (0 = baseline).
    lesion_ids : iterable of int, optional
        Ids to report, in this order; an id with no voxel gives a row with ``present=False``
        (e.g. a lesion that disappeared at follow-up). Default: the ids present, ascending.
    names : mapping, optional
        Lesion id -> display name.
    date : str, optional
        Acquisition date (default: ``image.acquisition_date``).

    Returns
    -------
    list of LesionMeasurement

    Raises
    ------
    GeometryMismatchError
        When ``image`` and ``labels`` are not on the same voxel grid.
    """
    from scipy import ndimage

    if image is not None:
        image.geometry.require_same_grid(labels.geometry, what=f"image {image.name} and label map {labels.name}")
        date = date if date is not None else image.acquisition_date
    arr = labels.array
    present = labels.ids
    ids = [int(v) for v in lesion_ids] if lesion_ids is not None else present
    names = names or {}
    top = max(present) if present else 0
    slices = ndimage.find_objects(arr) if 0 < top < 2**20 else None
    rows = []
    for lid in ids:
        sl: Sequence[slice] | None = None
        if slices is not None and 0 < lid <= len(slices):
            sl = slices[lid - 1]
        if lid in present and sl is not None:
            # Measure inside the bounding box: same geometry cropped, same results, much faster.
            start = [s.start for s in sl]
            stop = [s.stop for s in sl]
            sub_geom = labels.geometry.crop(start, stop)
            sub_img = image.with_array(image.array[tuple(sl)], geometry=sub_geom) if image is not None else None
            row = measure_mask(arr[tuple(sl)] == lid, sub_geom, lesion_id=lid, image=sub_img, timepoint=timepoint,
                               name=names.get(lid), date=date)
            if row.axial_slice is not None:
                row = _replace(row, axial_slice=row.axial_slice + start[0], image=image.name if image else None)
        else:
            row = measure_mask(arr == lid, labels.geometry, lesion_id=lid, image=image, timepoint=timepoint,
                               name=names.get(lid), date=date)
        rows.append(row)
    return rows


def _replace(row: LesionMeasurement, **changes) -> LesionMeasurement:
    from dataclasses import replace

    return replace(row, **changes)


def measure_study(study, lesion_ids: Iterable[int] | None = None) -> list[LesionMeasurement]:
    """Lesion table of a :class:`~.study.Study`: one row per lesion per evaluable timepoint.

    Timepoint indices follow the study order (0 = baseline); names and dates come from the study.
    A lesion marked not evaluable at a timepoint, or a timepoint without a label map, gets **no
    row** there (RECIST then reports "NE"); a lesion absent from a label map gets a row with
    ``present=False``.
    """
    if hasattr(study, "measurements"):  # core.study.Study: each lesion's own mask, cached per revision
        return study.measurements(lesion_ids)
    lesions = {les.id: les for les in study.lesions()}
    ids = [int(i) for i in lesion_ids] if lesion_ids is not None else sorted(lesions)
    names = {i: lesions[i].name for i in ids if i in lesions}
    rows: list[LesionMeasurement] = []
    for k, tp in enumerate(study.timepoints):
        if tp.labels is None:
            continue
        evaluable = [i for i in ids if i not in lesions or lesions[i].status.get(tp.name) != "not_evaluable"]
        rows.extend(measure_lesions(tp.image, tp.labels, timepoint=k, lesion_ids=evaluable, names=names,
                                    date=tp.acquisition_date))
    return rows

"""Rigid/affine CT-to-CT registration in physical space (SimpleITK), global then per lesion.

Conventions: transforms here map **baseline (fixed) world points to follow-up (moving) world
points** and are handled as 4x4 homogeneous matrices in ITK's (x, y, z) LPS mm order; the
package's :class:`Geometry` speaks (z, y, x), so conversions go through ``Geometry.to_itk``.

* :func:`global_affine` registers downsampled (~4 mm) whole scans: rigid then affine,
  multi-resolution, Mattes mutual information, two initialisations (scanner coordinates and
  body centroids) of which the better is kept.
* :func:`local_affine` refines it on a ~70 mm region around one lesion (rigid then affine,
  starting from the global result), so breathing and posture changes elsewhere do not matter.

Only crops and strided views of the input arrays are converted, never the full volume.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...core.errors import Cancelled
from ...core.geometry import Geometry

__all__ = [
    "to_sitk",
    "downsampled",
    "global_affine",
    "local_affine",
    "local_translation",
    "similarity",
    "apply",
    "invert",
    "sitk_affine",
]

CLAMP_HU = (-1000.0, 1500.0)
GLOBAL_SPACING_MM = 4.0
LOCAL_SPACING_MM = 1.5


def _sitk():
    import SimpleITK as sitk

    return sitk


def to_sitk(array: np.ndarray, geometry: Geometry, dtype=np.float32):
    """SimpleITK image of ``array`` (z, y, x) on ``geometry`` (copies; pass crops)."""
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=dtype))
    itk = geometry.to_itk()
    img.SetSpacing(itk["spacing"])
    img.SetOrigin(itk["origin"])
    img.SetDirection(itk["direction"])
    return img


def downsampled(array: np.ndarray, geometry: Geometry, target_mm: float = GLOBAL_SPACING_MM, start=None, stop=None):
    """Strided ~``target_mm`` view of a volume (or of its crop ``[start, stop)``) as a clamped float32 SimpleITK image.

    The crop's first voxel keeps its centre, so the origin is that voxel's and the spacing multiplies.
    """
    start = np.zeros(3, dtype=int) if start is None else np.asarray(start, dtype=int)
    stop = np.asarray(geometry.shape) if stop is None else np.asarray(stop, dtype=int)
    step = np.maximum(1, np.round(target_mm / np.asarray(geometry.spacing))).astype(int)
    view = array[start[0] : stop[0] : step[0], start[1] : stop[1] : step[1], start[2] : stop[2] : step[2]]
    origin = geometry.index_to_world(start.astype(float))
    geo = Geometry(view.shape, tuple(np.asarray(geometry.spacing) * step), tuple(origin), geometry.direction)
    return to_sitk(np.clip(view, *CLAMP_HU), geo)


# ------------------------------------------------------------------ matrices
def _matrix_of(tx) -> np.ndarray:
    """4x4 matrix of a SimpleITK matrix-offset transform (Euler3D, Affine...)."""
    a = np.asarray(tx.GetMatrix(), dtype=float).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=float)
    t = np.asarray(tx.GetTranslation(), dtype=float)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = c + t - a @ c
    return m


def sitk_affine(m: np.ndarray):
    """SimpleITK AffineTransform of a 4x4 matrix (x, y, z mm)."""
    sitk = _sitk()
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(float(v) for v in m[:3, :3].reshape(-1)))
    tx.SetTranslation(tuple(float(v) for v in m[:3, 3]))
    return tx


def invert(m: np.ndarray) -> np.ndarray:
    return np.linalg.inv(m)


def apply(m: np.ndarray, points_xyz: np.ndarray) -> np.ndarray:
    """Apply a 4x4 matrix to points (..., 3) in (x, y, z) mm."""
    p = np.asarray(points_xyz, dtype=float)
    return p @ m[:3, :3].T + m[:3, 3]


# ------------------------------------------------------------------ registration
def _method(check: Callable[[], None], sampling: float, levels: tuple[int, ...], iterations: int):
    sitk = _sitk()
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=40)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, 12345)  # fixed seed: reproducible results
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(levels))
    reg.SetSmoothingSigmasPerLevel([max(0, lv - 1) for lv in levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    state = {"cancelled": False}

    def on_iteration() -> None:
        try:
            check()
        except Cancelled:
            state["cancelled"] = True
            reg.StopRegistration()

    reg.AddCommand(sitk.sitkIterationEvent, on_iteration)
    return reg, state


def _run(reg, state, fixed, moving):
    tx = reg.Execute(fixed, moving)
    if state["cancelled"]:
        raise Cancelled("cancelled by the user")
    return tx, reg.GetMetricValue()


def _rigid_then_affine(fixed, moving, init: np.ndarray, center_xyz, check, *, samples, levels, iterations):
    """Rigid then affine, both on top of ``init`` (4x4); returns (matrix, final metric).

    ``samples`` bounds the metric's random samples per iteration (cost does not grow with the image).
    """
    sitk = _sitk()
    sampling = float(min(0.5, samples / max(1, fixed.GetNumberOfPixels())))
    reg, state = _method(check, sampling, levels, iterations)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(tuple(float(v) for v in center_xyz))
    reg.SetMovingInitialTransform(sitk_affine(init))
    reg.SetInitialTransform(rigid, inPlace=True)
    _run(reg, state, fixed, moving)
    m_rigid = init @ _matrix_of(rigid)

    reg, state = _method(check, sampling, levels, iterations)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(float(v) for v in center_xyz))
    reg.SetMovingInitialTransform(sitk_affine(m_rigid))
    reg.SetInitialTransform(affine, inPlace=True)
    _, metric = _run(reg, state, fixed, moving)
    m = m_rigid @ _matrix_of(affine)
    # Guard against a degenerate fit (folding or extreme scaling): keep the rigid result.
    sv = np.linalg.svd(m[:3, :3], compute_uv=False)
    if sv.min() < 0.7 or sv.max() > 1.4 or np.linalg.det(m[:3, :3]) <= 0:
        return m_rigid, metric
    return m, metric


def _body_centroid_xyz(img) -> np.ndarray:
    sitk = _sitk()
    arr = sitk.GetArrayViewFromImage(img)
    idx = np.argwhere(arr > -500)
    if idx.size == 0:
        idx = np.argwhere(np.ones_like(arr, dtype=bool))
    c = idx.mean(axis=0)[::-1]  # (x, y, z) continuous index
    return np.asarray(img.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in c)))


def _metric_at(fixed, moving, m: np.ndarray, samples: int) -> float:
    reg, _ = _method(lambda: None, float(min(0.5, samples / max(1, fixed.GetNumberOfPixels()))), (1,), 1)
    reg.SetInitialTransform(sitk_affine(m))
    try:
        return float(reg.MetricEvaluate(fixed, moving))
    except RuntimeError:  # too little overlap to evaluate
        return 0.0


def global_affine(fixed, moving, check: Callable[[], None] = lambda: None) -> np.ndarray:
    """Baseline -> follow-up world matrix from downsampled whole scans (see :func:`downsampled`).

    Two starting points are scored (scanner coordinates as they are, and body centroids
    matched) and the optimisation runs from the better one.
    """
    c_fixed = _body_centroid_xyz(fixed)
    c_moving = _body_centroid_xyz(moving)
    shift = np.eye(4)
    shift[:3, 3] = c_moving - c_fixed
    init = min((np.eye(4), shift), key=lambda m: _metric_at(fixed, moving, m, 20_000))
    m, _ = _rigid_then_affine(fixed, moving, init, c_fixed, check, samples=20_000, levels=(2, 1), iterations=50)
    return m


def local_affine(fixed_crop, moving_crop, init: np.ndarray, center_xyz, check: Callable[[], None] = lambda: None):
    """Refine ``init`` (baseline -> follow-up, 4x4) on a region around one lesion."""
    m, _ = _rigid_then_affine(
        fixed_crop, moving_crop, init, center_xyz, check, samples=25_000, levels=(2, 1), iterations=50
    )
    return m


def local_translation(fixed_crop, moving_crop, init: np.ndarray, check: Callable[[], None] = lambda: None,
                      samples: int = 8000, iterations: int = 40) -> np.ndarray:
    """Refine ``init`` (4x4) by a translation only, on a small region (one level, few samples).

    A few hundred milliseconds instead of seconds for :func:`local_affine`: enough to take out the
    residual shift of the global fit around a small structure (a new-lesion candidate's re-check).
    """
    sitk = _sitk()
    reg, state = _method(check, float(min(0.5, samples / max(1, fixed_crop.GetNumberOfPixels()))), (1,), iterations)
    shift = sitk.TranslationTransform(3)
    reg.SetMovingInitialTransform(sitk_affine(init))
    reg.SetInitialTransform(shift, inPlace=True)
    _run(reg, state, fixed_crop, moving_crop)
    t = np.eye(4)
    t[:3, 3] = np.asarray(shift.GetOffset(), dtype=float)
    return init @ t


def similarity(fixed, moving, m: np.ndarray) -> float:
    """Normalised cross-correlation cost (lower is better, -1 = perfect) of ``moving`` through ``m`` on ``fixed``.

    Used to choose between the global and the local estimate on the lesion's own region: a local
    fit that drifted (homogeneous organ, lesion at a field-of-view edge) scores worse.
    """
    sitk = _sitk()
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetInitialTransform(sitk_affine(m))
    try:
        return float(reg.MetricEvaluate(fixed, moving))
    except RuntimeError:  # no overlap at all
        return 0.0

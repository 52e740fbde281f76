"""Deterministic synthetic longitudinal chest CT study with exact ground truth.

Usage::

    from napari_lesionlocator.sample.synthetic import make_synthetic_study
    study = make_synthetic_study(seed=0, size="small")
    study.images, study.labels, study.lesions
    study.write("/tmp/study")

Three scans (baseline and two follow-ups) of one analytic patient (:mod:`.anatomy`) with
seven lesions (models in :mod:`.lesions`, placement in :mod:`.catalogue`). Every scan is
rendered directly from the phantom: each voxel centre is mapped from scanner space into the
patient frame through that scan's rigid pose and breathing (:mod:`.frames`), so images and
label maps are geometrically exact at every timepoint; nothing is resampled. Then a Gaussian
point-spread function (partial volume) and white noise filtered by the same PSF (correlated,
about 15 HU std) are applied.

The lesion timeline (ids, kinds, organs, size per timepoint) is tabled in :mod:`.catalogue`.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.geometry import Geometry
from ..core.image import Image, LabelMap
from .anatomy import Phantom, hu_from_tissue
from .catalogue import lesion_models
from .frames import PatientPose, rotation_zyx
from .lesions import LesionModel, render_lesion

__all__ = ["make_synthetic_study", "SyntheticStudy", "LesionRecord", "SIZES", "TIMEPOINT_DATES"]

# (shape (z, y, x), spacing (z, y, x) mm) of the three scans; follow-ups differ a little in FOV.
SIZES: dict[str, dict] = {
    "small": {"spacing": (2.5, 1.6, 1.6), "shapes": [(96, 192, 192), (100, 192, 192), (92, 196, 196)]},
    "realistic": {"spacing": (1.0, 0.7, 0.7), "shapes": [(300, 512, 512), (310, 512, 512), (290, 504, 504)]},
}
# Field-of-view centres (world mm) per timepoint: the scanner centres the patient slightly differently.
_FOV_CENTRES = [(0.0, 6.0, 0.0), (4.0, 6.0, 1.0), (-3.0, 5.0, -1.0)]
TIMEPOINT_DATES = ("2024-01-15", "2024-04-16", "2024-07-18")
_BREATH_MM = (0.0, 6.0, -4.0)
_PSF_MM = (1.0, 0.75, 0.75)  # partial-volume blur (Gaussian sigma, z, y, x); at least 0.4 voxel
_SLAB_VOXELS = 1_500_000     # render this many voxels at a time to bound memory on big grids


@dataclass(frozen=True)
class LesionRecord:
    """One row of the study's lesion table.

    Attributes
    ----------
    id, kind, organ : int, str, str
    present : tuple of bool
        Whether the lesion is in the ground truth at each timepoint.
    volume_ml : tuple of float
        Ground-truth volume per timepoint measured from the label map (voxel count x voxel volume).
    nominal_volume_ml : tuple of float
        Volume of the continuous model per timepoint (``scale**3`` x baseline model volume).
    scale : tuple of float
        Linear size factor per timepoint (0 when absent).
    centre_world : tuple of (tuple of float or None)
        Expected world centroid (z, y, x) mm of the ground-truth mask per timepoint, from the
        known pose (None when absent).
    diameter_mm : float
        Equivalent-sphere diameter of the model at scale 1.
    hu : float
        Lesion attenuation (solid part).
    """

    id: int
    kind: str
    organ: str
    present: tuple[bool, ...]
    volume_ml: tuple[float, ...]
    nominal_volume_ml: tuple[float, ...]
    scale: tuple[float, ...]
    centre_world: tuple[tuple[float, float, float] | None, ...]
    diameter_mm: float
    hu: float


@dataclass
class SyntheticStudy:
    """A rendered study: images, ground-truth label maps, lesion table and the known poses.

    ``tissues`` holds each scan's anatomy tissue map (uint8 codes of :class:`.anatomy.Tissue`, same
    grid as the image, lesions not included), useful to check HU statistics or leakage.
    """

    images: list[Image]
    labels: list[LabelMap]
    lesions: list[LesionRecord]
    poses: list[PatientPose]
    models: list[LesionModel]
    seed: int
    size: str
    case: str
    noise_hu: float
    tissues: list[np.ndarray] = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)

    @property
    def pairs(self) -> list[tuple[Image, LabelMap]]:
        """(image, ground-truth label map) per timepoint, baseline first."""
        return list(zip(self.images, self.labels))

    def lesion(self, lesion_id: int) -> LesionRecord:
        """The lesion table row of ``lesion_id`` (KeyError when there is none)."""
        for row in self.lesions:
            if row.id == lesion_id:
                return row
        raise KeyError(f"no lesion with id {lesion_id} (ids: {[r.id for r in self.lesions]})")

    def write(self, folder: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the LesionLocator dataset layout (Baseline/, Synthetic_Follow_Up/, ..., naming.csv).

        Returns the ``naming.csv`` path. Refuses to replace existing files unless ``overwrite``.
        """
        from ..io.study_layout import write_study_layout

        return write_study_layout(folder, self.pairs, case=self.case, overwrite=overwrite)


# ----------------------------------------------------------------------------- poses and grids
def _poses(seed: int) -> list[PatientPose]:
    rng = np.random.default_rng([seed, 3])
    poses = [PatientPose.identity()]
    for k in (1, 2):
        direction = rng.normal(size=3)
        direction[1] = -abs(direction[1])  # stay off the table: the patient can only move up from it
        shift = direction / np.linalg.norm(direction) * rng.uniform(4.0, 8.0)
        roll = rng.choice([-1.0, 1.0]) * rng.uniform(1.5, 2.5)
        angles = (roll, rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.7))
        poses.append(PatientPose(rotation_zyx(angles), shift, _BREATH_MM[k]))
    return poses


def _grid(shape, spacing, centre, direction) -> Geometry:
    d = np.asarray(direction, float).reshape(3, 3)
    half = np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0
    origin = np.asarray(centre) - d @ half
    return Geometry(tuple(shape), tuple(spacing), tuple(origin), tuple(d.reshape(-1)))


# ----------------------------------------------------------------------------- rendering
def _render_anatomy(phantom: Phantom, geometry: Geometry, pose: PatientPose) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map (uint8) and noise-free HU (float32), both (z, y, x), of the phantom on ``geometry``."""
    m = geometry.direction_matrix @ np.diag(geometry.spacing)
    a = (pose.rotation.T @ m).astype(np.float32)   # index -> rigid patient coordinates
    b = (pose.rotation.T @ (np.asarray(geometry.origin) - pose.translation_mm)).astype(np.float32)
    nz, ny, nx = geometry.shape
    iy = np.arange(ny, dtype=np.float32)[None, :, None]
    ix = np.arange(nx, dtype=np.float32)[None, None, :]
    tissue = np.empty(geometry.shape, dtype=np.uint8)
    hu = np.empty(geometry.shape, dtype=np.float32)
    boxes = phantom.capsule_boxes(geometry, pose)
    step = max(1, _SLAB_VOXELS // (ny * nx))
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        iz = np.arange(z0, z1, dtype=np.float32)[:, None, None]
        pz, py, px = (b[i] + a[i, 0] * iz + a[i, 1] * iy + a[i, 2] * ix for i in range(3))
        wy = np.float32(geometry.origin[1]) + np.float32(m[1, 0]) * iz + np.float32(m[1, 1]) * iy \
            + np.float32(m[1, 2]) * ix
        t = phantom.render(pz, py, px, pose=pose, world_y=wy, z_range=(z0, z1), boxes=boxes)
        tissue[z0:z1] = t
        hu[z0:z1] = hu_from_tissue(t, pz, py, px)
    return tissue, hu


def _psf_sigma_vox(geometry: Geometry) -> tuple[float, ...]:
    return tuple(max(s_mm / sp, 0.4) for s_mm, sp in zip(_PSF_MM, geometry.spacing))


def _noise_gain(sigma_vox) -> float:
    """Std of unit white noise after the PSF filter (exact, from the discrete kernel)."""
    from scipy.ndimage import gaussian_filter

    n = 2 * int(np.ceil(4 * max(sigma_vox))) + 3
    delta = np.zeros((n, n, n))
    delta[n // 2, n // 2, n // 2] = 1.0
    return float(np.sqrt((gaussian_filter(delta, sigma_vox, mode="constant") ** 2).sum()))


def _acquire(hu: np.ndarray, geometry: Geometry, rng, noise_hu: float) -> np.ndarray:
    """Blur (partial volume) and add correlated noise: white noise goes through the same PSF."""
    from scipy.ndimage import gaussian_filter

    sigma = _psf_sigma_vox(geometry)
    white = rng.standard_normal(hu.shape, dtype=np.float32)
    white *= np.float32(noise_hu / _noise_gain(sigma))
    white += hu
    out = gaussian_filter(white, sigma, mode="nearest")
    del white
    np.rint(out, out=out)
    np.clip(out, -1024.0, 3071.0, out=out)
    return out


def make_synthetic_study(seed: int = 0, size: str = "small", *, direction=None, rotate_grid: bool = False,
                         noise_hu: float | None = None, use_cache: bool = True) -> SyntheticStudy:
    """Render the three-timepoint synthetic study.

    Parameters
    ----------
    seed : int
        Everything random (vessel tree, lesion shapes and positions, poses, noise) follows it.
    size : {"small", "realistic"}
        ``"small"``: about 96 x 192 x 192 voxels at 2.5 x 1.6 x 1.6 mm (z, y, x), a few seconds.
        ``"realistic"``: about 300 x 512 x 512 at 1.0 x 0.7 x 0.7 mm.
    direction : array-like, optional
        3x3 (or 9 values, row-major, (z, y, x) order) direction matrix of every scan's grid.
    rotate_grid : bool
        Use a fixed oblique (non-identity) direction for every grid (ignored when ``direction`` is given).
    noise_hu : float, optional
        Noise std in HU (default: drawn from the seed between 12 and 18).
    use_cache : bool
        ``"small"`` studies are kept in a small per-process cache (a render takes seconds and
        tests ask for the same study often); every call still returns its own array copies.
        ``False`` always renders.

    Returns
    -------
    SyntheticStudy
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if direction is None:
        direction = rotation_zyx((12.0, 5.0, -4.0)) if rotate_grid else np.eye(3)
    direction = np.asarray(direction, float).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-6):
        raise ValueError("direction must be an orthonormal 3x3 matrix")
    if not (use_cache and size == "small"):
        return _render_study(int(seed), size, direction, noise_hu)
    key = (int(seed), size, tuple(np.round(direction, 12).ravel()), noise_hu)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _render_study(int(seed), size, direction, noise_hu)
    return _copy_study(_CACHE[key])


_CACHE: dict[tuple, SyntheticStudy] = {}
_CACHE_SIZE = 4


def _copy_study(study: SyntheticStudy) -> SyntheticStudy:
    """An independent copy: callers may edit arrays, metadata and models freely."""
    return replace(
        study,
        images=[im.with_array(im.array.copy(), metadata=copy.deepcopy(im.metadata)) for im in study.images],
        labels=[lab.copy() for lab in study.labels],
        tissues=[t.copy() for t in study.tissues],
        models=copy.deepcopy(study.models),
        poses=list(study.poses),
        lesions=list(study.lesions),
        timings_s=dict(study.timings_s),
    )


def _render_study(seed: int, size: str, direction: np.ndarray, noise_hu: float | None) -> SyntheticStudy:
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    rng_noise = np.random.default_rng([seed, 4])
    if noise_hu is None:
        noise_hu = float(rng_noise.uniform(12.0, 18.0))
    phantom = Phantom(seed)
    models = lesion_models(phantom, seed)
    poses = _poses(seed)
    spec = SIZES[size]
    case = f"case{seed}"
    images, labels, tissues, timings = [], [], [], {"phantom_s": time.perf_counter() - t_start}
    for k, (shape, pose) in enumerate(zip(spec["shapes"], poses)):
        t0 = time.perf_counter()
        geom = _grid(shape, spec["spacing"], _FOV_CENTRES[k], direction)
        tissue, hu = _render_anatomy(phantom, geom, pose)
        lab = np.zeros(geom.shape, dtype=np.uint16)
        for model in models:
            if model.scales[k] > 0:
                render_lesion(model, model.scales[k], hu, lab, geom, pose)
        t1 = time.perf_counter()
        img = _acquire(hu, geom, np.random.default_rng([seed, 10 + k]), noise_hu)
        del hu
        name = f"{case}_tp{k}"
        images.append(Image(img, geom, name=name, acquisition_date=TIMEPOINT_DATES[k], modality="CT",
                            metadata={"synthetic_seed": seed, "timepoint": k}))
        labels.append(LabelMap(lab, geom, name=f"{name}_lesions"))
        tissues.append(tissue)
        timings[f"tp{k}_render_s"] = t1 - t0
        timings[f"tp{k}_acquire_s"] = time.perf_counter() - t1
    rows = _lesion_table(models, poses, labels)
    timings["total_s"] = time.perf_counter() - t_start
    timings["cpu_s"] = time.process_time() - cpu_start
    return SyntheticStudy(images, labels, rows, poses, models, int(seed), size, case, float(noise_hu), tissues,
                          timings)


def _lesion_table(models, poses, labels) -> list[LesionRecord]:
    rows = []
    for model in models:
        vol0, off = model.nominal_volume_and_centroid()
        present, vols, noms, centres = [], [], [], []
        for k, (pose, lab) in enumerate(zip(poses, labels)):
            s = model.scales[k]
            n = int(np.count_nonzero(lab.array == model.id)) if s > 0 else 0
            present.append(n > 0)
            vols.append(n * lab.geometry.voxel_volume_mm3 / 1000.0)
            noms.append(vol0 * s ** 3)
            if s > 0:
                c = pose.breathe(model.centre) + s * off
                centres.append(tuple(float(v) for v in c @ pose.rotation.T + pose.translation_mm))
            else:
                centres.append(None)
        rows.append(LesionRecord(model.id, model.kind, model.organ, tuple(present), tuple(vols), tuple(noms),
                                 tuple(model.scales), tuple(centres), float((6000.0 * vol0 / np.pi) ** (1 / 3)),
                                 model.hu))
    return rows

"""Lesion models: star-shaped solids with lobulation and spicules, rendered exactly per scan.

A lesion is a star-shaped set around its centre in a local frame (mm): a point ``q`` is inside
when ``|A^-1 q| < s * r(u)``, with ``A`` the rotated semi-axes, ``s`` the per-timepoint scale
(growth/shrinkage; 0 means absent) and ``r(u) = 1 + sum_j a_j exp((u . v_j - 1) / w_j^2)`` a
radius modulation made of Gaussian bumps on the unit sphere (broad bumps lobulate, narrow tall
ones make spicules). The ground truth is exactly that set at the voxel centres.

Lesions are rigid: they follow the breathing displacement of their centre but are not sheared
by it, so a lesion's volume at a timepoint is exactly ``scale**3`` times its baseline volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.geometry import Geometry
from .frames import PatientPose, box_in_index_space

__all__ = ["LesionModel", "render_lesion", "fibonacci_sphere"]


@dataclass
class LesionModel:
    """One lesion in the patient frame.

    Parameters
    ----------
    id : int
        Instance id in the label maps (stable over time).
    kind : str
        ``"solid_nodule"``, ``"part_solid_nodule"``, ``"lung_mass"``, ``"liver_lesion"``, ``"lymph_node"``.
    organ : str
        Where it sits (``"lung"``, ``"liver"``, ``"mediastinum"``).
    centre : np.ndarray
        Phantom-frame centre (z, y, x) mm.
    semi_axes : np.ndarray
        Semi-axes (mm) of the base ellipsoid at scale 1, along the rotated local axes.
    rotation : np.ndarray
        3x3 rotation from local to patient axes (z, y, x).
    scales : tuple of float
        Linear size factor per timepoint (0 = absent).
    hu : float
        Attenuation of the (solid part of the) lesion.
    ggo_hu : float or None
        For part-solid nodules: HU of the ground-glass rim, which keeps brighter tissue
        (vessels) visible through it; the solid core is the inner ``core_fraction`` of the shape.
    """

    id: int
    kind: str
    organ: str
    centre: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray
    scales: tuple[float, ...]
    hu: float
    ggo_hu: float | None = None
    core_fraction: float = 0.5
    bump_dirs: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    bump_amp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bump_width: np.ndarray = field(default_factory=lambda: np.ones(0))
    necrotic_hu: float | None = None  # darker centre for large lesions

    def _surface(self, u: np.ndarray) -> np.ndarray:
        """Surface radius ``r(u)`` (normalised units) for unit vectors ``u`` (..., 3)."""
        surf = np.ones(u.shape[:-1], dtype=u.dtype)
        for v, a, w in zip(self.bump_dirs, self.bump_amp, self.bump_width):
            surf += np.asarray(a, u.dtype) * np.exp((u @ v.astype(u.dtype) - 1.0) / np.asarray(w * w, u.dtype))
        return surf

    @property
    def max_radius_mm(self) -> float:
        """Bound on the distance from the centre to the surface at scale 1 (mm)."""
        return float(self.semi_axes.max() * self._surface(_SPHERE).max() * 1.05)

    def radial(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius ``|A^-1 q|`` and the surface radius ``r(u)`` for local points (..., 3)."""
        local = (q @ self.rotation.astype(q.dtype)) / self.semi_axes.astype(q.dtype)
        rr = np.sqrt((local ** 2).sum(axis=-1))
        u = local / np.maximum(rr, 1e-9)[..., None]
        return rr, self._surface(u)

    def nominal_volume_and_centroid(self) -> tuple[float, np.ndarray]:
        """Exact-to-quadrature volume (ml) and centroid offset (mm, patient axes) at scale 1.

        For a star-shaped set ``{rho < r(u)}`` in the normalised frame the volume is
        ``(1/3) int r^3 dOmega`` and the first moment ``(1/4) int r^4 u dOmega``; the map back to
        patient axes multiplies volumes by ``prod(semi_axes)``.
        """
        r = self._surface(_SPHERE)
        d_omega = 4.0 * np.pi / len(_SPHERE)
        vol_local = (r ** 3).sum() * d_omega / 3.0
        moment = (r[:, None] ** 4 * _SPHERE).sum(axis=0) * d_omega / 4.0
        vol_mm3 = vol_local * float(np.prod(self.semi_axes))
        centroid_local = moment / vol_local
        centroid = (centroid_local * self.semi_axes) @ self.rotation.T
        return float(vol_mm3 / 1000.0), centroid


def fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (equal-area quadrature nodes on the sphere)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([z, r * np.cos(phi), r * np.sin(phi)], axis=1)


_SPHERE = fibonacci_sphere(40_000)


def lesion_field(model: LesionModel, scale: float, geometry: Geometry, pose: PatientPose):
    """The lesion's radial field on the grid box around it: ``(slices, rr, surf)``, or None off the grid.

    ``rr`` is each voxel's normalised radius in the lesion's frame and ``surf`` the surface radius in
    that direction (inside where ``rr < surf``); the box holds the lesion at ``scale`` with a 1 mm margin.
    """
    centre = pose.breathe(model.centre)  # deformed patient position of the lesion centre
    ext = model.max_radius_mm * scale
    start, stop = box_in_index_space(geometry, PatientPose(pose.rotation, pose.translation_mm, 0.0),
                                     centre - ext, centre + ext, margin_mm=1.0)
    if np.any(start >= stop):
        return None
    idx = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(start, stop)), indexing="ij"), axis=-1)
    world = geometry.index_to_world(idx.astype(float))
    q = (pose.world_to_patient_rigid(world) - centre).astype(np.float32)
    rr, surf = model.radial(q / np.float32(scale))
    return tuple(slice(a, b) for a, b in zip(start, stop)), rr, surf


def render_lesion(model: LesionModel, scale: float, hu: np.ndarray, labels: np.ndarray, geometry: Geometry,
                  pose: PatientPose) -> int:
    """Paint one lesion into a scan's HU volume and label map, in place.

    Parameters
    ----------
    model : LesionModel
    scale : float
        Size factor at this timepoint (> 0).
    hu, labels : np.ndarray
        Full-grid arrays (z, y, x) of the scan (noise free HU; instance ids).
    geometry, pose : Geometry, PatientPose
        The scan grid and the patient pose in it.

    Returns
    -------
    int
        Number of voxels labelled.
    """
    local = lesion_field(model, scale, geometry, pose)
    if local is None:
        return 0
    sl, rr, surf = local
    inside = rr < surf
    view, lab = hu[sl], labels[sl]
    if model.ggo_hu is not None:
        view[inside] = np.maximum(view[inside], model.ggo_hu)
        core = inside & (rr < model.core_fraction * surf)
        # Spicules (the tall, narrow bumps) are solid strands reaching out through the lung.
        spicule = inside & (surf > 1.3) & (rr > 0.85)
        view[core | spicule] = model.hu
    else:
        # Smooth radial profile: slightly brighter/darker centre, as in real lesions.
        t = np.clip(rr / surf, 0.0, 1.0)
        centre_hu = model.necrotic_hu if model.necrotic_hu is not None else model.hu
        val = model.hu + (centre_hu - model.hu) * np.clip(1.0 - t / 0.6, 0.0, 1.0)
        view[inside] = val[inside]
    lab[inside] = model.id
    return int(inside.sum())

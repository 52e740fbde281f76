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

__all__ = ["LesionModel", "render_lesion"]


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

    @property
    def max_radius_mm(self) -> float:
        """Bound on the distance from the centre to the surface at scale 1."""
        return float(self.semi_axes.max() * (1.0 + self.bump_amp.clip(min=0).sum()))

    def radial(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius ``|A^-1 q|`` and the surface radius ``r(u)`` for local points (..., 3)."""
        local = (q @ self.rotation) / self.semi_axes
        rr = np.sqrt((local ** 2).sum(axis=-1))
        u = local / np.maximum(rr, 1e-9)[..., None]
        surf = np.ones(rr.shape, dtype=np.float64)
        for v, a, w in zip(self.bump_dirs, self.bump_amp, self.bump_width):
            surf += a * np.exp((u @ v - 1.0) / (w * w))
        return rr, surf

    def nominal_volume_and_centroid(self, step_mm: float | None = None) -> tuple[float, np.ndarray]:
        """Volume (ml) and centroid offset (mm, local patient-axis frame) at scale 1, on a fine grid."""
        ext = self.max_radius_mm
        h = step_mm or ext / 60.0
        ax = np.arange(-ext, ext + h / 2, h)
        g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1)
        rr, surf = self.radial(g)
        inside = rr < surf
        vol_ml = float(inside.sum() * h ** 3 / 1000.0)
        centroid = g[inside].mean(axis=0) if inside.any() else np.zeros(3)
        return vol_ml, centroid


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
    centre = pose.breathe(model.centre)  # deformed patient position of the lesion centre
    ext = model.max_radius_mm * scale
    start, stop = box_in_index_space(geometry, PatientPose(pose.rotation, pose.translation_mm, 0.0),
                                     centre - ext, centre + ext, margin_mm=1.0)
    if np.any(start >= stop):
        return 0
    idx = np.stack(np.meshgrid(*(np.arange(a, b) for a, b in zip(start, stop)), indexing="ij"), axis=-1)
    world = geometry.index_to_world(idx.astype(float))
    q = pose.world_to_patient_rigid(world) - centre
    rr, surf = model.radial(q / scale)
    inside = rr < surf
    sl = tuple(slice(a, b) for a, b in zip(start, stop))
    view, lab = hu[sl], labels[sl]
    if model.ggo_hu is not None:
        view[inside] = np.maximum(view[inside], model.ggo_hu)
        core = inside & (rr < model.core_fraction * surf)
        view[core] = model.hu
    else:
        # Smooth radial profile: slightly brighter/darker centre, as in real lesions.
        t = np.clip(rr / surf, 0.0, 1.0)
        centre_hu = model.necrotic_hu if model.necrotic_hu is not None else model.hu
        val = model.hu + (centre_hu - model.hu) * np.clip(1.0 - t / 0.6, 0.0, 1.0)
        view[inside] = val[inside]
    lab[inside] = model.id
    return int(inside.sum())

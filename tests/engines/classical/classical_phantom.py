"""Small CT-like phantoms defined in world space (mm), so any grid (anisotropic, rotated) samples them alike.

Shared by the classical engine's tests. Shapes are evaluated at voxel centres with a light
blur, plus Gaussian noise; the ground truth is the lesion ellipsoid sampled on the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.core.measurements import dice  # noqa: F401 (re-exported for the tests)


@dataclass
class Lesion:
    center: tuple[float, float, float]  # world mm (z, y, x)
    radii: tuple[float, float, float]  # mm along world (z, y, x)
    hu: float = 30.0


@dataclass
class Scene:
    """A lung-like scene: parenchyma, a chest wall slab at large world x, lesions and vessels."""

    lesions: list[Lesion]
    lung_hu: float = -850.0
    tissue_hu: float = 40.0
    wall_x: float | None = None  # world x (mm) beyond which there is chest wall
    vessels: list[tuple[tuple[float, float, float], tuple[float, float, float], float]] = field(default_factory=list)
    vessel_hu: float = 60.0
    noise: float = 20.0
    body_radius: float | None = None  # air (-1000 HU) outside this radius around the world z axis
    body_hu: float = 40.0  # tissue between the lung and the air outside
    lung_radius: float | None = None  # lung inside this radius (with body_radius), tissue outside


def world_grid(geometry: Geometry) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), axis=-1).astype(float)
    return geometry.index_to_world(idx)


def lesion_mask(world: np.ndarray, lesion: Lesion) -> np.ndarray:
    rel = (world - np.asarray(lesion.center)) / np.asarray(lesion.radii)
    return (rel**2).sum(-1) <= 1.0


def render(scene: Scene, geometry: Geometry, seed: int = 0, world_map=None) -> tuple[Image, LabelMap]:
    """Image (HU, float32) and ground-truth instance labels (lesion k -> id k+1) on ``geometry``.

    ``world_map`` (optional) maps the grid's world points (..., 3) to scene coordinates, e.g. the
    inverse of a known motion to render a moved follow-up.
    """
    world = world_grid(geometry)
    if world_map is not None:
        world = world_map(world)
    vol = np.full(geometry.shape, scene.lung_hu, dtype=np.float32)
    r_axial = np.hypot(world[..., 1], world[..., 2])
    if scene.lung_radius is not None:
        vol[r_axial > scene.lung_radius] = scene.body_hu
    if scene.body_radius is not None:
        vol[r_axial > scene.body_radius] = -1000.0
    if scene.wall_x is not None:
        vol[world[..., 2] >= scene.wall_x] = scene.tissue_hu
    for p0, direction, radius in scene.vessels:
        d = np.asarray(direction, dtype=float)
        d /= np.linalg.norm(d)
        rel = world - np.asarray(p0)
        along = rel @ d
        perp = rel - along[..., None] * d
        vol[np.linalg.norm(perp, axis=-1) <= radius] = scene.vessel_hu
    labels = np.zeros(geometry.shape, dtype=np.uint16)
    for k, lesion in enumerate(scene.lesions):
        m = lesion_mask(world, lesion)
        vol[m] = lesion.hu
        labels[m] = k + 1
    sigma = 0.6 / np.asarray(geometry.spacing)
    vol = ndimage.gaussian_filter(vol, np.where(sigma < 0.25, 0, sigma))
    rng = np.random.default_rng(seed)
    vol = vol + rng.normal(0, scene.noise, vol.shape).astype(np.float32)
    return Image(vol.astype(np.float32), geometry, "phantom"), LabelMap(labels, geometry, "phantom_gt")


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def centered_geometry(shape, spacing, center=(0.0, 0.0, 0.0), direction=None) -> Geometry:
    """A grid of ``shape``/``spacing`` whose centre lies at world ``center`` (mm), axes ``direction``."""
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    half = (np.asarray(shape) - 1) / 2 * np.asarray(spacing)
    origin = np.asarray(center) - direction @ half
    return Geometry(tuple(shape), tuple(spacing), tuple(origin), tuple(direction.reshape(-1)))



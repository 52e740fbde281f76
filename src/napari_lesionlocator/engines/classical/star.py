"""Compact (star-shaped) lesion estimate from a click, for lesions without an intensity edge.

When a lesion has nearly the density of the tissue around it (a sarcoma in muscle, a
metastasis in an organ on low-dose CT), no global HU interval separates them: thresholding
from the click floods the whole organ. The lesion's boundary is then only a *local* change
of intensity. This module casts rays from the click in physical millimetres, places the
boundary on each ray at the nearest clear intensity change (a local maximum of the radial
derivative well above its noise level near the click), or where the ray leaves the lesion's
broad HU interval (fat, bone, air, contrast vessels end every ray), smooths the radius
function over the sphere (median of neighbouring directions, which drops single rays caught
by a vessel or noise) and fills the star-shaped region. The result never reaches further
than ``max_radius_mm`` from the click: a bounded, compact estimate rather than an organ.

All arrays are indexed (z, y, x); spacings and radii are in mm. Rays are cast in the scaled
index space (index x spacing), which is isometric to world space for any direction matrix.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["fibonacci_directions", "star_region", "radial_regularise"]

STAR_SIGMA_MM = 1.5
STAR_MIN_RADIUS_MM = 3.0
STAR_DIRECTIONS = 256
STAR_NEIGHBOURS = 12
# An edge is a local maximum of |d intensity / d r| above this many times its noise level.
EDGE_FACTOR = 3.0


def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors on the sphere, shape (n, 3), components (z, y, x)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], axis=1)


def star_region(
    work: np.ndarray,
    spacing,
    seed,
    low: float,
    high: float,
    *,
    max_radius_mm: float,
    min_radius_mm: float = STAR_MIN_RADIUS_MM,
    n_directions: int = STAR_DIRECTIONS,
) -> tuple[np.ndarray, float]:
    """Star-shaped region around ``seed`` bounded by the nearest clear edge along each ray.

    Parameters
    ----------
    work : np.ndarray
        Intensities (HU) on a grid indexed (z, y, x).
    spacing : array-like
        Voxel size in mm along (z, y, x).
    seed : tuple of int
        The click, voxel index (z, y, x) on ``work``.
    low, high : float
        The lesion's broad HU interval: a ray ends where the smoothed image leaves it.
    max_radius_mm : float
        No ray reaches further (the plausible size of a clicked lesion).
    min_radius_mm : float
        Edges closer to the click are ignored (noise, the lesion's own texture).
    n_directions : int
        Number of rays.

    Returns
    -------
    mask : np.ndarray
        bool on ``work``'s grid (the seed is always inside).
    contrast : float
        Median edge strength on the chosen boundary divided by the median intensity change
        inside it (HU/mm over HU/mm; about 1 means no real edge was found).
    """
    sp = np.asarray(spacing, dtype=float)
    seed_a = np.asarray(seed, dtype=float)
    img = ndimage.gaussian_filter(np.asarray(work, dtype=np.float32), STAR_SIGMA_MM / sp, mode="nearest", truncate=2.5)
    dirs = fibonacci_directions(n_directions)
    step = max(0.5, 0.75 * float(sp.min()))
    radii = np.arange(0.0, max_radius_mm + step, step)
    pts = seed_a[None, None, :] + dirs[:, None, :] * radii[None, :, None] / sp[None, None, :]
    prof = ndimage.map_coordinates(img, pts.reshape(-1, 3).T, order=1, mode="nearest").reshape(len(dirs), radii.size)
    # Samples outside the grid carry no information: the ray ends at the grid's border.
    inside = np.all((pts >= -0.5) & (pts <= np.asarray(img.shape) - 0.5), axis=2)
    leaves = ((prof < low) | (prof > high) | ~inside) & (radii[None, :] > 0.5 * min_radius_mm)
    end = np.where(leaves.any(axis=1), leaves.argmax(axis=1), radii.size - 1)
    edge = np.abs(np.gradient(prof, step, axis=1))
    first = int(np.ceil(min_radius_mm / step))
    # Noise level of the edge signal: its median near the click, where the lesion is (HU/mm).
    noise = max(float(np.median(edge[:, : max(2, 2 * first)])), 1e-3)
    peak = (edge >= np.roll(edge, 1, axis=1)) & (edge >= np.roll(edge, -1, axis=1)) & (edge > EDGE_FACTOR * noise)
    r_edge = np.empty(len(dirs))
    strength = np.empty(len(dirs))
    for k in range(len(dirs)):
        stop = max(int(end[k]) + 1, first + 1)
        # The nearest clear edge (a weak lesion boundary inside an organ comes before the organ's
        # own strong boundary); without one, where the ray leaves the soft-tissue interval.
        hits = np.flatnonzero(peak[k, first:stop])
        j = first + int(hits[0]) if hits.size else min(stop - 1, radii.size - 1)
        r_edge[k], strength[k] = radii[j], edge[k, j]
    # A boundary is smooth: the median of neighbouring rays drops rays that hit a vessel or noise.
    tree = cKDTree(dirs)
    _, nn = tree.query(dirs, k=min(STAR_NEIGHBOURS, len(dirs)))
    for _ in range(2):
        r_edge = np.median(r_edge[nn], axis=1)
    contrast = float(np.median(strength) / noise)
    return _fill(img.shape, sp, seed_a, dirs, tree, r_edge), contrast


def _fill(shape, sp: np.ndarray, seed: np.ndarray, dirs: np.ndarray, tree: cKDTree, r_edge: np.ndarray) -> np.ndarray:
    """Voxels whose distance (mm) to ``seed`` is within the radius of their direction.

    The radius function is tabulated on a polar/azimuth grid (mean of the 3 nearest rays) so
    that each voxel needs only a table look-up, not a nearest-neighbour query (speed).
    """
    n_polar, n_azimuth = 64, 128
    polar = np.linspace(0.0, np.pi, n_polar)
    azimuth = np.linspace(-np.pi, np.pi, n_azimuth, endpoint=False)
    pp, aa = np.meshgrid(polar, azimuth, indexing="ij")
    grid_dirs = np.stack([np.cos(pp), np.sin(pp) * np.sin(aa), np.sin(pp) * np.cos(aa)], axis=-1).reshape(-1, 3)
    _, idx = tree.query(grid_dirs, k=3)
    table = r_edge[idx].mean(axis=1).reshape(n_polar, n_azimuth)
    reach = float(r_edge.max())
    lo = np.maximum(np.floor(seed - reach / sp), 0).astype(int)
    hi = np.minimum(np.ceil(seed + reach / sp) + 1, np.asarray(shape)).astype(int)
    z, y, x = np.ogrid[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))]
    z, y, x = (z - seed[0]) * sp[0], (y - seed[1]) * sp[1], (x - seed[2]) * sp[2]
    dist = np.sqrt(z**2 + y**2 + x**2)
    ip = np.rint(np.arccos(np.clip(z / np.maximum(dist, 1e-9), -1.0, 1.0)) / np.pi * (n_polar - 1)).astype(int)
    ia = np.rint((np.arctan2(y, x) + np.pi) / (2 * np.pi) * n_azimuth).astype(int) % n_azimuth
    mask = np.zeros(shape, dtype=bool)
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = dist <= table[ip, np.broadcast_to(ia, dist.shape)]
    mask[tuple(int(v) for v in seed)] = True
    return mask


def radial_regularise(mask: np.ndarray, spacing, seed, *, clamp: float = 1.7, n_directions: int = STAR_DIRECTIONS
                      ) -> tuple[np.ndarray, float]:
    """Shape prior for a lesion mask: keep what a smooth star-shaped region around ``seed`` allows.

    Along each ray from ``seed`` (its deepest point) the mask's radius is where the ray first
    leaves it. Lesions are roughly star-shaped around their centre with a smooth radius
    function: the radius function is smoothed (median of neighbouring rays, which drops thin
    vessels and spicule-like leaks) and clamped at ``clamp`` times its median over all rays (a
    leak into a neighbour of the same density along a broad front is far longer than the
    lesion's own radius on its free side). The result is the mask inside that radius function.

    Returns the regularised mask and the share of the mask's voxels it removed.
    """
    sp = np.asarray(spacing, dtype=float)
    seed_a = np.asarray(seed, dtype=float)
    if not mask.any():
        return mask, 0.0
    idx = np.argwhere(mask)
    reach = float(np.sqrt((((idx - seed_a) * sp) ** 2).sum(axis=1)).max()) + float(sp.max())
    dirs = fibonacci_directions(n_directions)
    step = max(0.4, 0.5 * float(sp.min()))
    radii = np.arange(0.0, reach + step, step)
    pts = seed_a[None, None, :] + dirs[:, None, :] * radii[None, :, None] / sp[None, None, :]
    vals = ndimage.map_coordinates(mask.astype(np.float32), pts.reshape(-1, 3).T, order=1, mode="constant",
                                   cval=0.0).reshape(len(dirs), radii.size)
    out = vals < 0.5
    r_mask = np.where(out.any(axis=1), radii[out.argmax(axis=1)], radii[-1])
    tree = cKDTree(dirs)
    _, nn = tree.query(dirs, k=min(STAR_NEIGHBOURS, len(dirs)))
    r_s = r_mask.copy()
    for _ in range(2):
        r_s = np.median(r_s[nn], axis=1)
    # Smooth where the mask is longer than its neighbours (protrusions), keep its own radius elsewhere
    # (plus a voxel: the ray's first exit lies inside the mask's last voxel).
    r_final = np.minimum(r_mask, r_s + float(sp.max()))
    r_final = np.minimum(r_final, clamp * float(np.median(r_s)))
    star = _fill(mask.shape, sp, seed_a, dirs, tree, r_final + 0.5 * float(sp.max()))
    kept = mask & star
    removed = 1.0 - float(kept.sum()) / float(mask.sum())
    return kept, removed

"""New-lesion candidates at a follow-up: lesion-like regions with no lesion at the matching baseline place.

Temporal subtraction after registration, made tolerant to residual misalignment:

1. both scans are block-averaged to ~2 mm voxels (noise down, cost bounded) and lightly smoothed;
   the baseline is resampled onto the follow-up's working grid through the global registration;
2. *tolerant* differences (the maximum / minimum filter of the registered baseline over a
   ``TOLERANCE_MM`` cube, as in difference imaging): a region brighter than everything the
   baseline had nearby (a new nodule or node) or darker than everything nearby (a new hypodense
   organ lesion); edges that merely moved a few millimetres (breathing, posture) cancel;
3. connected regions above a threshold set from the difference image's own noise (MAD), which
   are lesion-like: at least ``MIN_DIAMETER_MM`` across (an inscribed ball of half that), soft
   tissue at the follow-up, in lung, fat or an organ (not bone, not air, not the body outline),
   compact (no thin sheets along a moved edge), away from the tracked lesions;
4. each survivor is re-checked after a local rigid+affine refinement of the registration around
   it, on a finer grid, with a smaller tolerance; score = mean excess contrast in its core over
   the noise, times a compactness factor. Best first; they are proposals, never added as lesions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from scipy import ndimage

from ...core.geometry import Geometry
from ...core.image import Image
from ...core.results import LesionMask, LesionResult
from . import register as reg

__all__ = ["new_lesion_candidates"]

WORK_MM = 2.0
TOLERANCE_MM = 7.0
LOCAL_TOLERANCE_MM = 3.0
LUNG_TOLERANCE_MM = 3.0
BASELINE_SIGMA_MM = 1.5
ORGAN_FLOOR_HU = -20.0
MIN_DIAMETER_MM = 5.0
MAX_DIAMETER_MM = 70.0
MIN_CONTRAST_HU = 12.0
MAX_CANDIDATES = 8
MAX_CONFIRM = 6
LOCAL_HALF_MM = 35.0


def _xyz(zyx):
    return np.asarray(zyx, dtype=float)[..., ::-1]


def _zyx(xyz):
    return np.asarray(xyz, dtype=float)[..., ::-1]


def _block_mean(array: np.ndarray, geometry: Geometry, target_mm: float) -> tuple[np.ndarray, Geometry]:
    """Mean over blocks of ~``target_mm`` (integer voxels per axis), slab by slab; the coarse grid."""
    step = np.maximum(1, np.round(target_mm / np.asarray(geometry.spacing))).astype(int)
    shape = np.asarray(array.shape) // step
    shape = np.maximum(shape, 1)
    out = np.empty(tuple(int(v) for v in shape), dtype=np.float32)
    sz, sy, sx = (int(v) for v in step)
    ny, nx = int(shape[1]) * sy, int(shape[2]) * sx
    slab = max(1, 64 // sz)
    for z0 in range(0, int(shape[0]), slab):
        z1 = min(int(shape[0]), z0 + slab)
        block = np.asarray(array[z0 * sz : z1 * sz, :ny, :nx], dtype=np.float32)
        # One axis at a time, innermost first (one multi-axis reduction is several times slower).
        block = block.reshape(z1 - z0, sz, int(shape[1]), sy, int(shape[2]), sx).sum(axis=5)
        out[z0:z1] = block.sum(axis=3).sum(axis=1) * (1.0 / float(sz * sy * sx))
    origin = geometry.index_to_world((step - 1) / 2.0)
    geo = Geometry(out.shape, tuple(np.asarray(geometry.spacing) * step), tuple(origin), geometry.direction)
    return out, geo


def _on_grid(src: np.ndarray, src_geo: Geometry, m: np.ndarray, dst_geo: Geometry, default: float, order=1):
    """``src`` resampled onto ``dst_geo`` through ``m`` (baseline -> follow-up world, xyz)."""
    sitk = reg._sitk()
    ref = sitk.Image([int(v) for v in dst_geo.shape[::-1]], sitk.sitkFloat32)
    itk = dst_geo.to_itk()
    ref.SetSpacing(itk["spacing"])
    ref.SetOrigin(itk["origin"])
    ref.SetDirection(itk["direction"])
    interp = sitk.sitkLinear if order == 1 else sitk.sitkNearestNeighbor
    out = sitk.Resample(reg.to_sitk(src, src_geo), ref, reg.sitk_affine(reg.invert(m)), interp, float(default),
                        sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _smooth(a: np.ndarray, spacing, sigma_mm: float) -> np.ndarray:
    return ndimage.gaussian_filter(a, np.maximum(sigma_mm / np.asarray(spacing), 0.0), mode="nearest", truncate=2.5)


def _tolerant_difference(f: np.ndarray, b: np.ndarray, spacing, tol_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(brighter than anything nearby at baseline, darker than anything nearby at baseline), HU."""
    size = np.maximum(1, 2 * np.round(tol_mm / np.asarray(spacing)).astype(int) + 1)
    return f - ndimage.maximum_filter(b, size=tuple(int(v) for v in size), mode="nearest"), \
        ndimage.minimum_filter(b, size=tuple(int(v) for v in size), mode="nearest") - f


def _noise(img: np.ndarray, where: np.ndarray) -> float:
    """Noise std (HU) of a smoothed image: local std in 5-voxel windows, in its most homogeneous fifth."""
    mean = ndimage.uniform_filter(img, size=5)
    var = np.maximum(ndimage.uniform_filter(img * img, size=5) - mean * mean, 0.0)
    vals = var[where]
    if vals.size < 100:
        return 10.0
    return max(2.0, float(np.sqrt(np.percentile(vals, 20))))


def _regions(f, b_pos, b_neg, valid, spacing, exclude, thr_pos, thr_neg):
    """Labelled lesion-like regions of the tolerant differences, with per-region facts."""
    body = f > -300.0  # soft tissue or denser at the follow-up (a nodule in the lung is)
    soft = (f > -150.0) & (f < 250.0)
    # What the region sits in: lung around a bright region, an organ (30-120 HU) around a dark one.
    lung_near = ndimage.minimum_filter(f, size=5) < -500.0
    organ = ndimage.uniform_filter(((f > 20.0) & (f < 130.0)).astype(np.float32), size=5) > 0.5
    pos = (b_pos > thr_pos) & soft & valid & ~exclude & body
    neg = (b_neg > thr_neg) & soft & organ & valid & ~exclude
    out = []
    for sign, cand, diff in ((1, pos, b_pos), (-1, neg, b_neg)):
        lab, n = ndimage.label(cand)
        if not n:
            continue
        for k, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None:
                continue
            comp = lab[sl] == k
            n_vox = int(comp.sum())
            vol = n_vox * float(np.prod(spacing))
            diam = (6.0 * vol / np.pi) ** (1 / 3)
            if diam < MIN_DIAMETER_MM or diam > MAX_DIAMETER_MM:
                continue
            depth = ndimage.distance_transform_edt(np.pad(comp, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
            if float(depth.max()) < 0.5 * MIN_DIAMETER_MM * 0.8:
                continue
            ext = (np.array([s.stop - s.start for s in sl]) * np.asarray(spacing))
            # Compactness: volume against the box's inscribed ellipsoid (1 for an ellipsoid).
            compact = float(min(1.0, vol / (np.pi / 6.0 * float(np.prod(ext)))))
            if compact < 0.25:
                continue
            core = depth >= 0.5 * float(depth.max())
            contrast = float(np.mean(diff[sl][core]))
            where = "lung" if sign > 0 and bool(lung_near[sl][comp].mean() > 0.3) else ("organ" if sign < 0 else "soft")
            c = np.argwhere(comp).mean(axis=0) + np.array([s.start for s in sl])
            out.append({"sign": sign, "slices": sl, "mask": comp, "centre": c, "diam": diam, "contrast": contrast,
                        "compact": compact, "where": where})
    return out


def new_lesion_candidates(
    baseline: Image,
    baseline_masks: Mapping[int, LesionMask],
    followup: Image,
    m_global: np.ndarray,
    tracked: Mapping[int, LesionResult],
    check: Callable[[], None] = lambda: None,
) -> list[dict]:
    """Proposed new lesions at ``followup`` (see the module doc), best first.

    Each is ``{"centroid_mm": [z, y, x], "box": [zmin, zmax, ymin, ymax, xmin, xmax], "score": s}``
    with the box in the follow-up's voxel indices (max exclusive).
    """
    fgeo = followup.geometry
    f, fg = _block_mean(followup.array, fgeo, WORK_MM)
    b, bg = _block_mean(baseline.array, baseline.geometry, WORK_MM)
    check()
    sp = np.asarray(fg.spacing)
    b_on = _on_grid(b, bg, m_global, fg, -1000.0)
    valid = _on_grid(np.ones(b.shape, np.float32), bg, m_global, fg, 0.0, order=0) > 0.5
    tol_vox = np.maximum(1, np.round(TOLERANCE_MM / sp)).astype(int)
    # Erosion by a box is a separable minimum filter (far faster than a 3D structuring element).
    valid = ndimage.minimum_filter(valid.view(np.uint8), size=tuple(int(v) for v in 2 * tol_vox + 1),
                                   mode="constant", cval=0).view(bool)
    check()
    fs = _smooth(f, sp, 1.5)
    # The baseline is smoothed more: only what it had at a lesion's scale matters, and its noise
    # would otherwise pull the maximum / minimum filters by a few noise widths.
    bs = _smooth(b_on, sp, BASELINE_SIGMA_MM)
    pos, _ = _tolerant_difference(fs, bs, sp, TOLERANCE_MM)
    # Darker than anything nearby *in the organ*: fat or lung beside an organ lesion at the
    # organ's border is no reason to miss it.
    _, neg = _tolerant_difference(fs, np.where(bs < ORGAN_FLOOR_HU, 1000.0, bs).astype(np.float32), sp,
                                  TOLERANCE_MM)
    # Where the baseline had aerated lung, new soft tissue next to the chest wall or the
    # mediastinum (a new juxtapleural nodule) is within the wide tolerance of that same-density
    # neighbour: there a narrower tolerance applies (the local re-check removes what moved).
    pos_near, _ = _tolerant_difference(fs, bs, sp, LUNG_TOLERANCE_MM)
    was_lung = bs < -400.0
    pos = np.where(was_lung, np.maximum(pos, pos_near), pos)
    del pos_near, was_lung
    check()
    # Where a lesion is already tracked (its follow-up mask) or was at baseline (mapped), no new one.
    exclude = np.zeros(f.shape, dtype=bool)
    for r in tracked.values():
        if r.mask.is_empty:
            continue
        idx = (np.argwhere(r.mask.array) + np.asarray(r.mask.start))
        w = fg.world_to_index(fgeo.index_to_world(idx[:: max(1, len(idx) // 4000)].astype(float)))
        w = np.clip(np.round(w).astype(int), 0, np.asarray(f.shape) - 1)
        exclude[tuple(w.T)] = True
    for lm in baseline_masks.values():
        if lm.is_empty:
            continue
        idx = np.argwhere(lm.array) + np.asarray(lm.start)
        world = _zyx(reg.apply(m_global, _xyz(baseline.geometry.index_to_world(idx[:: max(1, len(idx) // 4000)]
                                                                               .astype(float)))))
        w = np.clip(np.round(fg.world_to_index(world)).astype(int), 0, np.asarray(f.shape) - 1)
        exclude[tuple(w.T)] = True
    if exclude.any():
        exclude = ndimage.distance_transform_edt(~exclude, sampling=sp) <= 6.0
    soft = (fs > -150.0) & (fs < 250.0) & valid
    # Noise of a difference of two smoothed scans (each with its own noise).
    noise_p = noise_n = float(np.hypot(_noise(fs, soft), _noise(bs, soft)))
    thr_p = max(MIN_CONTRAST_HU, 2.5 * noise_p)
    thr_n = max(MIN_CONTRAST_HU, 2.5 * noise_n)
    regions = _regions(fs, pos, neg, valid, sp, exclude, thr_p, thr_n)
    check()
    for r in regions:
        noise = noise_p if r["sign"] > 0 else noise_n
        r["score"] = r["contrast"] / noise * (0.5 + 0.5 * r["compact"])
    regions.sort(key=lambda r: -r["score"])
    out = []
    for r in regions[:MAX_CONFIRM]:
        check()
        confirmed = _confirm(baseline, followup, m_global, fg, r)
        if confirmed is None:
            continue
        out.append(confirmed)
        if len(out) >= MAX_CANDIDATES:
            break
    out.sort(key=lambda c: -c["score"])
    return out


def _confirm(baseline: Image, followup: Image, m_global: np.ndarray, fg: Geometry, r: dict) -> dict | None:
    """Re-check one region after a local registration refinement; the candidate entry or None."""
    fgeo, bgeo = followup.geometry, baseline.geometry
    c_idx = fgeo.world_to_index(fg.index_to_world(r["centre"]))
    c_world = fgeo.index_to_world(c_idx)
    # The follow-up box of the region (voxel indices of the native follow-up grid).
    sl = r["slices"]
    corners = np.array([[a, b_, c] for a in (sl[0].start - 0.5, sl[0].stop - 0.5)
                        for b_ in (sl[1].start - 0.5, sl[1].stop - 0.5) for c in (sl[2].start - 0.5, sl[2].stop - 0.5)])
    ci = fgeo.world_to_index(fg.index_to_world(corners))
    lo = np.clip(np.floor(ci.min(axis=0)).astype(int), 0, fgeo.shape)
    hi = np.clip(np.ceil(ci.max(axis=0)).astype(int) + 1, 0, fgeo.shape)
    # Local refinement: baseline region around the point the candidate maps back to.
    inv = reg.invert(m_global)
    b_world = _zyx(reg.apply(inv, _xyz(c_world)))
    b_idx = bgeo.world_to_index(b_world)
    bsp = np.asarray(bgeo.spacing)
    fa = np.clip(np.floor(b_idx - LOCAL_HALF_MM / bsp).astype(int), 0, bgeo.shape)
    fb = np.clip(np.ceil(b_idx + LOCAL_HALF_MM / bsp).astype(int) + 1, 0, bgeo.shape)
    fsp = np.asarray(fgeo.spacing)
    ma = np.clip(np.floor(c_idx - (LOCAL_HALF_MM + 15.0) / fsp).astype(int), 0, fgeo.shape)
    mb = np.clip(np.ceil(c_idx + (LOCAL_HALF_MM + 15.0) / fsp).astype(int) + 1, 0, fgeo.shape)
    m = m_global
    if np.all(fb - fa >= 8) and np.all(mb - ma >= 8):
        fixed = reg.downsampled(baseline.array, bgeo, reg.LOCAL_SPACING_MM, fa, fb)
        moving = reg.downsampled(followup.array, fgeo, reg.LOCAL_SPACING_MM, ma, mb)
        try:
            m_local = reg.local_translation(fixed, moving, m_global)
        except RuntimeError:
            m_local = m_global
        moved = np.linalg.norm(reg.apply(m_local, _xyz(b_world)) - reg.apply(m_global, _xyz(b_world)))
        if moved <= 15.0 and reg.similarity(fixed, moving, m_local) < reg.similarity(fixed, moving, m_global):
            m = m_local
    # Finer local grid (~1.5 mm) around the candidate, smaller tolerance.
    pad = np.ceil((10.0 + LOCAL_TOLERANCE_MM) / fsp).astype(int)
    la, lb = np.maximum(lo - pad, 0), np.minimum(hi + pad, fgeo.shape)
    sub = np.asarray(followup.array[la[0]:lb[0], la[1]:lb[1], la[2]:lb[2]], np.float32)
    sub_geo = fgeo.crop(la, lb)
    f_loc, f_lg = _block_mean(sub, sub_geo, reg.LOCAL_SPACING_MM)
    bpad = np.ceil((LOCAL_HALF_MM + 20.0) / bsp).astype(int)
    ba = np.clip(np.round(b_idx).astype(int) - bpad, 0, bgeo.shape)
    bb = np.clip(np.round(b_idx).astype(int) + bpad + 1, 0, bgeo.shape)
    bsub = np.asarray(baseline.array[ba[0]:bb[0], ba[1]:bb[1], ba[2]:bb[2]], np.float32)
    b_loc, b_lg = _block_mean(bsub, bgeo.crop(ba, bb), reg.LOCAL_SPACING_MM)
    b_on = _on_grid(b_loc, b_lg, m, f_lg, -1000.0)
    lsp = np.asarray(f_lg.spacing)
    fs = _smooth(f_loc, lsp, 1.2)
    bs = _smooth(b_on, lsp, 1.2)
    pos, neg = _tolerant_difference(fs, bs, lsp, LOCAL_TOLERANCE_MM)
    diff = pos if r["sign"] > 0 else neg
    # The region on the local grid (nearest voxels of the coarse mask).
    idx = np.argwhere(r["mask"]) + np.array([s.start for s in sl])
    w = np.round(f_lg.world_to_index(fg.index_to_world(idx.astype(float)))).astype(int)
    ok = np.all((w >= 0) & (w < np.asarray(diff.shape)), axis=1)
    if not ok.any():
        return None
    w = w[ok]
    vals = diff[tuple(w.T)]
    keep = float(np.mean(vals > 0.5 * MIN_CONTRAST_HU))
    if keep < 0.4:
        return None
    contrast = float(np.median(vals))
    score = r["score"] * min(1.0, max(0.0, contrast) / max(1e-3, r["contrast"])) * keep
    if score <= 0:
        return None
    centre_mm = [float(v) for v in c_world]
    box = [int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2])]
    return {"centroid_mm": centre_mm, "box": box, "score": round(float(score), 3)}

"""Seeded, intensity-adaptive lesion segmentation from one point or box (no learned weights).

Pipeline, run on a region of interest around the prompt (see :mod:`.roi`):

1. light Gaussian smoothing (sigma in mm, so anisotropic grids are treated alike);
2. lesion intensity from a robust estimate at the prompt's core (median, MAD, 10-90 %
   range) and an acceptance interval whose ends sit halfway to the dominant darker / brighter
   tissue of the surroundings (so hypo- and hyper-dense lesions both work); air-like cores
   (aerated lung) are refused;
3. threshold, keep the component connected to the seed (6-connectivity, limits leaks), fill
   its holes; then a second look: the model is re-estimated from that first estimate's
   interior and the 1.5-6 mm ring around it (the lesion's real neighbour), and thresholded again;
4. morphological opening with a radius adapted to the lesion's inscribed radius (exact
   Euclidean balls via distance transforms) cuts touching vessels; a bounded reconstruction
   restores the lesion's own surface;
5. distance-transform watershed splits structures joined by a neck (chest wall, organs), and
   basins are merged back when the neck is not a real constriction;
6. holes are filled and the component holding the seed is kept; a lung lesion whose
   surroundings are mostly ground glass gets that rim added (part-solid nodules).

Point prompts start with a 25 mm search radius and grow it once, to 3.5 inscribed radii + 10 mm,
when the lesion is not enclosed; box prompts restrict the mask to the box. A point mask that
still is not enclosed then, reaches further than that from the click, or is larger than a
12 cm ball has leaked into tissue of the same density (a sarcoma in muscle): it is replaced by
a compact star-shaped estimate bounded by the nearest clear edge around the click, within
45 mm (:mod:`.star`), with a message saying so. Every function works
in voxel indices (z, y, x) with spacing in mm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .roi import Roi, ball_mask, ellipsoid_mask, roi_bounds_mm
from .star import radial_regularise, star_region

__all__ = ["IntensityModel", "RoiMask", "segment_point", "segment_box", "lesion_intensity_model"]

SMOOTH_SIGMA_MM = 0.8
NOISE_FLOOR_HU = 12.0
POINT_START_RADIUS_MM = 25.0
POINT_MAX_RADIUS_MM = 140.0
BOX_MARGIN_MM = 8.0
MAX_OPEN_RADIUS_MM = 5.0
# A click's lesion reaches at most this far from the click when its mask had to be estimated
# from local edges (no intensity contrast): bounds the compact fallback (mm).
LEAK_FALLBACK_RADIUS_MM = 45.0
# Its rays end where the image leaves the lesion's interval widened to +-60 HU (soft tissue
# spans about that; fat, air, bone and contrast lie beyond).
SOFT_TISSUE_SPAN_HU = 60.0
# An intensity region from a click larger than a 12 cm ball (905 mL) has leaked into an organ.
PLAUSIBLE_POINT_VOLUME_MM3 = 4.0 / 3.0 * np.pi * 60.0**3
# Lesions are tissue: a core darker than this is air or aerated lung, not a lesion (HU).
AIR_LIKE_HU = -600.0
# A ground-glass rim found around a solid part adds at least this share of its volume.
GGO_MIN_GAIN = 0.25
# Ground glass is searched for only when the lesion's lower threshold is this far above the lung (HU).
GGO_GAP_HU = 250.0


@dataclass(frozen=True)
class IntensityModel:
    """Lesion intensity: ``center`` and the accepted interval [low, high], all in HU."""

    center: float
    low: float
    high: float
    dark: float | None = None  # most common darker tissue around (HU), when there is one


@dataclass
class RoiMask:
    """A lesion mask on a crop of the full volume.

    ``mask`` is bool on the crop ``[start, stop)`` (full-volume voxel indices, z, y, x).
    """

    mask: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    message: str = ""
    #: why the engine doubts this mask (empty: no doubt); numeric quality signals
    reasons: list = field(default_factory=list)
    quality: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.empty:
            return "empty"
        return "check" if self.reasons else "ok"

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())

    def paste_into(self, full: np.ndarray, value) -> None:
        sl = tuple(slice(int(a), int(b)) for a, b in zip(self.start, self.stop, strict=True))
        region = full[sl]
        region[self.mask] = value


CancelCheck = Callable[[], None]


def _noop() -> None:
    return None


# ---------------------------------------------------------------- intensities
def _smooth(work: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    sigma = SMOOTH_SIGMA_MM / np.asarray(spacing)
    sigma = np.where(sigma < 0.3, 0.0, sigma)  # coarse axes: nothing to gain
    if not np.any(sigma):
        return work
    return ndimage.gaussian_filter(work, sigma, mode="nearest", truncate=2.5)


def _mode(values: np.ndarray, bin_hu: float = 10.0) -> float:
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < bin_hu:
        return float(np.median(values))
    hist, edges = np.histogram(values, bins=max(2, int((hi - lo) / bin_hu)))
    k = int(np.argmax(hist))
    return float((edges[k] + edges[k + 1]) / 2)


def lesion_intensity_model(core: np.ndarray, surroundings: np.ndarray) -> IntensityModel:
    """Accepted HU interval for a lesion sampled by ``core`` amid ``surroundings`` (1D arrays, HU).

    The lesion's own range is the core's 10th-90th percentiles less noise (heterogeneous
    lesions such as part-solid nodules or necrotic masses span a range) and its noise a
    MAD-based sigma, clamped to [12, 36] HU. Each end of the interval lies halfway between the
    lesion's range and the most common tissue on that side (e.g. lung or fat below, contrast
    vessels or bone above), the level where a blurred edge crosses the true boundary; never
    closer than 2 sigma to the lesion's range; with no such tissue around, 4 sigma.
    Air-like core voxels (partial volume with lung) are ignored when at least a fifth of the
    core is tissue.
    """
    tissue = core[core >= AIR_LIKE_HU]
    if tissue.size >= max(5, 0.2 * core.size):
        # A loose box or a click on a small nodule also samples aerated lung: lesions are tissue.
        core = tissue
    m = float(np.median(core))
    s = min(max(1.4826 * float(np.median(np.abs(core - m))), NOISE_FLOOR_HU), 3 * NOISE_FLOOR_HU)
    # The lesion's own spread beyond noise (a homogeneous lesion gives a = b = m).
    p10, p90 = (float(v) for v in np.percentile(core, (10, 90)))
    a, b = min(m, p10 + 1.28 * s), max(m, p90 - 1.28 * s)
    low, high = a - 4.0 * s, b + 4.0 * s
    min_count = max(20, int(0.02 * surroundings.size))
    dark = surroundings[surroundings < a - 3.0 * s]
    dark_mode = None
    if dark.size >= min_count:
        dark_mode = _mode(dark)
        low = min((a + dark_mode) / 2.0, a - 2.0 * s)
    bright = surroundings[surroundings > b + 3.0 * s]
    if bright.size >= min_count:
        high = max((b + _mode(bright)) / 2.0, b + 2.0 * s)
    return IntensityModel(m, low, high, dark_mode)


# ---------------------------------------------------------------- morphology
def _edt(mask: np.ndarray, spacing) -> np.ndarray:
    return ndimage.distance_transform_edt(mask, sampling=spacing)


def _bbox(mask: np.ndarray, pad_mm: float, spacing) -> tuple[slice, slice, slice] | None:
    """Slices of ``mask``'s bounding box grown by ``pad_mm`` (+1 voxel), clipped; None when empty.

    Distance transforms, reconstructions and watersheds of a mask need only this box: on a
    small lesion inside a large region they would otherwise cost the whole region.
    """
    if not mask.any():
        return None
    pad = np.ceil(pad_mm / np.asarray(spacing, dtype=float)).astype(int) + 1
    sl = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        sl.append(slice(max(0, int(nz[0]) - int(pad[axis])), min(mask.shape[axis], int(nz[-1]) + 1 + int(pad[axis]))))
    return tuple(sl)


def _shift(seed, sl) -> tuple[int, int, int]:
    return tuple(int(v) - s.start for v, s in zip(seed, sl, strict=True))


def _edt_in(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from each voxel of ``mask`` to the nearest voxel outside it, computed on its box."""
    out = np.zeros(mask.shape, dtype=np.float64)
    sl = _bbox(mask, 0.0, spacing)
    if sl is not None:
        out[sl] = _edt(mask[sl], spacing)
    return out


def _dist_out(mask: np.ndarray, spacing, reach_mm: float) -> np.ndarray:
    """Distance (mm) to ``mask`` outside it, exact up to ``reach_mm`` (beyond: at least reach, or inf)."""
    out = np.full(mask.shape, np.inf)
    sl = _bbox(mask, reach_mm, spacing)
    if sl is not None:
        out[sl] = _edt(~mask[sl], spacing)
    return out


def _component_at(mask: np.ndarray, seed: tuple[int, int, int]) -> np.ndarray:
    if not mask[seed]:
        return np.zeros_like(mask)
    lab, _ = ndimage.label(mask)
    return lab == lab[seed]


def _open_and_reconstruct(comp: np.ndarray, spacing, radius: float, seed) -> np.ndarray:
    """Opening by a Euclidean ball of ``radius`` mm, then regrowth of at most ``radius`` mm inside ``comp``.

    Vessels thinner than the ball are cut where they meet the lesion; the lesion's own surface
    (corners the opening rounded) comes back.
    """
    sl = _bbox(comp, 0.0, spacing)
    if sl is None:
        return comp
    sub, s = comp[sl], _shift(seed, sl)
    eroded = _edt(sub, spacing) > radius
    if not eroded[s]:
        return comp
    eroded = _component_at(eroded, s)
    # Dilation of the kept core by the same ball, then a bounded regrowth within comp.
    near = _edt(~eroded, spacing) <= 2.0 * radius
    out = np.zeros_like(comp)
    out[sl] = _component_at(sub & near, s)
    return out


def _split_by_necks(mask: np.ndarray, spacing, seed, lesion_radius: float) -> np.ndarray:
    """Cut structures joined to the lesion through a neck (distance-transform watershed)."""
    sl = _bbox(mask, 0.0, spacing)
    if sl is None:
        return mask
    out = np.zeros_like(mask)
    out[sl] = _split_by_necks_box(mask[sl], spacing, _shift(seed, sl), lesion_radius)
    return out


def _h_maxima(image: np.ndarray, h: float) -> np.ndarray:
    """Regional maxima of ``image`` at least ``h`` high (bool), as skimage's ``h_maxima`` (full connectivity).

    The reconstruction by dilation is SimpleITK's (linear time) instead of skimage's sort-based one,
    which sorted the whole region and dominated a prompt on large regions; same result.
    """
    import SimpleITK as sitk

    image = np.asarray(image, dtype=np.float64)
    if h > float(np.ptp(image)):
        return np.zeros(image.shape, dtype=bool)
    shifted = image - h - 2 * np.finfo(np.float64).resolution * np.abs(image)
    rec = sitk.GetArrayFromImage(sitk.ReconstructionByDilation(sitk.GetImageFromArray(shifted),
                                                               sitk.GetImageFromArray(image), True))
    return (image - rec) >= h


def _split_by_necks_box(mask: np.ndarray, spacing, seed, lesion_radius: float) -> np.ndarray:
    from skimage.segmentation import watershed

    dist = _edt(mask, spacing)
    h = max(1.0, 0.15 * lesion_radius)
    markers, n = ndimage.label(_h_maxima(dist, h))
    if markers[seed] == 0:
        # The lesion's own maximum may be too shallow for h (small lesion on a big structure):
        # the seed (deepest point near the prompt) always gets its own basin.
        n += 1
        markers[seed] = n
    if n <= 1:
        return mask
    basins = watershed(-dist, markers, mask=mask)
    lesion_label = int(basins[seed])
    if lesion_label == 0:
        return mask
    peaks = ndimage.maximum(dist, basins, index=np.arange(n + 1))
    region = basins == lesion_label
    merged = {lesion_label}
    struct = ndimage.generate_binary_structure(3, 1)
    for _ in range(12):
        ring = ndimage.binary_dilation(region, struct) & ~region & mask
        neighbours = set(np.unique(basins[ring]).tolist()) - merged - {0}
        added = False
        peak_region = float(dist[region].max())
        for k in neighbours:
            saddle = float(dist[ring & (basins == k)].max())
            # A blob much thicker than the lesion (chest wall, organ, mediastinum) is never part of
            # it: the seed is the thickest point near the prompt. Smaller blobs (lobes, spicules)
            # join unless the neck is thinner than 75 % of the smaller blob (a real constriction).
            if float(peaks[k]) > 1.5 * peak_region:
                continue
            if saddle >= 0.75 * min(peak_region, float(peaks[k])):
                region |= basins == k
                merged.add(k)
                added = True
        if not added:
            break
    return region


# ---------------------------------------------------------------- core routine
def _segment_in_roi(
    roi: Roi,
    seed: tuple[int, int, int],
    *,
    box: tuple[np.ndarray, np.ndarray] | None,
    prior: IntensityModel | None,
    check: CancelCheck,
    core_box: tuple[np.ndarray, np.ndarray] | None = None,
    model: IntensityModel | None = None,
    notes: list | None = None,
) -> tuple[np.ndarray, str, float, IntensityModel | None]:
    """Lesion mask on ``roi``'s working grid, from a seed (working voxel) and an optional box (working bounds).

    ``prior`` is a known lesion model (tracking: no ground-glass search); ``model`` one estimated
    by an earlier pass on a smaller region (more local, so it is kept). Returns the mask, a
    message (why it is empty), the lesion's inscribed radius (mm) and the model used; reasons to
    doubt the mask are appended to ``notes`` when given.
    """
    sp = roi.spacing
    img = _smooth(roi.work, sp)
    shape = img.shape
    check()
    inside_box = None
    if box is not None:
        lo, hi = box
        inside_box = np.zeros(shape, dtype=bool)
        inside_box[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
        clo, chi = core_box if core_box is not None else box
        core = ellipsoid_mask(shape, (clo + chi - 1) / 2.0, (chi - clo) / 4.0) & inside_box
        if not core.any():  # a box one voxel thin on a coarse axis: its centre voxel samples the lesion
            core[tuple(int(v) for v in np.clip((clo + chi - 1) // 2, 0, np.asarray(shape) - 1))] = True
    else:
        core = ball_mask(shape, seed, 3.0, sp)
    if prior is not None:
        model = prior
    elif model is None:
        model = lesion_intensity_model(img[core], img.reshape(-1))
    if model.center < AIR_LIKE_HU:
        why = f"the prompt's core is air or lung parenchyma ({model.center:.0f} HU)"
        return np.zeros(shape, dtype=bool), why, 0.0, model
    within = (img >= model.low) & (img <= model.high)
    if inside_box is not None:
        within &= inside_box
    check()

    if box is not None:
        # Seed: the deepest lesion-like voxel of the box's core (robust to necrotic or hollow centres).
        d_in = _edt_in(within, sp)
        cand = np.where(core, d_in, 0)
        if cand.max() <= 0:
            return np.zeros(shape, dtype=bool), "no lesion-like tissue in the box core", 0.0, model
        seed = tuple(int(v) for v in np.unravel_index(int(np.argmax(cand)), shape))
    elif not within[seed]:
        # A click a little off the lesion (edge, partial volume): take the nearest lesion-like voxel within 3 mm.
        # (on a box just over 3 mm around the click: the answer lies there or nowhere)
        lo_s, hi_s = roi_bounds_mm(seed, 3.0 + float(np.max(sp)), sp, np.asarray(shape))
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo_s, hi_s, strict=True))
        local = ~within[sl]
        s_loc = _shift(seed, sl)
        if local.all():
            return np.zeros(shape, dtype=bool), "no lesion-like tissue at the point", 0.0, model
        dist, idx = ndimage.distance_transform_edt(local, sampling=sp, return_indices=True)
        if dist[s_loc] > 3.0:
            return np.zeros(shape, dtype=bool), "no lesion-like tissue at the point", 0.0, model
        seed = tuple(int(idx[a][s_loc]) + sl[a].start for a in range(3))

    # Noise voxels outside the interval pit the lesion; filled first, so that distances (the
    # lesion's thickness, its necks) measure its shape and not its noise.
    comp = ndimage.binary_fill_holes(_component_at(within, seed))
    check()
    first_dark = model.dark
    if prior is None:
        # Second look: the tissue right around the first estimate (1.5-6 mm) is the lesion's real
        # neighbour (liver around a liver lesion...); the whole region mixes in distant organs.
        ring = _dist_out(comp, sp, 6.0)
        ring = (ring > 1.5) & (ring <= 6.0)
        # The first estimate's interior (at least half its depth) samples the lesion better than
        # the small ball or box core, away from partial volume.
        depth = _edt_in(comp, sp)
        interior = depth >= 0.5 * float(depth.max())
        core2 = interior if interior.sum() >= 20 and interior.sum() > core.sum() else core
        if ring.sum() >= 50:
            model = lesion_intensity_model(img[core2], img[ring])
            within = (img >= model.low) & (img <= model.high)
            if inside_box is not None:
                within &= inside_box
            if within[seed]:
                comp = ndimage.binary_fill_holes(_component_at(within, seed))
        check()
    dist = _edt_in(comp, sp)
    # Inscribed radius near the seed, and the deepest point there as the working seed.
    near = ball_mask(shape, seed, max(5.0, float(dist[seed])), sp) & comp
    near_d = np.where(near, dist, 0)
    seed = tuple(int(v) for v in np.unravel_index(int(np.argmax(near_d)), shape))
    radius = float(dist[seed])
    open_r = min(0.5 * radius, MAX_OPEN_RADIUS_MM)
    mask = comp
    if open_r >= 0.75 * float(np.min(sp)):
        mask = _open_and_reconstruct(comp, sp, open_r, seed)
    check()
    if radius >= 2.0 * float(np.min(sp)):
        mask = _split_by_necks(mask, sp, seed, radius)
    check()
    mask = ndimage.binary_fill_holes(mask)
    # Only when the lesion's lower bound sits well above the lung (a solid core): a core that
    # already holds ground glass has its rim inside [low, high] anyway.
    # The lung around: the first (whole-region) model's darker tissue; the second look's ring may
    # already be the ground-glass rim itself.
    lung = min((d for d in (model.dark, first_dark) if d is not None), default=None)
    if prior is None and lung is not None and lung < AIR_LIKE_HU and model.low - lung > GGO_GAP_HU:
        mask = _add_ground_glass(img, mask, IntensityModel(model.center, model.low, model.high, lung), sp, seed,
                                 radius, inside_box, notes)
    return _component_at(mask, seed), "", radius, model


def _add_ground_glass(img, solid, model: IntensityModel, sp, seed, radius: float, inside_box,
                      notes: list | None = None) -> np.ndarray:
    """Extend a lung lesion by a ground-glass rim when one surrounds it (part-solid nodules).

    Ground glass lies between aerated lung and solid tissue. A blurred solid edge crosses that
    density band within about a millimetre (plus a voxel); a ground-glass component covers
    most of the shell 1.5-3 mm (plus one voxel) around the solid part. Only then is the lesion
    grown into the band (up to max(12 mm, 3 radii) from the solid part), opened by 1.5 mm to
    drop vessel edges and lung texture, and its holes filled.
    """
    ggo_low = model.dark + 0.2 * (model.low - model.dark) if model.dark is not None else model.low
    band = (img >= ggo_low) & (img < model.low)
    dist = _dist_out(solid, sp, max(12.0, 3.0 * radius))
    # The blurred edge of a solid lesion spans about a voxel more on coarse grids; thick slices
    # smear it along their axis only, so the in-plane voxel sets the margin (the shell's caps
    # along the thick axis are partial volume either way, a minority of the shell).
    vox = float(np.min(sp))
    shell = (dist > 1.5 + vox) & (dist <= 3.0 + 1.5 * vox)
    if inside_box is not None:
        shell &= inside_box
    if shell.sum() == 0 or band[shell].mean() < 0.5:
        return solid
    grow = (band | solid) & (img <= model.high) & (dist <= max(12.0, 3.0 * radius))
    if inside_box is not None:
        grow &= inside_box
    grown = _component_at(grow, seed)
    opened = _edt_in(grown, sp) > 1.5
    grown = (_dist_out(opened, sp, 1.5) <= 1.5) | solid
    out = ndimage.binary_fill_holes(_component_at(grown & (grow | solid), seed))
    if notes is not None and out.sum() < (1.0 + GGO_MIN_GAIN) * solid.sum():
        # The shell says ground glass is there, but no coherent rim came out of the band (noise).
        notes.append(f"ground glass covers {band[shell].mean():.0%} of the shell around the solid part but could "
                     "not be delineated: the mask may hold only the solid core")
    return out


# ---------------------------------------------------------------- public entry points
def segment_point(
    array: np.ndarray,
    spacing,
    point,
    *,
    prior: IntensityModel | None = None,
    limit: tuple[np.ndarray, np.ndarray] | None = None,
    check: CancelCheck = _noop,
    start_radius_mm: float = POINT_START_RADIUS_MM,
    max_radius_mm: float = POINT_MAX_RADIUS_MM,
) -> RoiMask:
    """Segment the lesion under a point (voxel index z, y, x) of ``array`` (HU, spacing mm).

    The search region starts ``start_radius_mm`` around the point; when the mask touches its
    inner faces it grows once to 3.5 inscribed radii of the lesion + 10 mm (at most
    ``max_radius_mm``), the farthest a lesion reaches from its thickest point. ``limit`` optionally bounds
    the region (half-open full-volume indices). Without a ``prior``, a mask that leaks beyond
    that reach (or beyond ``PLAUSIBLE_POINT_VOLUME_MM3``) becomes the compact star-shaped
    estimate of :func:`_compact_fallback`.

    Then a shape prior (:func:`.star.radial_regularise`) bounds what the mask may hold around its
    deepest point, the click is always inside the result (a blob-sized estimate replaces a mask
    that misses it), and the mask gets a status with reasons (:func:`_grade`).
    """
    spacing = np.asarray(spacing, dtype=float)
    shape = np.asarray(array.shape)
    point = np.asarray(point, dtype=int)
    radius = start_radius_mm
    message = ""
    reasons: list[str] = []
    while True:
        lo, hi = roi_bounds_mm(point, radius, spacing, shape)
        if limit is not None:
            lo, hi = np.maximum(lo, limit[0]), np.minimum(hi, limit[1])
        roi = Roi.extract(array, spacing, lo, hi)
        seed = roi.to_work_voxel(point)
        # Each pass re-estimates the lesion model: reusing the small region's one in a large region
        # lets a lung lesion's low threshold flood the chest wall, which a coarse grid cannot cut.
        notes: list[str] = []
        work_mask, message, inscribed, model = _segment_in_roi(roi, seed, box=None, prior=prior, check=check,
                                                               notes=notes if prior is None else None)
        if not work_mask.any():
            break
        # A lesion rarely reaches further than ~3.5 inscribed radii from its thickest point; beyond
        # that the mask has leaked into a structure of the same density, and growing would only
        # make it worse (and slower).
        limit_mm = min(max_radius_mm, max(start_radius_mm, 3.5 * inscribed + 10.0))
        too_big = float(work_mask.sum()) * float(np.prod(roi.spacing)) > PLAUSIBLE_POINT_VOLUME_MM3
        if prior is None and (too_big or _reach_mm(work_mask, roi.to_work(point), roi.spacing) > limit_mm):
            # Already beyond (an organ enclosed by the region, or cut by the scan's border), or
            # larger than any lesion a click plausibly means.
            return _finish_point(array, spacing, point, _compact_fallback(array, spacing, point, shape, limit,
                                                                          model, check), model, check)
        touching = roi.touches_inner_faces(work_mask, shape)
        enclosed = touching == 0 or (limit is not None and np.all(lo == limit[0]) and np.all(hi == limit[1]))
        if enclosed:
            break
        if radius >= limit_mm:
            if prior is not None:
                message = f"the mask reaches the {radius:.0f} mm search limit (low contrast to its surroundings?)"
                reasons.append(f"touches the search limit ({radius:.0f} mm)")
                break
            # Leak: the lesion has no intensity edge against some neighbour of the same density.
            return _finish_point(array, spacing, point, _compact_fallback(array, spacing, point, shape, limit,
                                                                          model, check), model, check)
        # Jump straight to the limit (one more pass, not several): the inscribed radius is known.
        radius = limit_mm
    if work_mask.any():
        # Shape prior around the lesion's deepest point near the click.
        depth = _edt_in(work_mask, roi.spacing)
        seed_w = roi.to_work_voxel(point)
        near = ball_mask(work_mask.shape, seed_w, max(5.0, float(depth[seed_w])), roi.spacing) & work_mask
        centre = tuple(int(v) for v in np.unravel_index(int(np.argmax(np.where(near, depth, 0))), depth.shape))
        kept, removed = radial_regularise(work_mask, roi.spacing, centre)
        kept = _component_at(kept, centre)
        if kept[seed_w] or not work_mask[seed_w]:
            work_mask = kept
            if removed > LEAK_SHARE:
                reasons.append(f"leaked into a neighbour of similar density and was bounded by the shape prior "
                               f"({removed:.0%} cut)")
    if work_mask.any() and prior is None:
        # Local evidence: the blob the click sits in. A mask far larger than it has leaked.
        r_eq = (3.0 * float(work_mask.sum()) * float(np.prod(roi.spacing)) / (4.0 * np.pi)) ** (1 / 3)
        r_blob = _log_radius_mm(array, spacing, point)
        weak = False
        if r_eq > LARGE_WEAK_RADIUS_MM:
            # Large: it must at least have an edge somewhere near what a lesion would have.
            probe = _grade(array, spacing, RoiMask(roi.mask_to_crop(work_mask), roi.start, roi.stop), model)
            weak = probe.quality.get("contrast_snr", 0.0) < WEAK_EDGE_SNR
            r_blob = min(r_blob, LARGE_WEAK_RADIUS_MM / BLOB_FACTOR) if weak else r_blob
        if weak or r_eq > max(BLOB_FACTOR * r_blob, r_blob + 15.0):
            fb = _compact_fallback(array, spacing, point, shape, limit, model, check)
            c = np.asarray(point) - fb.start
            fb.mask &= ball_mask(fb.mask.shape, c, BLOB_FACTOR * r_blob, spacing)
            fb.mask = _component_at(fb.mask, tuple(int(v) for v in c)) if fb.mask[tuple(c)] else fb.mask
            fb.reasons = [(f"leaked: {2 * r_eq:.0f} mm across where the click's blob is {2 * r_blob:.0f} mm; "
                          "bounded to a compact estimate from the nearest edges")]
            return _finish_point(array, spacing, point, fb, model, check)
    reasons.extend(notes)
    out = RoiMask(roi.mask_to_crop(work_mask), roi.start, roi.stop, message, reasons=reasons)
    out = _finish_point(array, spacing, point, out, model, check)
    if prior is None and not out.empty and work_mask.any():
        _check_blob_size(out, r_blob)
    return out


# A mask narrower than this share of the click's blob (LoG scale) may hold only part of the lesion.
UNDER_BLOB_SHARE = 0.6
# The largest LoG scale (sigma 13.6 mm): a blob radius there means "at least that large" (an organ).
_LOG_SATURATED_MM = 13.6 * np.sqrt(3.0) - 0.1


def _check_blob_size(out: RoiMask, r_blob: float) -> None:
    """Flag a mask much narrower than the blob the click sits in (it may hold only part of the lesion)."""
    diam = out.quality.get("diameter_mm")
    if diam is None or r_blob >= _LOG_SATURATED_MM:
        return
    out.quality["blob_diameter_mm"] = 2.0 * r_blob
    if diam < UNDER_BLOB_SHARE * 2.0 * r_blob:
        out.reasons.append(f"smaller than the blob at the point ({diam:.0f} mm across where the blob is "
                           f"{2 * r_blob:.0f} mm): it may hold only part of the lesion")


# A point mask with an equivalent radius above this many blob radii (LoG scale at the click) leaked.
BLOB_FACTOR = 2.5
# A point mask beyond this equivalent radius (mm) with a weak edge has leaked into an organ.
LARGE_WEAK_RADIUS_MM = 30.0


LEAK_FALLBACK_REASON = (
    "leaked into tissue of similar density and was bounded to a compact estimate from the nearest edges"
)
# Share of an intensity mask the shape prior may cut before the mask is called leaked.
LEAK_SHARE = 0.25


def _finish_point(array, spacing, point, lm: RoiMask, model: IntensityModel | None, check) -> RoiMask:
    """Guarantee the click is inside the mask (else a blob-sized estimate), then grade it."""
    rel = np.asarray(point) - lm.start
    inside = bool(np.all(rel >= 0) and np.all(rel < np.asarray(lm.mask.shape)) and lm.mask[tuple(rel)])
    if not inside and model is not None and model.center >= AIR_LIKE_HU:
        check()
        lm = _blob_estimate(array, spacing, point, model, had_mask=not lm.empty)
    return _grade(array, spacing, lm, model, point)


# Mask-to-ring contrast (in noise units) below which the boundary is a weak edge, and above which
# a compact estimate's boundary is clear; share of a lesion-like ring that means no boundary.
WEAK_EDGE_SNR = 1.2
CLEAR_EDGE_SNR = 4.0
LESION_LIKE_RING = 0.6
# A lesion mask smaller than a ball of this diameter (mm) is doubtful whatever its contrast.
MIN_PLAUSIBLE_DIAMETER_MM = 4.0


def _grade(array, spacing, lm: RoiMask, model: IntensityModel | None, point=None,
           box: tuple | None = None) -> RoiMask:
    """Quality signals of a mask and the reasons to doubt it (see :attr:`RoiMask.status`).

    Signals (``lm.quality``): volume and equivalent diameter; the contrast between the mask and a
    ring 1.5-4 mm around it in units of the image noise inside (a real lesion boundary is an
    intensity step); the share of that ring that is still lesion-like (the mask stops where the
    lesion goes on: a leak was cut, or contact with tissue of the same density).
    """
    if lm.empty:
        return lm
    sp = np.asarray(spacing, dtype=float)
    pad = np.ceil(5.0 / sp).astype(int)
    a = np.maximum(np.asarray(lm.start) - pad, 0)
    b = np.minimum(np.asarray(lm.stop) + pad, np.asarray(array.shape))
    raw = np.asarray(array[a[0]:b[0], a[1]:b[1], a[2]:b[2]], dtype=np.float32)
    img = _smooth(raw, sp)
    mask = np.zeros(raw.shape, dtype=bool)
    o = np.asarray(lm.start) - a
    mask[o[0]:o[0] + lm.mask.shape[0], o[1]:o[1] + lm.mask.shape[1], o[2]:o[2] + lm.mask.shape[2]] = lm.mask
    d_out = _edt(~mask, sp)
    ring = (d_out > 1.5) & (d_out <= 4.0)
    vol = float(mask.sum()) * float(np.prod(sp))
    diam = (6.0 * vol / np.pi) ** (1 / 3)
    inside = raw[mask]
    med_in = float(np.median(inside))
    noise = max(1.4826 * float(np.median(np.abs(inside - med_in))), 3.0)
    q = {"volume_mm3": vol, "diameter_mm": diam, "noise_hu": noise}
    if ring.any():
        med_ring = float(np.median(img[ring]))
        q["contrast_hu"] = med_in - med_ring
        q["contrast_snr"] = abs(med_in - med_ring) / noise
        if model is not None:
            q["ring_lesion_like"] = float(np.mean((img[ring] >= model.low) & (img[ring] <= model.high)))
    lm.quality.update(q)
    reasons = lm.reasons
    snr = q.get("contrast_snr")
    if snr is not None and snr >= CLEAR_EDGE_SNR and reasons == [LEAK_FALLBACK_REASON]:
        # The compact estimate found a clear boundary all round: no doubt left (the note stays).
        reasons.clear()
    if snr is not None and snr < WEAK_EDGE_SNR:
        reasons.append(f"weak edge: the mask differs from the tissue around it by {abs(q['contrast_hu']):.0f} HU, "
                       f"{snr:.1f} times the noise")
    elif q.get("ring_lesion_like", 0.0) > LESION_LIKE_RING:
        reasons.append(f"weak edge: {q['ring_lesion_like']:.0%} of the tissue around the mask is as lesion-like "
                       "as the mask itself")
    if diam < MIN_PLAUSIBLE_DIAMETER_MM:
        reasons.append(f"very small for the contrast seen ({vol:.0f} mm3, {diam:.1f} mm across)")
    return lm


LOG_WORK_VOXELS = 80_000


def _log_radius_mm(array, spacing, point) -> float:
    """Radius (mm) of the blob centred at ``point``: scale of the largest normalised Laplacian of Gaussian."""
    shape = np.asarray(array.shape)
    best, best_r = 0.0, 4.0
    lo, hi = roi_bounds_mm(point, 36.0, np.asarray(spacing, dtype=float), shape)
    # A coarse working grid (about 1.2 mm at most 80k voxels) is enough for scales from 2.4 mm.
    roi = Roi.extract(array, spacing, lo, hi, max_voxels=LOG_WORK_VOXELS)
    sp = roi.spacing
    crop = _smooth(roi.work, sp)
    c = np.asarray(roi.to_work_voxel(point))
    # From 2.4 mm up: finer scales answer the noise (and a lesion that small does not leak far).
    for sigma in (2.4, 3.4, 4.8, 6.8, 9.6, 13.6):
        sig = np.maximum(sigma / sp, 0.3)
        half = np.ceil(3 * sig).astype(int)
        a, b = np.maximum(c - half, 0), np.minimum(c + half + 1, crop.shape)
        patch = crop[a[0]:b[0], a[1]:b[1], a[2]:b[2]]
        g = np.ogrid[tuple(slice(int(x - y), int(z - y)) for x, y, z in zip(a, c, b, strict=True))]
        r2 = sum(((gg * s) / sigma) ** 2 for gg, s in zip(g, sp, strict=True))
        w = np.exp(-0.5 * r2)
        w /= w.sum()
        # sigma^2 * LoG at the centre, up to a constant: (weighted mean at r^2) - 3 * (weighted mean).
        resp = float(((r2 - 3.0) * w * patch).sum())
        if abs(resp) > best:
            best, best_r = abs(resp), sigma * np.sqrt(3.0)
    return float(np.clip(best_r, 2.5, 35.0))


def _blob_estimate(array, spacing, point, model: IntensityModel, had_mask: bool) -> RoiMask:
    """A ball of the blob's size at the click, restricted to lesion-like tissue (always holds the click)."""
    sp = np.asarray(spacing, dtype=float)
    r = _log_radius_mm(array, sp, point)
    lo, hi = roi_bounds_mm(point, r + 2.0, sp, np.asarray(array.shape))
    crop = _smooth(np.asarray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32), sp)
    c = tuple(int(v) for v in np.asarray(point) - lo)
    ball = ball_mask(crop.shape, c, r, sp)
    low = min(model.low, model.center - 2 * NOISE_FLOOR_HU)
    high = max(model.high, model.center + 2 * NOISE_FLOOR_HU)
    like = ball & (crop >= low) & (crop <= high)
    like[c] = True
    mask = ndimage.binary_fill_holes(_component_at(like, c))
    if mask.sum() < 0.2 * ball.sum():  # nothing lesion-like of that size: the blob's ball itself
        mask = ball
    why = ("the intensity mask missed the click" if had_mask else "no lesion-like region found at the click")
    msg = f"{why}: the mask is a blob-sized estimate ({2 * r:.0f} mm) around it (check it)"
    return RoiMask(mask, lo, hi, msg, reasons=[f"weak edge: {why}, blob-sized estimate"])


def _reach_mm(mask: np.ndarray, center, spacing) -> float:
    """Largest distance (mm) from ``center`` (continuous voxel index z, y, x) to a voxel of ``mask``."""
    idx = np.nonzero(mask)
    d2 = sum(((i - c) * s) ** 2 for i, c, s in zip(idx, center, spacing, strict=True))
    return float(np.sqrt(d2.max()))


def _compact_fallback(array, spacing, point, shape, limit, model: IntensityModel, check: CancelCheck) -> RoiMask:
    """Star-shaped estimate of a lesion whose intensity region leaked (see :mod:`.star`).

    The region is bounded by ``LEAK_FALLBACK_RADIUS_MM`` around the click, so a click on a
    low-contrast lesion returns a compact mask to correct rather than the whole organ.
    """
    lo, hi = roi_bounds_mm(point, LEAK_FALLBACK_RADIUS_MM, spacing, shape)
    if limit is not None:
        lo, hi = np.maximum(lo, limit[0]), np.minimum(hi, limit[1])
    roi = Roi.extract(array, spacing, lo, hi)
    check()
    seed = roi.to_work_voxel(point)
    work_mask, _ = star_region(
        roi.work, roi.spacing, seed, min(model.low, model.center - SOFT_TISSUE_SPAN_HU),
        max(model.high, model.center + SOFT_TISSUE_SPAN_HU), max_radius_mm=LEAK_FALLBACK_RADIUS_MM,
    )
    check()
    message = (
        "low contrast to its surroundings: the intensity region leaked, so the mask is a compact "
        f"estimate from the nearest edges within {LEAK_FALLBACK_RADIUS_MM:.0f} mm of the point (check it)"
    )
    return RoiMask(roi.mask_to_crop(work_mask), roi.start, roi.stop, message,
                      reasons=[LEAK_FALLBACK_REASON])


def segment_box(
    array: np.ndarray,
    spacing,
    start,
    stop,
    *,
    prior: IntensityModel | None = None,
    check: CancelCheck = _noop,
    core: tuple | None = None,
) -> RoiMask:
    """Segment the lesion inside a half-open box ``[start, stop)`` (voxel indices z, y, x).

    The mask never leaves the box; a margin of ``BOX_MARGIN_MM`` around it samples the
    surrounding tissue for the intensity model. The lesion's intensity is sampled in the
    central ellipsoid (half the size) of the box, or of ``core`` = (start, stop) when the box is
    known to be loose (tracking).
    """
    spacing = np.asarray(spacing, dtype=float)
    shape = np.asarray(array.shape)
    start = np.asarray(start, dtype=int)
    stop = np.asarray(stop, dtype=int)
    margin = np.ceil(BOX_MARGIN_MM / spacing).astype(int)
    lo = np.maximum(start - margin, 0)
    hi = np.minimum(stop + margin, shape)
    roi = Roi.extract(array, spacing, lo, hi)
    def to_work_bounds(a, b):
        wa = np.clip(np.round(roi.to_work(np.asarray(a) - 0.5) + 0.5).astype(int), 0, np.asarray(roi.work.shape) - 1)
        wb = np.clip(np.round(roi.to_work(np.asarray(b) - 0.5) + 0.5).astype(int), wa + 1, np.asarray(roi.work.shape))
        return wa, wb

    wlo, whi = to_work_bounds(start, stop)
    core_w = to_work_bounds(*core) if core is not None else None
    center = roi.to_work_voxel((start + stop - 1) / 2.0)
    work_mask, message, _, model = _segment_in_roi(roi, center, box=(wlo, whi), prior=prior, check=check,
                                                   core_box=core_w)
    mask = roi.mask_to_crop(work_mask)
    # The box is a hard limit (resampling can blur a voxel across it).
    rel_lo, rel_hi = start - lo, stop - lo
    clip = np.zeros_like(mask)
    clip[rel_lo[0] : rel_hi[0], rel_lo[1] : rel_hi[1], rel_lo[2] : rel_hi[2]] = True
    out = RoiMask(mask & clip, roi.start, roi.stop, message)
    if out.empty or core is not None:  # tracking grades its own results
        return out
    if prior is None:
        out.mask = _box_shape_prior(out.mask, spacing, (start + stop - 1) / 2.0 - lo, (stop - start) / 4.0)
    out = _grade(array, spacing, out, model)
    # A lesion drawn around by a box fills about half of it (an ellipsoid fills 52 %).
    fill = float(out.mask.sum()) / float(np.prod(stop - start))
    out.quality["box_fill"] = fill
    if fill < BOX_FILL_RANGE[0]:
        out.reasons.append(f"very small for the box ({fill:.0%} of it)")
    elif fill > BOX_FILL_RANGE[1]:
        out.reasons.append(f"fills the box ({fill:.0%}): weak edge, the lesion may go on beyond it")
    return out


def _box_shape_prior(mask: np.ndarray, spacing, centre, half_axes) -> np.ndarray:
    """The point prompt's shape prior (:func:`.star.radial_regularise`) for a box's mask.

    A box holds the lesion and, in its corners, whatever touches it with the same density (the
    mediastinum beside a nodule, liver beside a liver lesion). Seen from the mask's deepest point
    inside the box's central ellipsoid, such a neighbour is a protrusion of the radius function,
    which the prior smooths and clamps.
    """
    depth = _edt_in(mask, spacing)
    core = ellipsoid_mask(mask.shape, centre, np.maximum(half_axes, 0.5))
    cand = np.where(core, depth, 0.0)
    if cand.max() <= 0:
        return mask
    seed = tuple(int(v) for v in np.unravel_index(int(np.argmax(cand)), cand.shape))
    kept, _ = radial_regularise(mask, spacing, seed)
    kept = _component_at(kept, seed)
    return kept if kept.any() else mask


# Share of a box a lesion drawn around by it plausibly fills.
BOX_FILL_RANGE = (0.12, 0.9)

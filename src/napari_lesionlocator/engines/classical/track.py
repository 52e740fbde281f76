"""Longitudinal tracking: map each baseline lesion into a follow-up scan and re-segment it there.

Per image pair, once: a global rigid+affine registration on ~4 mm copies of both scans.
Per lesion:

1. local rigid+affine refinement on a region (>= 70 mm) around the lesion;
2. the baseline mask is resampled onto a small follow-up sub-grid (the *mapped mask*);
3. a lesion whose contrast to its surroundings is many times the follow-up's noise
   (``REDELINEATE_CNR``) is re-delineated from the mapped mask by the follow-up's own
   intensities (:func:`_redelineate`): lesion-like tissue within a bounded growth of the mapped
   mask that touches it, with the tissue of the lesion's own density that it touched at baseline
   (chest wall, mediastinum, a vessel) mapped too and kept out, so the size change is measured
   and the registered boundary holds only at such contacts. Too little lesion-like tissue left
   there: lost;
4. other (low-contrast) lesions are re-segmented in the follow-up with a box around the mapped
   mask, grown by a margin so that growth is allowed, when the same segmentation reproduces the
   baseline mask; the result is accepted only when plausible (near the mapped mask, sane volume
   ratio, lesion-like intensity); otherwise the mapped mask intersected with lesion-like tissue
   is used (status ``check``), but only while the mapped region's core still stands out from its
   own surroundings as the baseline lesion did; when it does not, or no lesion-like tissue is
   left, the lesion is reported lost with an empty mask (never a false mask).

Follow-ups may differ from the baseline in size, spacing, field of view, origin and direction:
everything goes through physical (world) coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from ...core.errors import InputImageError
from ...core.geometry import Geometry
from ...core.image import Image, LabelMap
from ...core.progress import CancelToken, ProgressCallback, report
from ...core.results import LesionMask, LesionResult, compose_label_map
from ..base import TrackingResult, as_lesion_masks
from . import register as reg
from .segment import IntensityModel, RoiMask, _grade, _smooth, lesion_intensity_model, segment_box

__all__ = ["track_lesions", "map_mask"]

LOCAL_HALF_SIZE_MM = 35.0
SHELL_MM = (2.0, 8.0)
# Re-segment in the follow-up only when the method reproduces the baseline mask this well.
SELF_CHECK_DICE = 0.7
# Fallback (registered mask) only while the mapped region still stands out from its own
# surroundings the way the baseline lesion did: its core's lesion-side share must be at least
# KEEP_FRACTION of the baseline's (see ``_core_lesion_side``; the core is the innermost
# CORE_SHARE of the mask). Below EDGE_HU of baseline contrast the test cannot tell a lesion
# from its surroundings and is skipped.
KEEP_FRACTION = 0.5
CORE_SHARE = 0.3
EDGE_HU = 10.0


def _xyz(zyx: np.ndarray) -> np.ndarray:
    return np.asarray(zyx, dtype=float)[..., ::-1]


def _zyx(xyz: np.ndarray) -> np.ndarray:
    return np.asarray(xyz, dtype=float)[..., ::-1]


def _index_box_of_world_box(geo_from: Geometry, start, stop, m: np.ndarray, geo_to: Geometry, pad_mm: float):
    """Bounds (half-open, clipped) on ``geo_to`` of box [start, stop) of ``geo_from`` mapped by ``m`` (xyz), + pad."""
    lo, hi = np.asarray(start) - 0.5, np.asarray(stop) - 0.5
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world = _zyx(reg.apply(m, _xyz(geo_from.index_to_world(corners))))
    idx = geo_to.world_to_index(world)
    pad = pad_mm / np.asarray(geo_to.spacing)
    a = np.clip(np.floor(idx.min(axis=0) - pad).astype(int), 0, geo_to.shape)
    b = np.clip(np.ceil(idx.max(axis=0) + pad).astype(int) + 1, 0, geo_to.shape)
    return a, b


def _crop(array: np.ndarray, start, stop) -> np.ndarray:
    return array[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]


def map_mask(mask_crop: np.ndarray, mask_geo: Geometry, m: np.ndarray, target_geo: Geometry) -> np.ndarray:
    """Resample a bool mask (on ``mask_geo``) onto ``target_geo`` through ``m`` (baseline -> target world, xyz)."""
    sitk = reg._sitk()
    src = reg.to_sitk(mask_crop.astype(np.float32), mask_geo)
    ref = reg.to_sitk(np.zeros(target_geo.shape, np.float32), target_geo)
    out = sitk.Resample(src, ref, reg.sitk_affine(reg.invert(m)), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out) >= 0.5


def _shell(mask: np.ndarray, spacing) -> np.ndarray:
    d = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return (d > SHELL_MM[0]) & (d <= SHELL_MM[1])


def _contrast(values_in: np.ndarray, values_around: np.ndarray) -> float:
    if values_in.size == 0 or values_around.size == 0:
        return 0.0
    return float(np.median(values_in) - np.median(values_around))


def _core(mask: np.ndarray, spacing) -> np.ndarray:
    """The innermost ``CORE_SHARE`` of ``mask`` by distance to its edge (at least one voxel)."""
    d = ndimage.distance_transform_edt(mask, sampling=spacing)
    inside = d[mask]
    return mask & (d >= np.quantile(inside, 1.0 - CORE_SHARE)) if inside.size else mask


def _core_lesion_side(img: np.ndarray, mask: np.ndarray, ring: np.ndarray, contrast: float, spacing) -> float:
    """Share of the mask's core voxels on the lesion's side of the ring/lesion midpoint (0..1).

    The midpoint is the ring's own median plus half the baseline contrast (HU), so a global
    intensity shift between scans cancels. Only the core counts: a lesion that shrank still
    fills it, while one that vanished leaves it to its surroundings (neighbouring structures
    that touch the mask's edge do not reach it).
    """
    if not mask.any() or not ring.any():
        return 0.0
    mid = float(np.median(img[ring])) + 0.5 * contrast
    return float(np.mean((img[_core(mask, spacing)] - mid) * np.sign(contrast) > 0))


def _baseline_appearance(base: Image, mask_crop: np.ndarray, start, stop) -> tuple[float, float]:
    """(contrast to a full shell in HU, core lesion-side share) of a baseline lesion.

    The crop is padded by the outer shell radius so the shell is complete.
    """
    spacing = np.asarray(base.geometry.spacing)
    pad = np.ceil(SHELL_MM[1] / spacing).astype(int) + 1
    a = np.maximum(np.asarray(start) - pad, 0)
    b = np.minimum(np.asarray(stop) + pad, base.geometry.shape)
    img = _smooth(_crop(base.array, a, b).astype(np.float32), spacing)
    mask = np.zeros(img.shape, dtype=bool)
    mask[tuple(slice(s - o, e - o) for s, e, o in zip(start, stop, a, strict=True))] = mask_crop
    ring = _shell(mask, spacing)
    contrast = _contrast(img[mask], img[ring])
    return contrast, _core_lesion_side(img, mask, ring, contrast, spacing)


def _lesion_model(base: Image, mask: np.ndarray, start, stop) -> tuple[IntensityModel, float]:
    """Intensity model of a baseline lesion (on a crop) and its contrast to a shell around it (HU)."""
    spacing = np.asarray(base.geometry.spacing)
    img = _smooth(_crop(base.array, start, stop).astype(np.float32), spacing)
    # The interior (>= 1.5 mm from the edge) is the lesion's own intensity; edges are partial volume.
    interior = ndimage.distance_transform_edt(mask, sampling=spacing) > 1.5
    core = img[interior] if interior.sum() >= max(10, 0.2 * mask.sum()) else img[mask]
    model = lesion_intensity_model(core, img.reshape(-1))
    return model, _contrast(img[mask], img[_shell(mask, spacing)])


def _noise(img: np.ndarray) -> float:
    """Image noise (HU) of a smoothed crop: local standard deviation in 3-voxel windows, in its most
    homogeneous fifth (a lesion's own heterogeneity, e.g. a part-solid nodule's rim, is not noise)."""
    mean = ndimage.uniform_filter(img, size=3)
    var = np.maximum(ndimage.uniform_filter(img * img, size=3) - mean * mean, 0.0)
    return max(float(np.sqrt(np.percentile(var, 20))), 1.0)


def _mask_box(lm: LesionMask, start, stop) -> np.ndarray:
    """The lesion's own mask on the box ``[start, stop)`` of its grid (bool; zeros outside its crop)."""
    start, stop = np.asarray(start, dtype=int), np.asarray(stop, dtype=int)
    out = np.zeros(tuple(int(v) for v in stop - start), dtype=bool)
    lo = np.maximum(start, lm.start)
    hi = np.minimum(stop, lm.stop)
    if np.all(hi > lo):
        out[tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))] = lm.array[
            tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, lm.start, strict=True))
        ]
    return out


# Below this self-check Dice the baseline model is recalibrated (see :func:`_model_variants`).
CALIBRATED_DICE = 0.85
BOUNDARY_FRACTIONS = (0.3, 0.4, 0.6, 0.7)


def _model_variants(base: Image, mask: np.ndarray, start, stop, model: IntensityModel) -> list[IntensityModel]:
    """Intensity models with the lesion/surroundings boundary at other fractions of the step between them.

    The step is from the lesion's interior median to its surroundings' median (a shell 2-8 mm
    out); the bound on the surroundings' side moves (the other bound stays).
    """
    spacing = np.asarray(base.geometry.spacing)
    pad = np.ceil(SHELL_MM[1] / spacing).astype(int) + 1
    a = np.maximum(np.asarray(start) - pad, 0)
    b = np.minimum(np.asarray(stop) + pad, base.geometry.shape)
    img = _smooth(_crop(base.array, a, b).astype(np.float32), spacing)
    full = np.zeros(img.shape, dtype=bool)
    full[tuple(slice(s - o, e - o) for s, e, o in zip(start, stop, a, strict=True))] = mask
    ring = _shell(full, spacing)
    if not ring.any() or not full.any():
        return []
    les, sur = float(np.median(img[full])), float(np.median(img[ring]))
    out = []
    for t in BOUNDARY_FRACTIONS:
        level = les + t * (sur - les)
        if sur < les:
            out.append(IntensityModel(model.center, level, model.high, model.dark))
        else:
            out.append(IntensityModel(model.center, model.low, level, model.dark))
    return out


# Growth allowed beyond the registered mask when it is re-delineated at the follow-up: a share of
# the lesion's equivalent radius, within [GROW_MM[0], GROW_MM[1]] mm (at least one voxel per axis).
GROW_SHARE = 0.4
GROW_MM = (2.0, 8.0)
# Below this share of the registered mask's volume, nothing lesion-like is left there: lost.
LEFT_SHARE = 0.2
# Re-delineate from the registered mask when the baseline lesion's contrast to its surroundings is at
# least this many times the follow-up's noise: the boundary level (halfway) is then 4 noise widths
# from either tissue, so single voxels are rarely misread.
REDELINEATE_CNR = 8.0


def _grow_region(mask: np.ndarray, spacing, grow_mm: float) -> np.ndarray:
    """``mask`` grown by ``grow_mm`` (physical distance) and by at least one voxel along each axis."""
    near = ndimage.distance_transform_edt(~mask, sampling=spacing) <= grow_mm
    return near | ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1))


def _redelineate(
    base: Image,
    own_crop: np.ndarray,
    lstart,
    lstop,
    m: np.ndarray,
    follow: Image,
    fimg: np.ndarray,
    ra,
    rb,
    mapped_r: np.ndarray,
    model: IntensityModel,
) -> tuple[np.ndarray, dict]:
    """The registered mask re-delineated by the follow-up's own intensities (seeded by it).

    Where the lesion borders tissue of another density (lung, fat, liver), the lesion's
    intensity range decides the follow-up boundary, so growth and shrinkage are measured; where
    it touched tissue of its own density at baseline (chest wall, mediastinum, a vessel), that
    tissue is mapped into the follow-up too and stays excluded, so the registered boundary holds
    there. The result is lesion-like tissue within a bounded growth of the registered mask that
    touches it. Returns (mask on the [ra, rb) frame, facts).
    """
    bgeo, fgeo = base.geometry, follow.geometry
    bsp, fsp = np.asarray(bgeo.spacing), np.asarray(fgeo.spacing)
    n_mapped = int(mapped_r.sum())
    eq_radius = (3 * n_mapped * np.prod(fsp) / (4 * np.pi)) ** (1 / 3)
    grow = float(np.clip(GROW_SHARE * eq_radius, *GROW_MM))
    # Baseline tissue of the lesion's own density around it that is not the lesion: what it touched.
    pad = np.ceil((grow + 3.0) / bsp).astype(int) + 1
    a = np.maximum(np.asarray(lstart) - pad, 0)
    b = np.minimum(np.asarray(lstop) + pad, bgeo.shape)
    bimg = _smooth(_crop(base.array, a, b).astype(np.float32), bsp)
    lesion = np.zeros(bimg.shape, dtype=bool)
    lesion[tuple(slice(s - o, e - o) for s, e, o in zip(lstart, lstop, a, strict=True))] = own_crop
    alike = (bimg >= model.low) & (bimg <= model.high) & ~lesion
    alike &= ndimage.distance_transform_edt(~lesion, sampling=bsp) <= grow + 2.0
    if alike.any():
        attached = map_mask(alike, bgeo.crop(a, b), m, fgeo.crop(ra, rb)) & ~mapped_r
    else:
        attached = np.zeros(mapped_r.shape, dtype=bool)
    like = (fimg >= model.low) & (fimg <= model.high)
    allowed = _grow_region(mapped_r, fsp, grow) & ~attached
    cand = like & allowed
    lab, n = ndimage.label(cand)
    facts = {"grow_mm": grow, "attached_share": float(attached.sum()) / max(1, n_mapped)}
    if not n:
        return np.zeros(mapped_r.shape, dtype=bool), facts | {"left": 0.0}
    hit = np.unique(lab[mapped_r & cand])
    hit = hit[hit > 0]
    out = np.isin(lab, hit)
    if out.any():
        out = ndimage.binary_fill_holes(out)
    # Share of the result's outer boundary that sits at the growth limit (still lesion-like beyond):
    # how much of the new boundary the intensities did not decide.
    edge = out & ~ndimage.binary_erosion(out, ndimage.generate_binary_structure(3, 1))
    at_limit = edge & ~ndimage.binary_erosion(allowed | attached, ndimage.generate_binary_structure(3, 1))
    facts.update(left=float(out.sum()) / max(1, n_mapped), ratio=float(out.sum()) / max(1, n_mapped),
                 at_limit=float(at_limit.sum()) / max(1, int(edge.sum())))
    return out, facts


def _track_one(
    base: Image,
    lm: LesionMask,
    follow: Image,
    m_global: np.ndarray,
    check,
    info: dict | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """(mask crop, crop start) in the follow-up, or (None, None, reason) when lost.

    ``info``, when given, receives intermediate results (for benchmarks and debugging).
    """
    info = {} if info is None else info
    bgeo, fgeo = base.geometry, follow.geometry
    bsp = np.asarray(bgeo.spacing)
    lstart = np.asarray(lm.start, dtype=int)
    lstop = np.asarray(lm.stop, dtype=int)
    own_crop = lm.array
    lesion_idx = np.argwhere(own_crop) + lstart
    center_xyz = _xyz(bgeo.index_to_world(lesion_idx.mean(axis=0)))
    extent_mm = (lstop - lstart) * bsp

    # 1. local refinement around the lesion
    half = np.maximum(LOCAL_HALF_SIZE_MM, extent_mm / 2 + 20.0)
    c_idx = lesion_idx.mean(axis=0)
    fa = np.clip(np.floor(c_idx - half / bsp).astype(int), 0, bgeo.shape)
    fb = np.clip(np.ceil(c_idx + half / bsp).astype(int) + 1, 0, bgeo.shape)
    ma, mb = _index_box_of_world_box(bgeo, fa, fb, m_global, fgeo, pad_mm=20.0)
    if np.any(mb - ma < 1):
        return None, None, "maps outside the follow-up's field of view"
    ba, bb = _index_box_of_world_box(bgeo, lstart, lstop, m_global, fgeo, pad_mm=0.0)
    if np.any(bb - ba < 1):
        return None, None, "maps outside the follow-up's field of view"
    m = m_global
    if np.all(mb - ma >= 8) and np.all(fb - fa >= 8):
        fixed = reg.downsampled(base.array, bgeo, reg.LOCAL_SPACING_MM, fa, fb)
        moving = reg.downsampled(follow.array, fgeo, reg.LOCAL_SPACING_MM, ma, mb)
        m_local = reg.local_affine(fixed, moving, m_global, center_xyz, check)
        # Keep the local fit only when it matches the lesion's region better than the global one
        # and does not jump far (a drift on a homogeneous organ or at a field-of-view edge).
        moved_mm = np.linalg.norm(reg.apply(m_local, center_xyz) - reg.apply(m_global, center_xyz))
        if moved_mm <= 25.0 and reg.similarity(fixed, moving, m_local) < reg.similarity(fixed, moving, m_global):
            m = m_local
    check()

    # 2. mapped mask on a follow-up sub-grid around the lesion
    pad = 2.0 * float(np.max(fgeo.spacing))
    sa, sb = _index_box_of_world_box(bgeo, lstart, lstop, m, fgeo, pad_mm=pad)
    if np.any(sb - sa < 1):
        return None, None, "maps outside the follow-up's field of view"
    pa, pb = np.maximum(lstart - 1, 0), np.minimum(lstop + 1, bgeo.shape)
    padded = _mask_box(lm, pa, pb)
    mapped = map_mask(padded, bgeo.crop(pa, pb), m, fgeo.crop(sa, sb))
    if not mapped.any():  # sub-voxel lesion after resampling: keep the mapped centroid voxel
        cz = np.round(fgeo.world_to_index(_zyx(reg.apply(m, center_xyz)))).astype(int) - sa
        if np.any(cz < 0) or np.any(cz >= np.asarray(mapped.shape)):
            return None, None, "maps outside the follow-up's field of view"
        mapped[tuple(cz)] = True
    check()

    # 3. baseline lesion's intensity model and contrast; follow-up region's statistics
    model, base_contrast = _lesion_model(base, padded, pa, pb)
    fsp = np.asarray(fgeo.spacing)
    margin = np.ceil(np.maximum(10.0, 0.5 * extent_mm.max()) / fsp).astype(int)
    ra, rb = np.maximum(sa - margin, 0), np.minimum(sb + margin, fgeo.shape)
    fimg = _smooth(_crop(follow.array, ra, rb).astype(np.float32), fsp)
    mapped_r = np.zeros(fimg.shape, dtype=bool)
    mapped_r[tuple(slice(a - r, b - r) for a, b, r in zip(sa, sb, ra, strict=True))] = mapped
    around = fimg[_shell(mapped_r, fsp)]
    n_mapped = int(mapped_r.sum())
    mapped_c = np.argwhere(mapped_r).mean(axis=0)
    eq_radius = (3 * n_mapped * np.prod(fsp) / (4 * np.pi)) ** (1 / 3)

    info.update(mapped=mapped_r, start=ra, model=model, base_contrast=base_contrast, matrix=m, fimg=fimg, stop=rb)

    def lesion_like(mask: np.ndarray) -> bool:
        vals = fimg[mask]
        med = float(np.median(vals))
        if not model.low <= med <= model.high:
            return False
        if abs(base_contrast) < 30.0:
            return True  # no usable contrast at baseline: intensity is all we can check
        c = _contrast(vals, around)
        return c * np.sign(base_contrast) >= 0.3 * abs(base_contrast)

    # 4a. A lesion that stands out from its surroundings by many times the follow-up's noise:
    # the registered mask re-delineated by the follow-up's own intensities (see _redelineate).
    # Per voxel, the boundary level then lies several noise widths from both tissues, so growth
    # and shrinkage are measured voxel by voxel, and the registered boundary is kept only where
    # the lesion touched tissue of its own density at baseline.
    info["cnr"] = cnr = abs(base_contrast) / _noise(fimg)
    if cnr >= REDELINEATE_CNR:
        refined, facts = _redelineate(base, own_crop, lstart, lstop, m, follow, fimg, ra, rb, mapped_r, model)
        info.update(refined=refined, refine=facts)
        left = facts["left"]
        if left < LEFT_SHARE:
            return None, None, (f"no lesion-like tissue left where the lesion maps to ({left:.0%} of its "
                                "registered volume)")
        # A second, independent sign of a vanished lesion: the mapped region's core no longer stands
        # out from its surroundings as at baseline. Alone it also fires when the registration is a few
        # millimetres off a small lesion, so it decides only when little lesion-like tissue is left.
        b_contrast, b_side = _baseline_appearance(base, own_crop, lstart, lstop)
        f_side = _core_lesion_side(fimg, mapped_r, _shell(mapped_r, fsp), b_contrast, fsp)
        info.update(baseline_side=b_side, follow_side=f_side, baseline_ring_contrast=b_contrast)
        if left < 2.5 * LEFT_SHARE and f_side < KEEP_FRACTION * b_side:
            return None, None, (
                f"little lesion-like tissue left where the lesion maps to ({left:.0%} of its registered volume) "
                f"and the region no longer stands out from its surroundings (core {f_side:.0%} lesion-like vs "
                f"{b_side:.0%} at baseline)"
            )
        return refined, ra, ""

    # 4b. re-segmentation with a grown box around the mapped mask: first with the baseline
    # lesion's intensity model (same patient, same protocol), then adaptively (the lesion's
    # appearance may have changed); the first plausible result wins.
    # Self-check first: the same segmentation on the baseline, from the same kind of grown box,
    # must reproduce the baseline mask. When it cannot (a lesion with no intensity edge, e.g. a
    # sarcoma inside muscle), the registration is more trustworthy than any re-segmentation.
    bgrow = np.ceil(np.maximum(5.0, 0.3 * extent_mm) / bsp).astype(int)
    frame = lstart - bgrow - 1
    truth = np.zeros(tuple(lstop - lstart + 2 * bgrow + 2), dtype=bool)
    truth[tuple(slice(a - f, b - f) for a, b, f in zip(lstart, lstop, frame, strict=True))] = own_crop

    def self_check(prior: IntensityModel) -> float:
        own = segment_box(
            base.array, bsp, np.maximum(lstart - bgrow, 0), np.minimum(lstop + bgrow, bgeo.shape),
            check=check, core=(lstart, lstop), prior=prior,
        )
        own_full = np.zeros_like(truth)
        lo = np.maximum(own.start, frame)
        hi = np.minimum(own.stop, frame + np.asarray(own_full.shape))
        if np.any(hi <= lo):
            return 0.0
        own_full[tuple(slice(a - f, b - f) for a, b, f in zip(lo, hi, frame, strict=True))] = own.mask[
            tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, own.start, strict=True))
        ]
        return 2.0 * float((own_full & truth).sum()) / max(1, int(own_full.sum() + truth.sum()))

    # Calibrate on the baseline, where the lesion's mask is known: the intensity model that
    # reproduces it best (the estimated one, or the lesion/surroundings boundary placed at other
    # fractions of the step between them) is the one to re-segment the follow-up with.
    self_dice = self_check(model)
    info.update(self_dice_model=self_dice)
    if self_dice < CALIBRATED_DICE:
        for variant in _model_variants(base, padded, pa, pb, model):
            d = self_check(variant)
            if d > self_dice + 0.02:
                model, self_dice = variant, d
    info.update(self_dice=self_dice)
    grow = np.ceil(np.maximum(5.0, 0.3 * (sb - sa) * fsp) / fsp).astype(int)
    box_a = np.maximum(sa - grow, 0)
    box_b = np.minimum(sb + grow, fgeo.shape)
    # The gate is the estimated model's own self-check: a lesion that only a recalibrated
    # boundary reproduces has no clear intensity edge, and re-segmenting it in the follow-up
    # finds "a lesion" in noise also where it has vanished (weak-edge phantom, both cases).
    edge_ok = info["self_dice_model"] >= SELF_CHECK_DICE
    for prior in (model, None) if edge_ok else ():
        cand = segment_box(follow.array, fsp, box_a, box_b, check=check, core=(sa, sb), prior=prior)
        if cand.empty:
            continue
        a_r = np.zeros(fimg.shape, dtype=bool)
        # cand's crop is [cand.start, cand.stop); place it into the [ra, rb) frame.
        lo = np.maximum(cand.start, ra)
        hi = np.minimum(cand.stop, rb)
        a_r[tuple(slice(a - r, b - r) for a, b, r in zip(lo, hi, ra, strict=True))] = cand.mask[
            tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, cand.start, strict=True))
        ]
        n_a = int(a_r.sum())
        dist_mm = float(np.linalg.norm((np.argwhere(a_r).mean(axis=0) - mapped_c) * fsp)) if n_a else np.inf
        plausible = (
            n_a > 0
            and 0.1 <= n_a / n_mapped <= 6.0
            and dist_mm <= max(10.0, eq_radius)
            and bool((a_r & mapped_r).any())
            and lesion_like(a_r)
        )
        info.update(candidate=a_r, plausible=plausible, dist_mm=dist_mm, n_candidate=n_a, prior=prior)
        if plausible:
            return a_r, ra, ""

    # 5. fallback: the registered mask restricted to lesion-like tissue. When the lesion has
    # no intensity edge (self-check failed) and most of the mask is still lesion-like, the
    # registration alone is the better delineation. A lesion with an edge whose re-segmentation
    # failed gets no such benefit of the doubt: it may have disappeared.
    why = (
        "re-segmentation implausible"
        if edge_ok
        else f"no intensity edge at baseline (self-check Dice {info['self_dice_model']:.2f})"
    )
    # A vanished lesion leaves tissue of its surroundings where it maps to; some of it may still
    # be in the lesion's intensity range (vessels, organ wall). Keep the registered mask only
    # when the mapped region still stands out from its own ring as the baseline lesion did.
    b_contrast, b_side = _baseline_appearance(base, own_crop, lstart, lstop)
    f_side = _core_lesion_side(fimg, mapped_r, _shell(mapped_r, fsp), b_contrast, fsp)
    info.update(baseline_side=b_side, follow_side=f_side, baseline_ring_contrast=b_contrast)
    if abs(b_contrast) >= EDGE_HU and f_side < KEEP_FRACTION * b_side:
        return None, None, (
            f"{why}; the region no longer stands out from its surroundings "
            f"(core {f_side:.0%} lesion-like vs {b_side:.0%} at baseline)"
        )
    tissue_all = mapped_r & (fimg >= model.low) & (fimg <= model.high)
    frac = float(tissue_all.sum()) / max(1, n_mapped)
    info.update(tissue_fraction=frac)
    if not edge_ok and frac >= 0.6 and lesion_like(tissue_all):
        return mapped_r, ra, f"{why}; used the registered mask ({frac:.0%} lesion-like)"
    lab, n = ndimage.label(tissue_all)
    if n:
        sizes = ndimage.sum(tissue_all, lab, index=np.arange(1, n + 1))
        tissue = lab == (int(np.argmax(sizes)) + 1)
        if tissue.sum() >= max(1, 0.1 * n_mapped) and lesion_like(tissue):
            tissue = ndimage.binary_fill_holes(tissue)
            return tissue, ra, f"{why}; used the registered mask on lesion-like tissue"
    return None, None, "no lesion-like tissue left where the lesion maps to"


def track_lesions(
    baseline: Image,
    baseline_masks: Mapping[int, LesionMask] | LabelMap,
    followup: Image,
    *,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    candidates: bool = True,
) -> TrackingResult:
    """Every baseline lesion on ``followup``'s grid with the same ids (see module doc).

    ``baseline_masks`` is each lesion's own whole mask (``{id: LesionMask}``; masks may overlap,
    each lesion is tracked on its own) or an instance map. The result's ``lesions`` holds each
    lesion's own mask with a status: ``ok`` (re-segmented), ``check`` (the registered mask had to
    be used, with the reason) or ``lost``; ``new_candidates`` proposes lesion-like regions of the
    follow-up with no lesion at the matching baseline place (see :mod:`.candidates`).
    """
    masks = as_lesion_masks(baseline_masks)
    for lid, lm in masks.items():
        diffs = baseline.geometry.grid_differences(lm.geometry)
        if diffs:
            raise InputImageError(
                f"the baseline mask of lesion {lid} is not on the baseline image's grid (" + "; ".join(diffs) + "); "
                "resample it onto the baseline image first"
            )

    def check() -> None:
        if cancel is not None:
            cancel.raise_if_cancelled()

    max_id = max(masks, default=0)
    dtype = np.uint16 if max_id <= np.iinfo(np.uint16).max else np.uint32
    # A placeholder that holds no memory (a broadcast zero): the instance map is composed once, at
    # the end, after the new-lesion search, so the two never take memory at the same time.
    out = LabelMap(np.broadcast_to(np.zeros((), dtype=dtype), followup.geometry.shape), followup.geometry,
                   f"{followup.name}_lesions")
    result = TrackingResult(out)
    ids = sorted(lid for lid, lm in masks.items() if not lm.is_empty)
    for lid in sorted(set(masks) - set(ids)):
        result.lost_ids.append(lid)
        result.messages.append(f"lesion {lid}: lost (its baseline mask is empty)")
        result.lesions[lid] = LesionResult(lid, LesionMask.empty(followup.geometry), "lost",
                                           ["its baseline mask is empty"])
    if not ids:
        result.messages.append("the baseline holds no lesion: nothing to track")
    total = len(ids) + 1 + int(candidates)
    check()
    report(on_progress, 0, total, "registering the follow-up to the baseline (global)")
    # ~4 mm voxels for whole scans; finer for small fields of view (cropped scans), so that
    # the global step still sees about 64 voxels across.
    target = min(reg.GLOBAL_SPACING_MM, max(1.0, float(np.max(baseline.geometry.extent_mm)) / 64.0))
    fixed = reg.downsampled(baseline.array, baseline.geometry, target)
    moving = reg.downsampled(followup.array, followup.geometry, target)
    m_global = reg.global_affine(fixed, moving, check)
    del fixed, moving
    for k, lid in enumerate(ids):
        check()
        report(on_progress, k + 1, total, f"tracking lesion {lid}")
        mask, start, why = _track_one(baseline, masks[lid], followup, m_global, check)
        if mask is None:
            result.lost_ids.append(lid)
            result.messages.append(f"lesion {lid}: lost ({why})")
            result.lesions[lid] = LesionResult(lid, LesionMask.empty(followup.geometry), "lost", [f"lost: {why}"])
            continue
        own = LesionMask.from_crop(followup.geometry, start, mask)
        notes = [why] if why else []
        quality = {}
        if not own.is_empty:
            graded = _grade(followup.array, followup.geometry.spacing,
                            RoiMask(own.array, np.asarray(own.start), np.asarray(own.stop)), None)
            quality = graded.quality
            notes += [r for r in graded.reasons if r.startswith(("weak edge", "very small"))]
        status = "check" if notes else "ok"
        result.lesions[lid] = LesionResult(lid, own, status, notes, {"engine": "classical", "quality": quality})
        if why:
            result.messages.append(f"lesion {lid}: {why}")
    if candidates:
        from .candidates import new_lesion_candidates

        check()
        report(on_progress, total - 1, total, "looking for new lesions")
        result.new_candidates = new_lesion_candidates(baseline, masks, followup, m_global, result.lesions, check)
    result.labels = compose_label_map([result.lesions[lid] for lid in ids if lid in result.lesions],
                                      followup.geometry, out.name)
    report(on_progress, total, total, "tracking done")
    return result

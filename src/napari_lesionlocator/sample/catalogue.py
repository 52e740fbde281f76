"""Which lesions the synthetic patient has, and where: seeded placement rules with organ checks.

Seven lesions (ids stable over time; ``scales`` = linear size per timepoint, 0 = absent):

====  =================  ===========  ===================  ====================================
id    kind               organ        scales               meaning
====  =================  ===========  ===================  ====================================
1     solid_nodule       lung         1, 1.15, 1.30        grows
2     part_solid_nodule  lung         1, 1.20, 1.35        grows; spiculated, touches a vessel
3     liver_lesion       liver        1, 0.85, 0.70        shrinks (hypodense, 20 HU)
4     lymph_node         mediastinum  1, 0.70, 0          shrinks, then disappears
5     solid_nodule       lung         1, 1, 1              stable small nodule (8 mm)
6     lung_mass          lung         1, 1.10, 1.10        large, lobulated, touches the pleura
7     liver_lesion       liver        0, 1, 1.40           new at follow-up 1
====  =================  ===========  ===================  ====================================

Every lesion is checked against the analytic organ masks at its largest size (surface points of
the star-shaped model) and moved towards the organ's interior until it fits.
"""

from __future__ import annotations

import numpy as np

from .anatomy import Phantom, liver_mask, lung_mask, mediastinum_mask
from .frames import rotation_zyx
from .lesions import LesionModel, fibonacci_sphere

__all__ = ["lesion_models"]


def _unit(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = float(np.clip((p - a) @ ab / max(float(ab @ ab), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(p - a - t * ab))


def _vessel_contact_centre(phantom: Phantom, rng, radius: float, misfit=lambda centre: 0.0) -> np.ndarray:
    """A lesion centre in the left lung whose surface touches a 1.5-3 mm pulmonary vessel.

    Candidates (several sides of each suitable vessel, in seeded order) whose sphere would cut a
    bronchus or reach the pleura are skipped; of the rest, the first with ``misfit(centre)`` at
    most 3 % is taken, else the one with the smallest misfit.
    """
    caps = [c for c in phantom.capsules if c.kind == "lung_vessel" and 1.5 <= 0.5 * (c.ra + c.rb) <= 3.0]
    caps = [c for c in caps if 0.5 * (c.a[2] + c.b[2]) > 30.0 and -40.0 < 0.5 * (c.a[0] + c.b[0]) < 30.0]
    bronchi = [c for c in phantom.capsules if c.kind in ("bronchus", "airway")]
    offsets = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    best, best_misfit = None, np.inf
    for i in rng.permutation(len(caps)):
        cap = caps[i]
        mid = 0.5 * (cap.a + cap.b)
        axis = (cap.b - cap.a) / np.linalg.norm(cap.b - cap.a)
        for side in rng.normal(size=(4, 3)):
            perp = np.cross(axis, side)
            perp /= np.linalg.norm(perp)
            centre = mid + perp * (0.5 * (cap.ra + cap.rb) + 0.8 * radius)
            probe = centre + offsets * (radius + 3.0)
            if not lung_mask(probe[:, 0], probe[:, 1], probe[:, 2]).all():
                continue
            if any(_segment_distance(centre, b.a, b.b) < 1.15 * radius + max(b.ra, b.rb) for b in bronchi):
                continue
            m = misfit(centre)
            if m <= 0.03:
                return centre
            if m < best_misfit:
                best, best_misfit = centre, m
    if best is None:
        raise RuntimeError("no pulmonary vessel fits the part-solid nodule; adjust the placement rules")
    return best


def _lung_with_margin(pz, py, px, margin_mm: float = 5.0):
    return lung_mask(pz, py, px) & lung_mask(pz + margin_mm, py, px) & lung_mask(pz - margin_mm, py, px)


def _outside_fraction(model: LesionModel, inside_fn, scale: float) -> float:
    """Fraction of the lesion's surface points (at ``scale``) that fall outside ``inside_fn``."""
    u = _SURFACE_DIRS
    pts = model.centre + scale * ((u * model._surface(u)[:, None]) * model.semi_axes) @ model.rotation.T
    return 1.0 - float(inside_fn(pts[:, 0], pts[:, 1], pts[:, 2]).mean())


def _fit_inside(model: LesionModel, inside_fn, anchor, max_outside: float = 0.0, step_mm: float = 1.0) -> None:
    """Move the lesion towards ``anchor`` until at most ``max_outside`` of its largest surface is outside."""
    scale = max(model.scales)
    anchor = np.asarray(anchor, float)
    for _ in range(60):
        if _outside_fraction(model, inside_fn, scale) <= max_outside:
            return
        d = anchor - model.centre
        n = np.linalg.norm(d)
        if n < step_mm:
            break
        model.centre = model.centre + d / n * step_mm
    raise RuntimeError(f"lesion {model.id} ({model.kind}) does not fit in its organ; adjust its placement")


_SURFACE_DIRS = fibonacci_sphere(1500)


def lesion_models(phantom: Phantom, seed: int) -> list[LesionModel]:
    """The seeded lesion models of the patient ``phantom`` (ids 1..7, see the module table)."""
    rng = np.random.default_rng([seed, 2])

    def jitter(c, mm=3.0):
        return np.asarray(c, float) + rng.uniform(-mm, mm, 3)

    def axes(r, spread=0.12):
        return r * rng.uniform(1 - spread, 1 + spread, 3)

    models = [
        LesionModel(1, "solid_nodule", "lung", jitter((55, -20, -70)), axes(6.0), _random_rotation(rng),
                    (1.0, 1.15, 1.30), 35.0, bump_dirs=_unit(rng, 3), bump_amp=rng.uniform(0.05, 0.12, 3),
                    bump_width=rng.uniform(0.5, 0.8, 3)),
    ]
    r2 = 10.5
    nodule = LesionModel(
        2, "part_solid_nodule", "lung", np.zeros(3), axes(r2, 0.08), _random_rotation(rng),
        (1.0, 1.20, 1.35), 25.0, ggo_hu=-600.0, core_fraction=0.45,
        bump_dirs=_unit(rng, 17), bump_amp=np.r_[rng.uniform(0.1, 0.2, 3), rng.uniform(0.4, 0.9, 14)],
        bump_width=np.r_[rng.uniform(0.5, 0.8, 3), rng.uniform(0.12, 0.17, 14)])

    def misfit(centre):
        # At its largest, with 5 mm to spare along z for breathing; a few spicule tips may reach
        # the pleura (pleural tags), nothing more.
        nodule.centre = centre
        return _outside_fraction(nodule, _lung_with_margin, max(nodule.scales))

    nodule.centre = _vessel_contact_centre(phantom, rng, r2, misfit)
    models.append(nodule)
    models.append(LesionModel(3, "liver_lesion", "liver", jitter((-70, -10, -60)), axes(15.0, 0.1),
                              _random_rotation(rng), (1.0, 0.85, 0.70), 20.0, necrotic_hu=12.0,
                              bump_dirs=_unit(rng, 3), bump_amp=rng.uniform(0.04, 0.1, 3),
                              bump_width=rng.uniform(0.6, 0.9, 3)))
    models.append(LesionModel(4, "lymph_node", "mediastinum", jitter((18, -3, 2), 1.5), np.array([10.0, 7.5, 10.5]),
                              rotation_zyx((rng.uniform(-15, 15), 0, 0)), (1.0, 0.70, 0.0), 40.0))
    models.append(LesionModel(5, "solid_nodule", "lung", jitter((-20, 50, -60)), axes(4.0, 0.08),
                              _random_rotation(rng), (1.0, 1.0, 1.0), 30.0))
    models.append(LesionModel(6, "lung_mass", "lung", jitter((48, -34, 76), 2.0), axes(17.0, 0.08),
                              _random_rotation(rng), (1.0, 1.10, 1.10), 38.0, necrotic_hu=18.0,
                              bump_dirs=_unit(rng, 8), bump_amp=rng.uniform(0.1, 0.22, 8),
                              bump_width=rng.uniform(0.3, 0.5, 8)))
    models.append(LesionModel(7, "liver_lesion", "liver", jitter((-95, 20, -75), 2.0), axes(6.0, 0.08),
                              _random_rotation(rng), (0.0, 1.0, 1.40), 25.0))
    # Keep every lesion inside its organ at its largest size; the lung mass is placed beyond the
    # pleura on purpose and pulled in until it just touches it (pleural contact, no chest-wall invasion).
    _fit_inside(models[0], lung_mask, (40.0, -10.0, -55.0))
    _fit_inside(models[2], liver_mask, (-75.0, 0.0, -55.0))
    _fit_inside(models[4], lung_mask, (-10.0, 30.0, -55.0))
    _fit_inside(models[5], lung_mask, (40.0, -10.0, 45.0), max_outside=0.03)
    _fit_inside(models[6], liver_mask, (-75.0, 0.0, -55.0))
    _fit_inside(models[3], _node_space(phantom), (0.0, 0.0, 2.0))
    return models


def _node_space(phantom: Phantom):
    """Where the subcarinal node may lie: mediastinum, clear of the main airways' lumen."""
    airways = [c for c in phantom.capsules if c.kind == "airway"]

    def inside(pz, py, px):
        p = np.stack([pz, py, px], axis=-1)
        ok = mediastinum_mask(pz, py, px)
        for cap in airways:
            ab = cap.b - cap.a
            t = np.clip((p - cap.a) @ ab / float(ab @ ab), 0.0, 1.0)
            d = np.linalg.norm(p - cap.a - t[:, None] * ab, axis=1)
            ok &= d > cap.ra - 1.0  # may press on the wall, never into the air
        return ok

    return inside

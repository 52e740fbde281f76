"""Randomised evaluation family: the sample's lesion kinds placed, sized and contrasted by a seed.

The sample study (:mod:`.synthetic`) has one fixed placement of each lesion kind; an engine tuned
on it can fail on the same kinds elsewhere. A *family case* is drawn from a seed:

* the same analytic patient (:mod:`.anatomy`, its vessel tree seeded too);
* five to seven lesions of the kinds in :data:`KINDS`, placed where their kind is hard:
  nodules and masses flattened against the pleura / chest wall or the mediastinum, lymph nodes in
  mediastinal fat pressed against vessels or the heart (same density), low-contrast (hypo- or
  hyperdense) lesions inside the liver or against its border, part-solid nodules with a
  ground-glass rim; diameters, attenuations and shapes at random;
* a baseline and one follow-up (rigid motion, breathing, per-lesion growth or shrinkage, sometimes
  a lesion that vanishes, and always one *new* lesion at the follow-up);
* a grid per case: thick (3-5 mm) or thin (1-1.5 mm) slices; identity, flipped or oblique
  direction; the follow-up's grid differs a little (spacing, field of view).

Ground truth is exact: a lesion is its star-shaped model at the voxel centres, restricted to the
tissues it grows in (lung, mediastinal fat, liver), so a lesion against the chest wall is
flattened by it rather than painted into the muscle. Rendering is the sample study's (partial
volume PSF, correlated noise, nothing resampled).

Usage::

    from napari_lesionlocator.sample.family import make_family_case
    case = make_family_case(seed=101)
    case.images, case.labels, case.lesions, case.new_ids
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..core.geometry import Geometry
from ..core.image import Image, LabelMap
from .anatomy import Phantom, Tissue, lung_mask, mediastinum_mask
from .catalogue import _random_rotation, _unit
from .frames import PatientPose, rotation_zyx
from .lesions import LesionModel, lesion_field
from .synthetic import _acquire, _grid, _render_anatomy

__all__ = ["KINDS", "FamilyLesion", "FamilyCase", "make_family_case", "TUNING_SEEDS", "HELD_OUT_SEEDS"]

#: Seeds used while developing the engine, and a range kept out of that loop (report separately).
TUNING_SEEDS = range(1000)
HELD_OUT_SEEDS = range(5000, 6000)

KINDS = (
    "juxtapleural_nodule",      # lung nodule flattened against the chest wall / diaphragm
    "juxtamediastinal_nodule",  # lung nodule against the mediastinum
    "lung_nodule",              # small solid nodule inside the lung (vessels around)
    "part_solid_nodule",        # solid core, ground-glass rim
    "lymph_node",               # in mediastinal fat, pressed against a vessel / the heart
    "liver_lesion",             # low contrast, inside the liver or against its border
    "lung_mass",                # large, against the pleura
)
_ORGAN = {"juxtapleural_nodule": "lung", "juxtamediastinal_nodule": "lung", "lung_nodule": "lung",
          "part_solid_nodule": "lung", "lymph_node": "mediastinum", "liver_lesion": "liver", "lung_mass": "lung"}
# Tissues a lesion of each organ grows in (its ground truth is clipped to them).
_ALLOWED = {
    "lung": (Tissue.LUNG, Tissue.LUNG_VESSEL, Tissue.AIRWAY_WALL, Tissue.AIRWAY),
    "mediastinum": (Tissue.FAT,),
    "liver": (Tissue.LIVER, Tissue.LIVER_VESSEL),
}
_DIAMETER_MM = {"juxtapleural_nodule": (8, 28), "juxtamediastinal_nodule": (10, 28), "lung_nodule": (6, 14),
                "part_solid_nodule": (12, 28), "lymph_node": (11, 24), "liver_lesion": (10, 40),
                "lung_mass": (32, 50)}
_MAP_MM = 2.0
_MAP_LO = np.array([-150.0, -104.0, -130.0])
_MAP_HI = np.array([118.0, 104.0, 130.0])


@dataclass(frozen=True)
class FamilyLesion:
    """One lesion of a family case.

    ``contact`` names what it is pressed against (``"pleura"``, ``"mediastinum"``, ``"vessel"``,
    ``"organ border"`` or ``"none"``); ``contrast_hu`` is its attenuation minus the nominal
    attenuation of the tissue around it; ``scales`` the linear size per timepoint (0 = absent).
    """

    id: int
    kind: str
    organ: str
    contact: str
    diameter_mm: float
    hu: float
    contrast_hu: float
    scales: tuple[float, ...]

    @property
    def new(self) -> bool:
        return self.scales[0] == 0 and any(s > 0 for s in self.scales[1:])

    @property
    def vanishes(self) -> bool:
        return self.scales[0] > 0 and any(s == 0 for s in self.scales[1:])


@dataclass
class FamilyCase:
    """A rendered family case: baseline and follow-up, exact ground truth, lesion list, grid tag."""

    seed: int
    images: list[Image]
    labels: list[LabelMap]
    lesions: list[FamilyLesion]
    grid: str
    noise_hu: float
    tissues: list[np.ndarray] = field(default_factory=list)

    @property
    def new_ids(self) -> list[int]:
        return [r.id for r in self.lesions if r.new]

    def lesion(self, lesion_id: int) -> FamilyLesion:
        for r in self.lesions:
            if r.id == lesion_id:
                return r
        raise KeyError(lesion_id)


# ----------------------------------------------------------------------------- placement maps
class _Maps:
    """The phantom's tissue classes on a 2 mm patient-frame grid, and distance maps for placement."""

    def __init__(self, phantom: Phantom) -> None:
        shape = tuple(int(v) for v in np.ceil((_MAP_HI - _MAP_LO) / _MAP_MM))
        self.geo = Geometry(shape, (_MAP_MM,) * 3, tuple(_MAP_LO), tuple(np.eye(3).ravel()))
        self.tissue, _ = _render_anatomy(phantom, self.geo, PatientPose.identity())
        zz, yy, xx = (np.asarray(_MAP_LO[i] + _MAP_MM * np.arange(n), dtype=np.float32)
                      for i, n in enumerate(shape))
        pz, py, px = np.meshgrid(zz, yy, xx, indexing="ij", sparse=True)
        self.lung = lung_mask(pz, py, px) & np.isin(self.tissue, _ALLOWED["lung"])
        self.medi = mediastinum_mask(pz, py, px)
        self.fat_medi = self.medi & (self.tissue == Tissue.FAT)
        self.liver = np.isin(self.tissue, _ALLOWED["liver"])
        sp = (_MAP_MM,) * 3
        self.d_lung, idx = ndimage.distance_transform_edt(self.lung, sampling=sp, return_indices=True)
        # What the nearest non-lung voxel is: the mediastinum, or the chest wall / diaphragm
        # (muscle, fat or bone outside the mediastinum); hilar vessels are neither.
        near_t = self.tissue[tuple(idx)]
        near_m = self.medi[tuple(idx)]
        wall = np.isin(near_t, (Tissue.MUSCLE, Tissue.FAT, Tissue.SKIN, Tissue.CORTICAL, Tissue.CANCELLOUS,
                                Tissue.CARTILAGE))
        self.lung_touch_medi = near_m
        self.lung_touch_wall = wall & ~near_m
        del near_t, near_m, wall, idx
        self.d_liver = ndimage.distance_transform_edt(self.liver, sampling=sp)
        blood = np.isin(self.tissue, (Tissue.BLOOD,))
        self.d_blood = ndimage.distance_transform_edt(~blood, sampling=sp)
        self.d_fat = ndimage.distance_transform_edt(self.fat_medi, sampling=sp)

    def point(self, idx) -> np.ndarray:
        return _MAP_LO + _MAP_MM * np.asarray(idx, float)

    def allowed_fraction(self, centre, radius: float, organ: str) -> float:
        """Share of a ball (centre mm, radius mm) lying in the organ's tissues."""
        i = np.round((np.asarray(centre) - _MAP_LO) / _MAP_MM).astype(int)
        r = int(np.ceil(radius / _MAP_MM))
        lo, hi = np.maximum(i - r, 0), np.minimum(i + r + 1, self.tissue.shape)
        sub = self.tissue[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        g = np.ogrid[tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, i))]
        ball = sum((gg * _MAP_MM) ** 2 for gg in g) <= radius ** 2
        if organ == "mediastinum":
            ok = self.fat_medi[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        elif organ == "lung":
            ok = self.lung[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        else:
            ok = np.isin(sub, _ALLOWED[organ])
        return float(ok[ball].mean()) if ball.any() else 0.0


def _candidates(maps: _Maps, kind: str, r: float, rng) -> tuple[np.ndarray, str]:
    """Map voxels where a lesion of ``kind`` and radius ``r`` (mm) may be centred, and its contact."""
    if kind in ("juxtapleural_nodule", "lung_mass"):
        sel = maps.lung & (maps.d_lung >= 0.55 * r) & (maps.d_lung <= 0.9 * r) & maps.lung_touch_wall
        return sel, "pleura"
    if kind == "juxtamediastinal_nodule":
        sel = maps.lung & (maps.d_lung >= 0.55 * r) & (maps.d_lung <= 0.9 * r) & maps.lung_touch_medi
        return sel, "mediastinum"
    if kind == "lung_nodule":
        return maps.lung & (maps.d_lung >= r + 4.0), "vessel"
    if kind == "part_solid_nodule":
        return maps.lung & (maps.d_lung >= 0.8 * r), "none"
    if kind == "lymph_node":
        sel = maps.fat_medi & (maps.d_blood >= 0.5 * r) & (maps.d_blood <= 0.95 * r) & (maps.d_fat >= 0.45 * r)
        return sel, "vessel"
    if kind == "liver_lesion":
        if rng.random() < 0.4:
            return maps.liver & (maps.d_liver >= 0.6 * r) & (maps.d_liver <= 0.9 * r), "organ border"
        return maps.liver & (maps.d_liver >= r + 3.0), "none"
    raise ValueError(kind)


def _model(kind: str, lid: int, centre, r: float, rng, scales) -> tuple[LesionModel, float]:
    """A lesion model of ``kind`` (equivalent radius ``r`` mm) and its contrast to its surroundings (HU)."""
    axes = r * rng.uniform(0.85, 1.15, 3)
    if kind == "lymph_node":
        axes = r * np.array([rng.uniform(1.0, 1.4), rng.uniform(0.65, 0.9), rng.uniform(0.8, 1.1)])
    axes *= r / float(np.prod(axes)) ** (1 / 3)  # keep the equivalent radius
    n_b = int(rng.integers(2, 7))
    bumps = {"bump_dirs": _unit(rng, n_b), "bump_amp": rng.uniform(0.03, 0.15, n_b),
             "bump_width": rng.uniform(0.4, 0.8, n_b)}
    organ = _ORGAN[kind]
    kw: dict = {}
    if kind == "part_solid_nodule":
        hu = float(rng.uniform(-20, 40))
        kw = {"ggo_hu": float(rng.uniform(-680, -450)), "core_fraction": float(rng.uniform(0.35, 0.6))}
        contrast = hu + 860.0
    elif organ == "lung":
        hu = float(rng.uniform(-20, 50))
        contrast = hu + 860.0
        if kind == "lung_mass" and rng.random() < 0.5:
            kw = {"necrotic_hu": float(hu - rng.uniform(10, 30))}
    elif kind == "lymph_node":
        hu = float(rng.uniform(20, 60))
        contrast = hu - 40.0  # against the blood it touches (fat around is -100)
    else:  # liver, 60 HU: mostly hypodense, some hyperdense, all low contrast
        delta = float(rng.uniform(-45, -12)) if rng.random() < 0.75 else float(rng.uniform(15, 35))
        hu = 60.0 + delta
        contrast = delta
    model = LesionModel(lid, kind, organ, np.asarray(centre, float), axes, _random_rotation(rng), tuple(scales),
                        hu, **kw, **bumps)
    return model, contrast


def _paint(model: LesionModel, scale: float, hu: np.ndarray, lab: np.ndarray, tissue: np.ndarray,
           geometry: Geometry, pose: PatientPose) -> int:
    """Paint one lesion (clipped to its organ's tissues) into a scan's HU and label arrays."""
    local = lesion_field(model, scale, geometry, pose)
    if local is None:
        return 0
    sl, rr, surf = local
    inside = (rr < surf) & np.isin(tissue[sl], _ALLOWED[model.organ]) & (lab[sl] == 0)
    view = hu[sl]
    if model.ggo_hu is not None:
        view[inside] = np.maximum(view[inside], model.ggo_hu)
        view[inside & (rr < model.core_fraction * surf)] = model.hu
    else:
        t = np.clip(rr / surf, 0.0, 1.0)
        centre_hu = model.necrotic_hu if model.necrotic_hu is not None else model.hu
        val = model.hu + (centre_hu - model.hu) * np.clip(1.0 - t / 0.6, 0.0, 1.0)
        view[inside] = val[inside]
    lab[sl][inside] = model.id
    return int(inside.sum())


def _place(maps: _Maps, kinds, rng, placed: list, first_id: int, scales_fn) -> list[tuple[LesionModel, str, float]]:
    out = []
    lid = first_id
    for kind in kinds:
        lo, hi = _DIAMETER_MM[kind]
        r = 0.5 * float(rng.uniform(lo, hi))
        sel, contact = _candidates(maps, kind, r, rng)
        cand = np.argwhere(sel)
        if not len(cand):
            continue
        for i in rng.permutation(len(cand))[:300]:
            c = maps.point(cand[i]) + rng.uniform(-1.0, 1.0, 3)
            if any(np.linalg.norm(c - p) < r + pr + 12.0 for p, pr in placed):
                continue
            if maps.allowed_fraction(c, r, _ORGAN[kind]) < 0.6:
                continue
            model, contrast = _model(kind, lid, c, r, rng, scales_fn(kind))
            out.append((model, contact, contrast))
            placed.append((c, 1.3 * r))
            lid += 1
            break
    return out


# ----------------------------------------------------------------------------- the case
def _grid_spec(rng) -> tuple[str, np.ndarray, np.ndarray]:
    """(tag, spacing (z, y, x) mm, direction 3x3) of a case's baseline grid."""
    thick = rng.random() < 0.5
    spacing = np.array([rng.uniform(3.0, 5.0) if thick else rng.uniform(1.0, 1.5),
                        *([rng.uniform(0.9, 1.5)] * 2)])
    kind = ("identity", "flipped", "oblique")[int(rng.integers(3))]
    if kind == "identity":
        d = np.eye(3)
    elif kind == "flipped":
        d = np.diag([(-1.0, 1.0, 1.0), (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0)][int(rng.integers(3))])
    else:
        d = rotation_zyx(tuple(rng.uniform(-15, 15, 3)))
    return f"{'thick' if thick else 'thin'} {kind}", spacing, d


def make_family_case(seed: int, *, n_lesions: int | None = None) -> FamilyCase:
    """Render family case ``seed`` (baseline + one follow-up); see the module doc."""
    rng = np.random.default_rng([int(seed), 77])
    phantom = Phantom(seed)
    maps = _Maps(phantom)
    n = int(n_lesions) if n_lesions is not None else int(rng.integers(5, 8))
    kinds = [str(k) for k in rng.permutation(KINDS)][: min(n, len(KINDS))]
    vanish = int(rng.integers(len(kinds))) if rng.random() < 0.25 else -1

    def scales_baseline(kind):
        return (1.0, float(rng.uniform(0.75, 1.3)))

    placed: list = []
    items = _place(maps, kinds, rng, placed, 1, scales_baseline)
    if 0 <= vanish < len(items) and items[vanish][0].kind not in ("lung_mass",):
        m = items[vanish][0]
        m.scales = (1.0, 0.0)
    new_kind = ("lung_nodule", "juxtapleural_nodule", "liver_lesion", "lymph_node")[int(rng.integers(4))]
    saved = _DIAMETER_MM[new_kind]
    _DIAMETER_MM[new_kind] = (max(8, saved[0]), max(14, min(20, saved[1])))
    try:
        new = _place(maps, [new_kind], rng, placed, len(items) + 1, lambda kind: (0.0, 1.0))
    finally:
        _DIAMETER_MM[new_kind] = saved
    items += new

    tag, spacing, direction = _grid_spec(rng)
    models = [m for m, _, _ in items]
    zs = [m.centre[0] for m in models]
    z_lo = max(-150.0, min(zs) - 40.0)
    z_hi = min(115.0, max(zs) + 40.0)
    noise = float(rng.uniform(10.0, 20.0))
    poses = [PatientPose.identity()]
    dirn = rng.normal(size=3)
    dirn[1] = -abs(dirn[1])
    poses.append(PatientPose(rotation_zyx((rng.uniform(-2.5, 2.5), rng.uniform(-1, 1), rng.uniform(-1, 1))),
                             dirn / np.linalg.norm(dirn) * rng.uniform(3.0, 9.0), float(rng.uniform(-8, 8))))
    images, labels, tissues = [], [], []
    for k, pose in enumerate(poses):
        sp = spacing * (1.0 if k == 0 else rng.uniform(0.95, 1.05, 3))
        extent = np.array([z_hi - z_lo, 215.0, 270.0]) + (0 if k == 0 else rng.uniform(-10, 10, 3))
        centre = np.array([0.5 * (z_lo + z_hi), 3.0, 0.0]) + (0 if k == 0 else rng.uniform(-5, 5, 3))
        shape = tuple(int(v) for v in np.maximum(8, np.round(extent / sp)))
        geo = _grid(shape, tuple(sp), centre, direction)
        tissue, hu = _render_anatomy(phantom, geo, pose)
        lab = np.zeros(geo.shape, dtype=np.uint16)
        for m in models:
            if m.scales[k] > 0:
                _paint(m, m.scales[k], hu, lab, tissue, geo, pose)
        img = _acquire(hu, geo, np.random.default_rng([int(seed), 90 + k]), noise)
        name = f"family{seed}_tp{k}"
        images.append(Image(img, geo, name=name, modality="CT", metadata={"family_seed": int(seed), "timepoint": k}))
        labels.append(LabelMap(lab, geo, name=f"{name}_lesions"))
        tissues.append(tissue)
    vox = [lab.geometry.voxel_volume_mm3 for lab in labels]
    rows = []
    for (m, contact, contrast) in items:
        present = [bool(np.any(lab.array == m.id)) for lab in labels]
        scales = tuple(float(s) if p else 0.0 for s, p in zip(m.scales, present))
        if not any(present):
            continue
        k0 = present.index(True)
        n_vox = int(np.count_nonzero(labels[k0].array == m.id)) * vox[k0]
        diam = float((6.0 * n_vox / np.pi) ** (1 / 3))
        rows.append(FamilyLesion(m.id, m.kind, m.organ, contact, diam, float(m.hu), float(contrast), scales))
    return FamilyCase(int(seed), images, labels, rows, tag, noise, tissues)

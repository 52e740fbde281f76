"""Analytic chest/upper-abdomen CT phantom in the patient frame (HU, noise free).

Every structure is a closed-form shape in patient coordinates (mm, LPS, written (z, y, x):
+z superior, +y posterior, +x patient-left). ``Phantom.render`` evaluates the phantom at
arbitrary patient positions, so a scan is rendered by mapping each voxel centre into the
patient frame (see :mod:`.frames`) and painting structures in order, outer to inner
(painter's algorithm). Small structures (vessels, airways) are capsules painted only inside
their index bounding box, which keeps the whole render vectorised and fast.

HU values follow typical non-contrast CT: air -1000, lung -850 (denser posteriorly), fat -100,
muscle and blood 40-45, liver 60, cortical bone 700-1000, cancellous bone about 250.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.geometry import Geometry
from .frames import PatientPose, box_in_index_space

__all__ = ["Phantom", "HU", "Capsule"]

HU = {
    "air": -1000.0, "lung": -850.0, "fat": -100.0, "skin": 30.0, "muscle": 45.0, "blood": 40.0,
    "heart": 40.0, "liver": 60.0, "spleen": 47.0, "kidney": 32.0, "bowel": 20.0, "fluid": 8.0,
    "cortical": 850.0, "cancellous": 250.0, "disc": 90.0, "cartilage": 130.0, "csf": 15.0,
    "vessel": 40.0, "table": 150.0, "table_foam": -850.0,
}

# Body outline (mm): semi-axes of the elliptical cross-section and layer depths from the skin.
BODY_AX, BODY_AY = 128.0, 100.0
SKIN, FAT, MUSCLE = 2.0, 14.0, 28.0
CAVITY_CY, CAVITY_AX, CAVITY_AY = 5.0, BODY_AX - 28.0, 75.0
TABLE_TOP_Y = 106.0  # world y of the table top (scanner-fixed, below the patient's back)
HEART_C, HEART_R = np.array([-15.0, -32.0, 20.0]), np.array([40.0, 40.0, 52.0])
SPINE_Y, CANAL_Y = 40.0, 66.0


@dataclass(frozen=True)
class Capsule:
    """A tapered tube from ``a`` to ``b`` (patient (z, y, x) mm) with end radii (mm)."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float
    kind: str  # "lung_vessel" (painted inside the lungs), "vessel" (anywhere), "airway"

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.ra, self.rb)
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r


def _ell2(u, v, cu, cv, au, av):
    """Normalised squared elliptical radius ((u-cu)/au)^2 + ((v-cv)/av)^2."""
    return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2


def diaphragm_z(py, px):
    """z (mm) of the lung base: two domes, the right one higher, recesses lower posteriorly."""
    right = -25.0 - 0.006 * ((px + 50.0) ** 2 + py ** 2)
    left = -40.0 - 0.006 * ((px - 50.0) ** 2 + py ** 2)
    return np.maximum(right, left)


def apex_scale(pz):
    """Shrink factor of the thoracic cavity towards the lung apices (1 below z = 55 mm)."""
    t = np.clip((pz - 55.0) / 50.0, 0.0, 1.0)
    return np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))


def cavity_mask(pz, py, px):
    s = np.maximum(apex_scale(pz), 1e-3)
    return _ell2(px, py, 0.0, CAVITY_CY, CAVITY_AX * s, CAVITY_AY * s) < 1.0


def mediastinum_mask(pz, py, px):
    heart = (((pz - HEART_C[0]) / (HEART_R[0] + 5)) ** 2 + ((py - HEART_C[1]) / (HEART_R[1] + 5)) ** 2
             + ((px - HEART_C[2]) / (HEART_R[2] + 5)) ** 2) < 1.0
    upper = (_ell2(px, py, 0.0, -8.0, 30.0, 40.0) < 1.0) & (pz > -10.0)
    prevertebral = _ell2(px, py, 10.0, 16.0, 32.0, 16.0) < 1.0
    paravertebral = (np.abs(px) < 25.0) & (py > 22.0)
    return heart | upper | prevertebral | paravertebral


def lung_mask(pz, py, px):
    """Both lungs: the thoracic cavity above the diaphragm minus the mediastinum."""
    return cavity_mask(pz, py, px) & (pz > diaphragm_z(py, px)) & ~mediastinum_mask(pz, py, px)


class Phantom:
    """The patient: anatomy with a seeded pulmonary vessel tree.

    Parameters
    ----------
    seed : int
        Seeds the vessel tree geometry; the same seed gives the same patient.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        rng = np.random.default_rng([self.seed, 1])
        self.capsules: list[Capsule] = []
        self._mediastinal_vessels()
        self._airways()
        for side, hilum in (("right", np.array([15.0, 2.0, -42.0])), ("left", np.array([15.0, 4.0, 44.0]))):
            self._lung_tree(rng, side, hilum)

    # ---------------------------------------------------------------- building
    def _add(self, pts, radii, kind):
        pts = [np.asarray(p, dtype=float) for p in pts]
        for i in range(len(pts) - 1):
            self.capsules.append(Capsule(pts[i], pts[i + 1], float(radii[i]), float(radii[i + 1]), kind))

    def _mediastinal_vessels(self) -> None:
        # Aorta: ascending (right-anterior), arch passing left of the trachea, descending left of the spine.
        arch = [(0, -32, -2), (45, -30, -4), (62, -15, 8), (66, 0, 18), (58, 14, 24), (40, 18, 24),
                (-40, 18, 23), (-90, 16, 14), (-170, 14, 8)]
        self._add(arch, [14, 14, 13, 13, 12, 12, 12, 11, 11], "vessel")
        # Superior vena cava into the right atrium; inferior vena cava from below.
        self._add([(120, -18, -26), (0, -22, -24)], [10, 10], "vessel")
        self._add([(-170, 12, -22), (-15, 0, -20)], [11, 12], "vessel")
        # Oesophagus (collapsed, soft tissue) behind the trachea, drifting left towards the stomach.
        self._add([(130, 12, -2), (20, 14, 4), (-60, 10, 22)], [7, 7, 7], "vessel")
        # Pulmonary trunk and arteries to both hila (the lung trees start there).
        self._add([(0, -50, 20), (25, -28, 12)], [13, 13], "vessel")
        self._add([(25, -28, 12), (18, -6, -20), (15, 2, -42)], [11, 10, 8], "vessel")
        self._add([(25, -28, 12), (24, -10, 32), (15, 4, 44)], [11, 10, 8], "vessel")

    def _airways(self) -> None:
        self._add([(130, -4, 0), (35, -4, 0)], [10, 10], "airway")
        self._add([(35, -4, 0), (15, 0, -38)], [7, 6], "airway")
        self._add([(35, -4, 0), (8, 4, 42)], [6.5, 5.5], "airway")

    def _lung_tree(self, rng, side: str, hilum: np.ndarray, n_targets: int = 400) -> None:
        """Space-filling tree: recursive median splits of random target points in one lung.

        Radii follow Murray-like scaling with the number of end points each branch feeds, so
        tubes narrow towards the periphery (about 4.5 mm at the hilum, 0.7 mm at the tips).
        """
        lo = np.array([-75.0, -70.0, 0.0 if side == "left" else -CAVITY_AX])
        hi = np.array([100.0, 80.0, CAVITY_AX if side == "left" else 0.0])
        pts = np.empty((0, 3))
        while len(pts) < n_targets:
            cand = lo + (hi - lo) * rng.random((4 * n_targets, 3))
            inside = lung_mask(cand[:, 0], cand[:, 1], cand[:, 2])
            # Stay a few mm inside the pleura so tips do not touch the chest wall.
            inner = lung_mask(cand[:, 0] + 4, cand[:, 1], cand[:, 2] * 1.05) & lung_mask(
                cand[:, 0] - 4, cand[:, 1] * 1.05, cand[:, 2])
            pts = np.vstack([pts, cand[inside & inner]])
        pts = pts[:n_targets]

        def radius(n: int) -> float:
            return 0.8 * n ** (1.0 / 3.0)

        def grow(start: np.ndarray, targets: np.ndarray, r_start: float) -> None:
            n = len(targets)
            if n == 1:
                self._add([start, targets[0]], [r_start, radius(1)], "lung_vessel")
                return
            centre = targets.mean(axis=0)
            node = start + 0.5 * (centre - start)
            r_node = radius(n)
            self._add([start, node], [r_start, r_node], "lung_vessel")
            centred = targets - centre
            axis = np.linalg.svd(centred, full_matrices=False)[2][0]
            proj = centred @ axis
            order = np.argsort(proj)
            half = n // 2
            grow(node, targets[order[:half]], r_node)
            grow(node, targets[order[half:]], r_node)

        grow(hilum, pts, radius(n_targets))

    # ---------------------------------------------------------------- rendering
    def render(self, pz, py, px, *, geometry: Geometry, pose: PatientPose, z_range: tuple[int, int],
               world_y=None) -> np.ndarray:
        """HU of the anatomy at phantom positions (arrays of one grid slab).

        Parameters
        ----------
        pz, py, px : np.ndarray
            Phantom coordinates (mm) of the voxel centres of slab ``z_range`` of ``geometry``.
        geometry, pose : Geometry, PatientPose
            The scan's grid and patient pose, used to find the index boxes of small structures.
        z_range : tuple of int
            First and one-past-last grid z index of the slab.
        world_y : np.ndarray, optional
            World y (mm) of the voxels; places the scanner-fixed table.
        """
        hu = np.full(pz.shape, HU["air"], dtype=np.float32)
        if world_y is not None:
            table = (world_y > TABLE_TOP_Y) & (world_y < TABLE_TOP_Y + 8.0)
            hu[table] = HU["table_foam"]
            hu[table & ((world_y < TABLE_TOP_Y + 1.5) | (world_y > TABLE_TOP_Y + 6.5))] = HU["table"]
        rho = np.sqrt(_ell2(px, py, 0.0, 0.0, BODY_AX, BODY_AY))
        # Depth below the skin (mm), approximated along the ellipse's mean radius.
        depth = (1.0 - rho) * 0.5 * (BODY_AX + BODY_AY)
        body = rho < 1.0
        hu[body] = HU["skin"]
        hu[body & (depth > SKIN)] = HU["fat"]
        hu[body & (depth > FAT)] = HU["muscle"]
        # Paraspinal muscles: a thick posterior muscle mass on both sides of the spine.
        hu[(_ell2(np.abs(px), py, 32.0, 72.0, 28.0, 20.0) < 1.0) & body & (depth > 6.0)] = HU["muscle"]
        self._ribs(hu, pz, py, px, depth)
        cavity = cavity_mask(pz, py, px)
        hu[cavity] = HU["muscle"]  # diaphragm, crura and anything not painted below
        self._abdomen(hu, pz, py, px, cavity)
        medi = cavity & mediastinum_mask(pz, py, px) & (pz > diaphragm_z(py, px) - 6.0)
        hu[medi] = HU["fat"]
        self._heart(hu, pz, py, px)
        lungs = cavity & (pz > diaphragm_z(py, px)) & ~medi
        hu[lungs] = HU["lung"] + 35.0 * np.clip((py + 70.0) / 150.0, 0.0, 1.0)[lungs]  # dependent density
        self._capsules(hu, pz, py, px, lungs, geometry, pose, z_range)
        self._spine(hu, pz, py, px)
        self._sternum(hu, pz, py, px)
        return hu

    def _ribs(self, hu, pz, py, px, depth) -> None:
        """Ribs: periodic bony bands sloping down anteriorly, between fat and the pleura."""
        theta = np.arctan2(px, py - CAVITY_CY)  # 0 posterior, +-pi anterior
        drop = 70.0 * (1.0 - np.cos(theta)) / 2.0
        pitch = 27.0
        phase = np.mod(pz + drop + 200.0, pitch) - pitch / 2.0
        k = np.floor((pz + drop + 200.0) / pitch)
        radial = depth - 21.0  # rib centre 21 mm below the skin
        in_range = (k >= 5) & (k <= 14) & (np.abs(theta) < np.deg2rad(160))
        e = (radial / 3.6) ** 2 + (phase / 5.5) ** 2
        rib = in_range & (e < 1.0)
        cart = rib & (np.abs(theta) > np.deg2rad(135))
        bone = rib & ~cart
        hu[bone] = HU["cortical"]
        hu[bone & ((radial / 2.2) ** 2 + (phase / 4.0) ** 2 < 1.0)] = HU["cancellous"] - 30.0
        hu[cart] = HU["cartilage"]

    def _spine(self, hu, pz, py, px) -> None:
        """Vertebrae (cortical shell, cancellous body, discs), canal and posterior elements."""
        pitch = 28.0
        phase = np.mod(pz + 300.0, pitch)
        disc = phase > pitch - 6.0
        body = _ell2(px, py, 0.0, SPINE_Y, 21.0, 17.0) < 1.0
        inner = _ell2(px, py, 0.0, SPINE_Y, 18.5, 14.5) < 1.0
        endplate = (phase < 1.5) | (phase > pitch - 7.5)
        hu[body] = HU["cortical"]
        hu[inner & ~endplate] = HU["cancellous"]
        hu[body & disc] = HU["disc"]
        arch = (_ell2(px, py, 0.0, CANAL_Y, 15.0, 14.0) < 1.0) & (phase < pitch - 9.0)
        proc = ((_ell2(px, py, 0.0, CANAL_Y + 18.0, 4.5, 10.0) < 1.0)
                | (_ell2(np.abs(px), py, 27.0, CANAL_Y - 2.0, 14.0, 5.0) < 1.0)) & (phase < pitch - 10.0)
        hu[arch | proc] = HU["cortical"] - 150.0
        hu[_ell2(px, py, 0.0, CANAL_Y, 8.5, 8.0) < 1.0] = HU["csf"]

    def _sternum(self, hu, pz, py, px) -> None:
        st = (_ell2(px, py, 0.0, -(BODY_AY - 21.0), 14.0, 6.0) < 1.0) & (pz > -65.0) & (pz < 85.0)
        hu[st] = HU["cortical"] - 100.0
        hu[st & (_ell2(px, py, 0.0, -(BODY_AY - 21.0), 11.5, 3.8) < 1.0)] = HU["cancellous"]

    def _heart(self, hu, pz, py, px) -> None:
        e = sum(((c - m) / r) ** 2 for c, m, r in zip((pz, py, px), HEART_C, HEART_R))
        hu[(e < 1.0) & (pz > diaphragm_z(py, px) - 4.0)] = HU["heart"]

    def _abdomen(self, hu, pz, py, px, cavity) -> None:
        """Liver, stomach, spleen, kidneys below the diaphragm (5 mm of muscle above them)."""
        abd = cavity & (pz < diaphragm_z(py, px) - 5.0)
        hu[abd] = HU["bowel"]
        retro = abd & (py > 20.0) & (np.abs(px) < 45.0)
        hu[retro] = HU["fat"]
        liver = abd & (px < 40.0 - 0.45 * (py + 70.0)) & (pz > -122.0 + 0.4 * (px + 100.0))
        # Gentle low-frequency texture: real liver parenchyma is not perfectly flat.
        tex = 3.0 * np.sin(px / 17.0 + 0.7) * np.sin(py / 23.0 + 1.3) * np.sin(pz / 19.0)
        hu[liver] = (HU["liver"] + tex)[liver]
        spleen = abd & ((((pz + 65.0) / 42.0) ** 2 + _ell2(px, py, 85.0, 42.0, 24.0, 36.0)) < 1.0)
        hu[spleen] = HU["spleen"]
        st = ((pz + 70.0) / 36.0) ** 2 + _ell2(px, py, 48.0, -22.0, 38.0, 36.0)
        stomach = abd & (st < 1.0)
        hu[stomach] = HU["muscle"]
        lumen = abd & (st < 0.8)
        hu[lumen] = HU["fluid"]
        hu[lumen & (py < -34.0)] = HU["air"]  # supine: gas rises anteriorly, flat air-fluid level
        for sx in (-70.0, 70.0):
            kz = ((pz + 135.0) / 45.0) ** 2
            hu[abd & (kz + _ell2(px, py, sx, 45.0, 32.0, 34.0) < 1.0)] = HU["fat"]
            hu[abd & (kz * 1.25 + _ell2(px, py, sx, 45.0, 22.0, 24.0) < 1.0)] = HU["kidney"]

    def _capsules(self, hu, pz, py, px, lungs, geometry: Geometry, pose: PatientPose, z_range) -> None:
        z0, z1 = z_range
        for cap in sorted(self.capsules, key=lambda c: {"lung_vessel": 0, "vessel": 1, "airway": 2}[c.kind]):
            lo, hi = cap.box
            start, stop = box_in_index_space(geometry, pose, lo, hi)
            s0, s1 = max(start[0], z0), min(stop[0], z1)
            if s0 >= s1 or start[1] >= stop[1] or start[2] >= stop[2]:
                continue
            sl = (slice(s0 - z0, s1 - z0), slice(start[1], stop[1]), slice(start[2], stop[2]))
            qz, qy, qx = pz[sl] - cap.a[0], py[sl] - cap.a[1], px[sl] - cap.a[2]
            ab = cap.b - cap.a
            t = np.clip((qz * ab[0] + qy * ab[1] + qx * ab[2]) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
            d2 = (qz - t * ab[0]) ** 2 + (qy - t * ab[1]) ** 2 + (qx - t * ab[2]) ** 2
            r = cap.ra + t * (cap.rb - cap.ra)
            inside = d2 < r * r
            view = hu[sl]
            if cap.kind == "lung_vessel":
                view[inside & lungs[sl]] = HU["vessel"]
            elif cap.kind == "vessel":
                view[inside] = HU["blood"]
            else:
                view[inside] = HU["muscle"]
                rl = np.maximum(r - 2.0, 0.0)
                view[d2 < rl * rl] = HU["air"]

"""Analytic chest/upper-abdomen CT phantom in the patient frame (tissue classes, noise-free HU).

Every structure is a closed-form shape in patient coordinates (mm, LPS, written (z, y, x):
+z superior, +y posterior, +x patient-left). ``Phantom.render`` evaluates the phantom's tissue
classes (:class:`Tissue`) at arbitrary patient positions, so a scan is rendered by mapping each
voxel centre into the patient frame (see :mod:`.frames`) and painting structures in order, outer
to inner (painter's algorithm); :func:`hu_from_tissue` turns classes into HU. Everything inside the
body is evaluated on the body's voxels only (1-D arrays, nested for the cavity and abdomen), and
small structures (vessels, airways) are capsules painted only inside their index bounding box,
which keeps the whole render vectorised and fast.

HU values follow typical non-contrast CT: air -1000, lung -850 (denser posteriorly), fat -100,
muscle and blood 40-45, liver 60, cortical bone 700-1000, cancellous bone about 250.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.geometry import Geometry
from .frames import PatientPose, boxes_in_index_space

__all__ = ["Phantom", "Tissue", "TISSUE_HU", "Capsule", "hu_from_tissue", "lung_mask", "liver_mask",
           "mediastinum_mask", "cavity_mask", "diaphragm_z"]


class Tissue:
    """Tissue class codes of the phantom's tissue map (uint8)."""

    AIR, TABLE, TABLE_FOAM, SKIN, FAT, MUSCLE, CORTICAL, CANCELLOUS = 0, 1, 2, 3, 4, 5, 6, 7
    LUNG, BLOOD, LIVER, SPLEEN, KIDNEY, BOWEL, FLUID, GAS = 8, 9, 10, 11, 12, 13, 14, 15
    CARTILAGE, DISC, CSF, LUNG_VESSEL, AIRWAY, AIRWAY_WALL, LIVER_VESSEL = 16, 17, 18, 19, 20, 21, 22
    NAMES = ("air", "table", "table_foam", "skin", "fat", "muscle", "cortical", "cancellous", "lung", "blood",
             "liver", "spleen", "kidney", "bowel", "fluid", "gas", "cartilage", "disc", "csf", "lung_vessel",
             "airway", "airway_wall", "liver_vessel")


# Nominal HU per tissue class (index = class code). Lung gets a posterior density gradient and the
# liver a faint texture on top of these; bone classes are never overwritten by tubes.
TISSUE_HU = np.array([
    -1000, 150, -850, 30, -100, 45, 850, 250,
    -860, 40, 60, 47, 32, 25, 8, -1000,
    130, 90, 15, 40, -1000, 45, 42,
], dtype=np.float32)
_BONE = (Tissue.CORTICAL, Tissue.CANCELLOUS, Tissue.CARTILAGE, Tissue.DISC)

# Body outline (mm): semi-axes of the elliptical cross-section and layer depths from the skin.
BODY_AX, BODY_AY = 128.0, 100.0
SKIN, FAT = 2.0, 14.0
CAVITY_CY, CAVITY_AX, CAVITY_AY = 5.0, BODY_AX - 28.0, 75.0
TABLE_TOP_Y = 106.0  # world y of the table top (scanner-fixed, below the patient's back)
HEART_C, HEART_R = np.array([-15.0, -34.0, 18.0]), np.array([40.0, 37.0, 47.0])
SPINE_Y, CANAL_Y = 40.0, 66.0


@dataclass(frozen=True)
class Capsule:
    """A tapered tube from ``a`` to ``b`` (patient (z, y, x) mm) with end radii (mm)."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float
    # "lung_vessel"/"liver_vessel"/"bronchus": painted only inside lung/liver/lung; "vessel", "soft"
    # and "airway" (wall plus air lumen): painted anywhere except bone.
    kind: str

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
    """Shrink factor of the thoracic cavity towards the lung apices (1 below z = 30 mm, 0 at 105 mm)."""
    t = np.clip((pz - 30.0) / 75.0, 0.0, 1.0)
    return np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))


def cavity_mask(pz, py, px):
    """Inside the ribcage/abdominal wall (the pleural and peritoneal cavities together)."""
    s = np.maximum(apex_scale(pz), 1e-3)
    return _ell2(px, py, 0.0, CAVITY_CY, CAVITY_AX * s, CAVITY_AY * s) < 1.0


def mediastinum_mask(pz, py, px):
    """Heart with its fat, upper mediastinum, prevertebral strip and the spine's surroundings."""
    heart = (((pz - HEART_C[0]) / (HEART_R[0] + 5)) ** 2 + ((py - HEART_C[1]) / (HEART_R[1] + 5)) ** 2
             + ((px - HEART_C[2]) / (HEART_R[2] + 5)) ** 2) < 1.0
    upper = (_ell2(px, py, 0.0, -8.0, 30.0, 40.0) < 1.0) & (pz > -10.0)
    prevertebral = _ell2(px, py, 10.0, 16.0, 32.0, 16.0) < 1.0
    paravertebral = _ell2(px, py, 0.0, SPINE_Y + 14.0, 26.0, 38.0) < 1.0  # hugs the vertebra
    paravertebral |= _ell2(np.abs(px), py, 27.0, CANAL_Y - 2.0, 18.0, 9.0) < 1.0  # transverse processes
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
        self._hepatic_veins(rng)

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
        self._add([(130, 12, -2), (20, 14, 4), (-60, 10, 22)], [7, 7, 7], "soft")
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
        tubes narrow towards the periphery (about 6 mm at the hilum, 0.8 mm at the tips).
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
            # No end points right next to the hilum: the central lung holds the big trunks.
            far = np.linalg.norm(cand - hilum, axis=1) > 40.0
            pts = np.vstack([pts, cand[inside & inner & far]])
        pts = pts[:n_targets]

        def radius(n: int) -> float:
            return 0.8 * n ** (1.0 / 3.0)

        self._tree(hilum, pts, radius, "lung_vessel", rng, bronchi=True)

    def _tree(self, root, targets, radius, kind, rng, bronchi=False) -> None:
        """Grow a tree from ``root`` to every target by recursive splits along the principal axis.

        With ``bronchi``, branches thicker than 2 mm get a bronchus running alongside (the
        broncho-arterial bundle), a thin-walled air tube about 0.8 times the vessel's radius.
        """
        stack = [(np.asarray(root, float), np.asarray(targets, float), radius(len(targets)))]
        while stack:
            start, pts, r_start = stack.pop()
            n = len(pts)
            end = pts[0] if n == 1 else start + 0.5 * (pts.mean(axis=0) - start)
            r_end = radius(1) if n == 1 else radius(n)
            self._add([start, end], [r_start, r_end], kind)
            if bronchi and r_end >= 2.0:
                axis = end - start
                side = np.cross(axis, rng.normal(size=3))
                side /= max(np.linalg.norm(side), 1e-9)
                off = side * (1.8 * r_end + 1.0)
                self.capsules.append(Capsule(start + off, end + off, 0.8 * r_start, 0.8 * r_end, "bronchus"))
            if n == 1:
                continue
            centred = pts - pts.mean(axis=0)
            order = np.argsort(centred @ np.linalg.svd(centred, full_matrices=False)[2][0])
            stack.append((end, pts[order[: n // 2]], r_end))
            stack.append((end, pts[order[n // 2:]], r_end))

    def _hepatic_veins(self, rng, n_targets: int = 60) -> None:
        """Hepatic veins: a tree draining into the IVC, slightly darker than liver on plain CT."""
        lo, hi = np.array([-120.0, -70.0, -100.0]), np.array([-30.0, 60.0, 30.0])
        pts = np.empty((0, 3))
        while len(pts) < n_targets:
            cand = lo + (hi - lo) * rng.random((8 * n_targets, 3))
            ok = liver_mask(cand[:, 0], cand[:, 1], cand[:, 2]) & liver_mask(cand[:, 0] - 8, cand[:, 1] * 1.08,
                                                                               cand[:, 2] * 1.08)
            pts = np.vstack([pts, cand[ok]])
        self._tree(np.array([-38.0, 4.0, -20.0]), pts[:n_targets], lambda n: 0.7 * n ** (1.0 / 3.0),
                   "liver_vessel", rng)

    # ---------------------------------------------------------------- rendering
    def capsule_boxes(self, geometry: Geometry, pose: PatientPose) -> tuple[np.ndarray, np.ndarray]:
        """Index boxes (start, stop), each (n, 3), of every capsule on ``geometry`` in ``pose``."""
        lo = np.array([c.box[0] for c in self.capsules])
        hi = np.array([c.box[1] for c in self.capsules])
        return boxes_in_index_space(geometry, pose, lo, hi)

    def render(self, pz, py, px, *, pose: PatientPose | None = None, world_y=None, z_range=None,
               boxes=None) -> np.ndarray:
        """Tissue classes (uint8, see :class:`Tissue`) at phantom positions of one grid slab.

        Parameters
        ----------
        pz, py, px : np.ndarray
            Rigid patient coordinates (mm) of the voxel centres of grid slab ``z_range``, shape
            (nz, ny, nx). With a breathing ``pose``, ``pz`` is updated in place to the phantom
            coordinate (breathing undone) inside the body.
        pose : PatientPose, optional
            Supplies the breathing displacement (the rigid part is already in the coordinates).
        world_y : np.ndarray, optional
            World y (mm) of the voxels; places the scanner-fixed table.
        z_range : tuple of int, optional
            First and one-past-last grid z index of the slab (needed with ``boxes``).
        boxes : tuple of np.ndarray, optional
            Capsule index boxes from :meth:`capsule_boxes`; without them no tubes are drawn.
        """
        tissue = np.zeros(pz.shape, dtype=np.uint8)
        if world_y is not None:
            table = (world_y > TABLE_TOP_Y) & (world_y < TABLE_TOP_Y + 8.0)
            tissue[table] = Tissue.TABLE_FOAM
            tissue[table & ((world_y < TABLE_TOP_Y + 1.5) | (world_y > TABLE_TOP_Y + 6.5))] = Tissue.TABLE
        # The back of a supine patient is flatter than the front.
        ay = np.where(py > 0, BODY_AY * (1.0 + 0.12 * (px / BODY_AX) ** 2), BODY_AY).astype(np.float32)
        # Above the lung apices the trunk narrows towards the neck (the arms are raised, out of view).
        neck = np.clip((pz - 100.0) / 50.0, 0.0, 1.0)
        neck = neck * neck * (3.0 - 2.0 * neck)
        rho2 = (px / (BODY_AX * (1.0 - 0.45 * neck))) ** 2 + (py / (ay * (1.0 - 0.2 * neck))) ** 2
        body = rho2 < 1.0
        sel = np.flatnonzero(body)
        # Everything inside the body is evaluated on the body's voxels only (1-D arrays).
        cz, cy, cx = pz.reshape(-1)[sel], py.reshape(-1)[sel], px.reshape(-1)[sel]
        if pose is not None and pose.breath_mm != 0.0:
            # Breathing is zero outside the body, so it is only evaluated inside.
            cz = pose.unbreathe(cz, cy, cx)[0]
            pz.reshape(-1)[sel] = cz
        t = np.full(sel.shape, Tissue.SKIN, dtype=np.uint8)
        self._body(t, cz, cy, cx, np.sqrt(rho2.reshape(-1)[sel]))
        tissue.reshape(-1)[sel] = t
        if boxes is not None:
            self._capsules(tissue, pz, py, px, boxes, z_range)
        return tissue

    def _body(self, t, pz, py, px, rho) -> None:
        depth = (1.0 - rho) * (0.5 * (BODY_AX + BODY_AY))  # mm below the skin, along the mean radius
        t[depth > SKIN] = Tissue.FAT
        # Fat thickness varies around the body (thicker laterally and at the back).
        fat = FAT + 4.0 * (px / BODY_AX) ** 2 + 3.0 * np.clip(py / BODY_AY, 0.0, 1.0)
        t[depth > fat] = Tissue.MUSCLE
        para = ((np.abs(px) - 32.0) / 28.0) ** 2 + ((py - 74.0) / 20.0) ** 2 < 1.0
        t[para & (depth > 6.0)] = Tissue.MUSCLE
        self._scapulae(t, pz, py, px, depth)
        self._ribs(t, pz, py, px, depth)
        s = np.maximum(apex_scale(pz), 1e-3)
        cav = np.flatnonzero(((px / (CAVITY_AX * s)) ** 2 + ((py - CAVITY_CY) / (CAVITY_AY * s)) ** 2) < 1.0)
        if cav.size:
            cz, cy, cx = pz[cav], py[cav], px[cav]
            tc = np.full(cav.shape, Tissue.MUSCLE, dtype=np.uint8)  # diaphragm, crura, chest wall
            self._cavity(tc, cz, cy, cx)
            t[cav] = tc
        self._spine(t, pz, py, px)
        self._sternum(t, pz, py, px)

    def _cavity(self, t, pz, py, px) -> None:
        dz = diaphragm_z(py, px)
        below = np.flatnonzero(pz < dz - 5.0)
        if below.size:
            ta = t[below]
            self._abdomen(ta, pz[below], py[below], px[below])
            t[below] = ta
        medi = mediastinum_mask(pz, py, px) & (pz > dz - 6.0)
        t[medi] = Tissue.FAT
        e = (((pz - HEART_C[0]) / HEART_R[0]) ** 2 + ((py - HEART_C[1]) / HEART_R[1]) ** 2
             + ((px - HEART_C[2]) / HEART_R[2]) ** 2)
        t[(e < 1.0) & (pz > dz - 4.0)] = Tissue.BLOOD
        t[(pz > dz) & ~medi] = Tissue.LUNG

    def _scapulae(self, t, pz, py, px, depth) -> None:
        """Shoulder blades: thin bony plates over the upper posterior ribs."""
        ang = np.abs(np.arctan2(px, py - CAVITY_CY))
        plate = (depth > 7.0) & (depth < 11.0) & (ang > 0.45) & (ang < 1.15) & (pz > 35.0) & (pz < 120.0)
        t[plate] = Tissue.CORTICAL

    def _ribs(self, t, pz, py, px, depth) -> None:
        """Ribs: periodic bony bands sloping down anteriorly, between fat and the pleura."""
        theta = np.arctan2(px, py - CAVITY_CY)  # 0 posterior, +-pi anterior
        drop = 70.0 * (1.0 - np.cos(theta)) / 2.0
        pitch = 27.0
        u = pz + drop + 200.0
        phase = np.mod(u, pitch) - pitch / 2.0
        k = np.floor(u / pitch)
        radial = depth - 21.0  # rib centre 21 mm below the skin
        in_range = (k >= 5) & (k <= 14) & (np.abs(theta) < np.deg2rad(160)) & (pz < 108.0)
        rib = in_range & ((radial / 3.6) ** 2 + (phase / 5.5) ** 2 < 1.0)
        cart = rib & (np.abs(theta) > np.deg2rad(135))
        bone = rib & ~cart
        t[bone] = Tissue.CORTICAL
        t[bone & ((radial / 2.2) ** 2 + (phase / 4.0) ** 2 < 1.0)] = Tissue.CANCELLOUS
        t[cart] = Tissue.CARTILAGE

    def _spine(self, t, pz, py, px) -> None:
        """Vertebrae (cortical shell, cancellous body, discs), canal and posterior elements."""
        near = np.flatnonzero((np.abs(px) < 45.0) & (py > SPINE_Y - 20.0))
        if not near.size:
            return
        pz, py, px = pz[near], py[near], px[near]
        v = t[near]
        pitch = 28.0
        phase = np.mod(pz + 300.0, pitch)
        disc = phase > pitch - 6.0
        body = _ell2(px, py, 0.0, SPINE_Y, 21.0, 17.0) < 1.0
        inner = _ell2(px, py, 0.0, SPINE_Y, 18.5, 14.5) < 1.0
        endplate = (phase < 1.5) | (phase > pitch - 7.5)
        v[body] = Tissue.CORTICAL
        v[inner & ~endplate] = Tissue.CANCELLOUS
        v[body & disc] = Tissue.DISC
        arch = (_ell2(px, py, 0.0, CANAL_Y, 15.0, 14.0) < 1.0) & (phase < pitch - 9.0)
        proc = ((_ell2(px, py, 0.0, CANAL_Y + 18.0, 4.5, 10.0) < 1.0)
                | (_ell2(np.abs(px), py, 27.0, CANAL_Y - 2.0, 14.0, 5.0) < 1.0)) & (phase < pitch - 10.0)
        v[arch | proc] = Tissue.CORTICAL
        v[(arch | proc) & ((_ell2(px, py, 0.0, CANAL_Y, 12.5, 11.5) > 1.0) & (phase > 1.5)
                           & (phase < pitch - 10.5))] = Tissue.CANCELLOUS
        v[_ell2(px, py, 0.0, CANAL_Y, 8.5, 8.0) < 1.0] = Tissue.CSF
        t[near] = v

    def _sternum(self, t, pz, py, px) -> None:
        st = (_ell2(px, py, 0.0, -(BODY_AY - 21.0), 14.0, 6.0) < 1.0) & (pz > -65.0) & (pz < 85.0)
        t[st] = Tissue.CORTICAL
        t[st & (_ell2(px, py, 0.0, -(BODY_AY - 21.0), 11.5, 3.8) < 1.0)] = Tissue.CANCELLOUS

    def _abdomen(self, t, pz, py, px) -> None:
        """Liver, stomach, spleen, kidneys and bowel below the diaphragm (inside the cavity)."""
        # Bowel loops separated by mesenteric fat: a smooth pseudo-random pattern.
        # Oblique, incommensurate waves so the loops do not line up with the axes.
        w1 = np.sin(0.11 * px + 0.05 * py + 0.4 * np.sin(0.07 * pz + 0.05 * px))
        w2 = np.sin(0.09 * py - 0.06 * pz + 0.03 * px + 1.7 + 0.5 * np.sin(0.08 * px))
        w3 = np.sin(0.10 * pz + 0.04 * px - 0.05 * py + 0.9)
        loops = w1 * w2 + 0.6 * w3 * w1
        t[:] = Tissue.BOWEL
        t[loops > 0.35] = Tissue.FAT
        t[(py > 20.0) & (np.abs(px) < 45.0)] = Tissue.FAT  # retroperitoneal fat
        for sx in (-70.0, 70.0):  # kidneys in their perirenal fat; the liver rests on the right one
            kz = ((pz + 135.0) / 45.0) ** 2
            t[(kz + _ell2(px, py, sx, 45.0, 32.0, 34.0)) < 1.0] = Tissue.FAT
            t[(kz * 1.25 + _ell2(px, py, sx, 45.0, 22.0, 24.0)) < 1.0] = Tissue.KIDNEY
        t[liver_mask_below_diaphragm(pz, py, px)] = Tissue.LIVER
        t[(((pz + 65.0) / 42.0) ** 2 + _ell2(px, py, 85.0, 42.0, 24.0, 36.0)) < 1.0] = Tissue.SPLEEN
        st = _stomach_e(pz, py, px)
        t[st < 1.0] = Tissue.MUSCLE
        lumen = st < 0.8
        t[lumen] = Tissue.FLUID
        t[lumen & (py < -34.0)] = Tissue.GAS  # supine: gas rises anteriorly, flat air-fluid level

    def _capsules(self, tissue, pz, py, px, boxes, z_range) -> None:
        z0, z1 = z_range
        starts, stops = boxes
        hit = np.flatnonzero((starts[:, 0] < z1) & (stops[:, 0] > z0) & np.all(starts[:, 1:] < stops[:, 1:], axis=1))
        for i in sorted(hit, key=lambda j: _ORDER[self.capsules[j].kind]):
            cap = self.capsules[i]
            start, stop = starts[i], stops[i]
            sl = (slice(max(start[0], z0) - z0, min(stop[0], z1) - z0), slice(start[1], stop[1]),
                  slice(start[2], stop[2]))
            qz, qy, qx = pz[sl] - cap.a[0], py[sl] - cap.a[1], px[sl] - cap.a[2]
            ab = cap.b - cap.a
            s = np.clip((qz * ab[0] + qy * ab[1] + qx * ab[2]) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
            d2 = (qz - s * ab[0]) ** 2 + (qy - s * ab[1]) ** 2 + (qx - s * ab[2]) ** 2
            r = cap.ra + s * (cap.rb - cap.ra)
            inside = d2 < r * r
            view = tissue[sl]
            if cap.kind == "lung_vessel":
                view[inside & (view == Tissue.LUNG)] = Tissue.LUNG_VESSEL
            elif cap.kind == "liver_vessel":
                view[inside & (view == Tissue.LIVER)] = Tissue.LIVER_VESSEL
            elif cap.kind == "bronchus":
                wall = inside & ((view == Tissue.LUNG) | (view == Tissue.AIRWAY_WALL))
                view[wall] = Tissue.AIRWAY_WALL
                rl = np.maximum(r - 1.2, 0.0)
                view[wall & (d2 < rl * rl)] = Tissue.AIRWAY
            else:
                free = inside & ~np.isin(view, _BONE)
                if cap.kind == "airway":
                    view[free] = Tissue.AIRWAY_WALL
                    rl = np.maximum(r - 2.0, 0.0)
                    view[free & (d2 < rl * rl)] = Tissue.AIRWAY
                else:
                    view[free] = Tissue.BLOOD if cap.kind == "vessel" else Tissue.MUSCLE


_ORDER = {"liver_vessel": 0, "lung_vessel": 1, "bronchus": 2, "soft": 3, "vessel": 4, "airway": 5}


def liver_mask_below_diaphragm(pz, py, px):
    """Liver inside the abdominal cavity: right upper quadrant, left lobe reaching anteriorly."""
    liver = (px < 40.0 - 0.45 * (py + 70.0)) & (pz > -122.0 + 0.4 * (px + 100.0))
    return liver & ~(_stomach_e(pz, py, px) < 1.0)


def _stomach_e(pz, py, px):
    return ((pz + 70.0) / 36.0) ** 2 + _ell2(px, py, 48.0, -22.0, 38.0, 36.0)


def liver_mask(pz, py, px):
    return cavity_mask(pz, py, px) & (pz < diaphragm_z(py, px) - 5.0) & liver_mask_below_diaphragm(pz, py, px)


def hu_from_tissue(tissue: np.ndarray, pz, py, px) -> np.ndarray:
    """Noise-free HU from tissue classes, with the lung's posterior density gradient and liver texture."""
    hu = TISSUE_HU[tissue]
    lung = np.flatnonzero(tissue.reshape(-1) == Tissue.LUNG)
    hu.reshape(-1)[lung] += 40.0 * np.clip((py.reshape(-1)[lung] + 70.0) / 150.0, 0.0, 1.0)
    liv = np.flatnonzero(tissue.reshape(-1) == Tissue.LIVER)
    lz, ly, lx = pz.reshape(-1)[liv], py.reshape(-1)[liv], px.reshape(-1)[liv]
    hu.reshape(-1)[liv] += 3.0 * np.sin(lx / 17.0 + 0.7) * np.sin(ly / 23.0 + 1.3) * np.sin(lz / 19.0)
    return hu

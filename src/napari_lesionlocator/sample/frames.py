"""Where the patient lies in each scan: rigid pose, breathing and the voxel grid.

The phantom is defined in a fixed *patient frame* (mm, LPS, written (z, y, x): +z superior,
+y posterior, +x patient-left; origin near the centre of the chest). A timepoint places the
patient in scanner *world* space by

    world = R @ breathe(p) + t

where ``breathe`` is a smooth breathing-like deformation (mainly the diaphragm, liver and lower
lungs moving along z) and ``R``/``t`` a small rigid motion. Rendering needs the inverse: for a
world position, which phantom point is seen there. ``unbreathe(p) = p - d(p)`` is that inverse by
construction (``d`` is evaluated at the displaced position), and ``breathe`` is found by a
fixed-point iteration (``d`` has a gradient well below 1, so it converges fast).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.geometry import Geometry

__all__ = ["PatientPose", "rotation_zyx", "box_in_index_space", "boxes_in_index_space"]

# Breathing field shape (mm): the diaphragm region sits around z = -40 in the patient frame.
_BREATH_Z_MID = 5.0      # above this the displacement fades out (upper lungs barely move)
_BREATH_Z_WIDTH = 18.0   # smoothness of that fade along z
_BODY_AX, _BODY_AY = 128.0, 100.0  # body ellipse semi-axes used to keep the skin still


def rotation_zyx(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix acting on (z, y, x) vectors from rotations about the z, y and x axes.

    Parameters
    ----------
    angles_deg : tuple of float
        Rotation about the z axis (axial-plane roll of the patient), then y, then x, in degrees.
    """
    az, ay, ax = np.deg2rad(np.asarray(angles_deg, dtype=float))
    # In (z, y, x) order: rotation about z mixes y and x, etc.
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class PatientPose:
    """Rigid pose plus breathing of the patient in one scan.

    Parameters
    ----------
    rotation : np.ndarray
        3x3 rotation acting on (z, y, x) patient vectors.
    translation_mm : np.ndarray
        World position (z, y, x) mm of the patient-frame origin.
    breath_mm : float
        Superior-inferior displacement of the diaphragm/liver (positive = towards the head).
    """

    rotation: np.ndarray
    translation_mm: np.ndarray
    breath_mm: float = 0.0

    @classmethod
    def identity(cls) -> PatientPose:
        return cls(np.eye(3), np.zeros(3), 0.0)

    # -------------------------------------------------------------- breathing
    def displacement_z(self, pz, py, px):
        """Breathing displacement along z (mm) at patient positions (any broadcastable arrays)."""
        if self.breath_mm == 0.0:
            return np.zeros(np.broadcast_shapes(np.shape(pz), np.shape(py), np.shape(px)), dtype=np.float32)
        fade_z = 1.0 / (1.0 + np.exp((pz - _BREATH_Z_MID) / _BREATH_Z_WIDTH))
        # Zero at the skin, full inside the body: the chest wall does not slide with the diaphragm.
        rho = np.sqrt((px / _BODY_AX) ** 2 + (py / _BODY_AY) ** 2)
        fade_r = np.clip((1.0 - rho) / 0.35, 0.0, 1.0)
        fade_r = fade_r * fade_r * (3.0 - 2.0 * fade_r)  # smoothstep keeps the gradient small
        return (self.breath_mm * fade_z * fade_r).astype(np.float32)

    def unbreathe(self, pz, py, px):
        """Phantom point seen at deformed patient position ``p`` (inverse breathing)."""
        return pz - self.displacement_z(pz, py, px), py, px

    def breathe(self, p_zyx: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Deformed position of phantom points ``p_zyx`` (..., 3): solves ``q - d(q) = p``."""
        p = np.asarray(p_zyx, dtype=float)
        q = p.copy()
        for _ in range(iterations):
            q[..., 0] = p[..., 0] + self.displacement_z(q[..., 0], q[..., 1], q[..., 2])
        return q

    # -------------------------------------------------------------- rigid part
    def patient_to_world(self, p_zyx: np.ndarray, *, breathing: bool = True) -> np.ndarray:
        """World (z, y, x) mm of phantom points (..., 3)."""
        p = self.breathe(p_zyx) if breathing else np.asarray(p_zyx, dtype=float)
        return p @ self.rotation.T + self.translation_mm

    def world_to_patient_rigid(self, w_zyx: np.ndarray) -> np.ndarray:
        """Undo only the rigid part: ``R^T (w - t)``."""
        return (np.asarray(w_zyx, dtype=float) - self.translation_mm) @ self.rotation


def box_in_index_space(geometry: Geometry, pose: PatientPose, lo_zyx, hi_zyx, margin_mm: float = 0.0):
    """Index box (start, stop) of the grid that holds a patient-frame box after posing it.

    The 8 corners of the (margin-expanded) box are mapped rigidly into the grid; breathing
    displacements are bounded by ``|breath_mm|`` and added to the margin. The result is clipped to
    the grid and may be empty (start >= stop on some axis).
    """
    m = margin_mm + abs(pose.breath_mm) + 1.0
    lo = np.asarray(lo_zyx, dtype=float) - m
    hi = np.asarray(hi_zyx, dtype=float) + m
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    idx = geometry.world_to_index(corners @ pose.rotation.T + pose.translation_mm)
    start = np.maximum(np.floor(idx.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, np.asarray(geometry.shape))
    return start, stop


def boxes_in_index_space(geometry: Geometry, pose: PatientPose, lo_zyx: np.ndarray, hi_zyx: np.ndarray,
                         margin_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`box_in_index_space` for ``n`` boxes given as (n, 3) arrays of corners."""
    m = margin_mm + abs(pose.breath_mm) + 1.0
    lo = np.asarray(lo_zyx, dtype=float) - m
    hi = np.asarray(hi_zyx, dtype=float) + m
    sel = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])  # corner pattern
    corners = np.where(sel[None, :, :] == 0, lo[:, None, :], hi[:, None, :])  # (n, 8, 3)
    idx = geometry.world_to_index(corners @ pose.rotation.T + pose.translation_mm)
    start = np.maximum(np.floor(idx.min(axis=1)).astype(int), 0)
    stop = np.minimum(np.ceil(idx.max(axis=1)).astype(int) + 1, np.asarray(geometry.shape))
    return start, stop

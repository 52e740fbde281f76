"""Display helpers: CT window presets (with a default chosen from what was clicked), outline/fill.

Thread: GUI thread (they read and set layer properties).
"""

from __future__ import annotations

import numpy as np

from ..core.windows import WINDOW_PRESETS, window_limits
from ._layers import geometry_from_layer

__all__ = ["WINDOW_NAMES", "apply_window", "window_for_click", "set_outline"]

WINDOW_NAMES = tuple(WINDOW_PRESETS)  # lung, mediastinum, soft tissue, liver, bone


def apply_window(image_layer, name: str) -> None:
    """Set a CT window preset on an image layer (contrast limits in HU)."""
    lo, hi = window_limits(name)
    image_layer.contrast_limits_range = (min(lo, image_layer.contrast_limits_range[0]),
                                         max(hi, image_layer.contrast_limits_range[1]))
    image_layer.contrast_limits = (lo, hi)


def window_for_click(image_layer, world_zyx, radius_mm: float = 15.0) -> str:
    """The window that suits what is around a click: lung when the neighbourhood is mostly air
    (a lung nodule), bone when it is mostly bone, soft tissue otherwise."""
    g = geometry_from_layer(image_layer)
    centre = np.rint(g.world_to_index(np.asarray(world_zyx, dtype=float))).astype(int)
    half = np.maximum(1, np.ceil(radius_mm / np.asarray(g.spacing))).astype(int)
    lo = np.clip(centre - half, 0, np.asarray(g.shape) - 1)
    hi = np.clip(centre + half + 1, 1, np.asarray(g.shape))
    patch = np.asarray(image_layer.data[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))])
    if patch.size == 0:
        return "soft tissue"
    air = float(np.mean(patch < -500))
    bone = float(np.mean(patch > 300))
    if air > 0.3:
        return "lung"
    if bone > 0.3:
        return "bone"
    return "soft tissue"


def set_outline(labels_layers, outline: bool) -> None:
    """Draw lesions as outlines (2 px contour) or filled."""
    for layer in labels_layers:
        layer.contour = 2 if outline else 0

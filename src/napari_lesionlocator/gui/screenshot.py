"""Render a study (all timepoints side by side with their lesions) to a PNG with napari.

Used by ``make demo`` (under Xvfb) and ``resources/make_screenshots.py``. It opens its own
viewer, so it needs a display (a real one or Xvfb; napari cannot create its canvas offscreen).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..core.image import Image, LabelMap

__all__ = ["render_study_screenshot"]


def _settle(rounds: int = 5) -> None:
    """Let Qt lay out and paint (window resizes and grid changes are applied asynchronously)."""
    import time

    from qtpy.QtWidgets import QApplication

    for _ in range(rounds):
        QApplication.processEvents()
        time.sleep(0.02)


def render_study_screenshot(
    images: Sequence[Image],
    label_maps: Sequence[LabelMap | None],
    path: str | os.PathLike,
    lesion_id: int | None = None,
    *,
    size: tuple[int, int] = (1400, 900),
    canvas_only: bool = True,
) -> Path:
    """Show every timepoint in a grid with its lesions, optionally centred on one lesion, and save a PNG.

    Parameters
    ----------
    images : sequence of Image
        The timepoints in order (CT, HU).
    label_maps : sequence of LabelMap or None
        One instance map per image, on that image's grid (None: no lesions there).
    path : path-like
        PNG to write (parent folders are created).
    lesion_id : int, optional
        Centre every timepoint on this lesion (its slice and position); default: whole volumes.
    size : (width, height)
        Window size in pixels.
    canvas_only : bool
        Only the canvas (True) or the whole napari window (False).

    Returns
    -------
    Path
        The written file.
    """
    import napari

    from ._layers import image_layer_data, labels_layer_data
    from .review_widget import ReviewWidget

    if len(images) != len(label_maps):
        raise ValueError(f"{len(images)} images but {len(label_maps)} label maps; give one per image (or None)")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    try:
        viewer.window._qt_window.resize(*size)
        for image, labels in zip(images, label_maps, strict=True):
            data, kwargs, _ = image_layer_data(image)
            layer = viewer.add_image(data, **kwargs)
            if labels is not None:
                image.geometry.require_same_grid(labels.geometry, what=f"labels of {image.name} and the image")
                ldata, lkwargs, _ = labels_layer_data(labels, name=f"{layer.name} lesions", image_name=layer.name)
                viewer.add_labels(ldata, **lkwargs)
        _settle()  # the canvas must have its final size before the view is fitted
        review = ReviewWidget(viewer)
        review.start_review()
        _settle()
        if lesion_id is not None:
            review.select_lesion(int(lesion_id))
        else:
            viewer.reset_view()
        _settle()
        viewer.screenshot(str(out), canvas_only=canvas_only, flash=False)
        review.stop_review()
        review.deleteLater()
    finally:
        viewer.close()
    return out

"""Render the README screenshots of every widget state into docs/screenshots/*.png.

Run under a display (napari cannot create its canvas offscreen)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python resources/make_screenshots.py

Every state is shown as a reader sees it: a 1600x1000 window with all three docks open. States:
the sample study loaded; after segmenting three point prompts; a box prompt drawn with the mouse
after a slider step (rectangle + slice range, with its 3D outline in the 3D view); the timeline
after propagating to both follow-ups (a follow-up in view); the review grid centred on one lesion
with the volume table; and the headless ``render_study_screenshot`` output used by ``make demo``.

``--only docks`` renders just the two all-docks states: every dock of napari.yaml open together at
1600x1000 after segmenting and propagating (09_all_docks.png), and the same with the LesionLocator
engine chosen (08_lesionlocator_engine.png; needs a checkpoint in $LESIONLOCATOR_CHECKPOINT, e.g.
``lesionlocator generate-checkpoint /tmp/ck --tiny``, only its options are shown).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-lesionlocator"
REPO = Path(__file__).resolve().parents[1]


def settle(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait_for(runner, timeout: float = 600.0, busy=None) -> None:
    end = time.time() + timeout
    busy = busy or (lambda: runner.running)
    while busy() and time.time() < end:
        settle(0.05)
    if busy():
        raise TimeoutError("the background job did not finish")
    if runner.last_state != "succeeded":
        raise RuntimeError(f"job ended as {runner.last_state}: {runner.last_error}")


def mouse_drag(viewer, world_a, world_b, steps: int = 6) -> None:
    """Press, move with the button held and release on the canvas, as a reader draws a box."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    from napari_lesionlocator.gui._view import camera

    native = viewer.window._qt_viewer.canvas.native
    cam = camera(viewer)

    def pixel(world):
        cy, cx = np.asarray(cam.center, dtype=float)[-2:]
        return ((world[2] - cx) * cam.zoom + native.width() / 2, (world[1] - cy) * cam.zoom + native.height() / 2)

    def send(kind, x, y):
        ev_type = {"press": QEvent.Type.MouseButtonPress, "move": QEvent.Type.MouseMove,
                   "release": QEvent.Type.MouseButtonRelease}[kind]
        button = Qt.MouseButton.LeftButton if kind != "move" else Qt.MouseButton.NoButton
        buttons = Qt.MouseButton.NoButton if kind == "release" else Qt.MouseButton.LeftButton
        p = QPointF(float(x), float(y))
        QApplication.sendEvent(native, QMouseEvent(ev_type, p, native.mapToGlobal(p), button, buttons,
                                                   Qt.KeyboardModifier.NoModifier))
        QApplication.processEvents()

    (xa, ya), (xb, yb) = pixel(world_a), pixel(world_b)
    send("press", xa, ya)
    for t in np.linspace(0, 1, steps + 1)[1:]:
        send("move", xa + t * (xb - xa), ya + t * (yb - ya))
    send("release", xb, yb)
    settle()


def main(out_dir: Path) -> list[Path]:
    import napari

    import napari_lesionlocator.gui  # noqa: F401 - applies the PySide6 6.12 guard before Qt work
    from napari_lesionlocator.gui._sample_data import _cached_study
    from napari_lesionlocator.gui.screenshot import render_study_screenshot

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    study = _cached_study()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    settle()

    def shot(name: str) -> None:
        settle(0.5)
        path = out_dir / name
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        written.append(path)
        print("wrote", path)

    viewer.open_sample(PLUGIN, "synthetic_study_truth")
    docks, widgets = {}, {}
    for name in ("Lesion prompts", "Timeline", "Lesion review"):
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    prompts, timeline, review = widgets["Lesion prompts"], widgets["Timeline"], widgets["Lesion review"]
    baseline = viewer.layers[study.images[0].name]
    prompts.session.set_active(baseline)
    rec1 = next(r for r in study.lesions if r.id == 1)
    from napari_lesionlocator.gui._view import camera, centre_view

    centre_view(viewer, rec1.centre_world[0])
    shot("01_sample_loaded.png")

    # Point prompts on three lesions, segmented with the classical engine.
    pl = prompts.prompt_layers()
    for gt in (1, 5, 6):
        pl.add_point_world(next(r for r in study.lesions if r.id == gt).centre_world[0])
    prompts.activate_mode("point")
    prompts.segment()
    wait_for(prompts.runner)
    prompts.lesion_spin.setValue(0)
    prompts.next_lesion()
    shot("02_after_segmentation.png")

    # A box prompt drawn with the mouse on the middle slice of ground-truth lesion 3, after moving
    # the slider there; its slice range is then set in the widget.
    truth = study.labels[0].array == 3
    idx = np.argwhere(truth)
    lo, hi, zc = idx.min(axis=0), idx.max(axis=0), int(round(idx[:, 0].mean()))
    geom = study.images[0].geometry
    centre = geom.index_to_world([zc, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2])
    a = geom.index_to_world([zc, lo[1] - 3, lo[2] - 3])
    b = geom.index_to_world([zc, hi[1] + 3, hi[2] + 3])
    prompts.activate_mode("box")
    centre_view(viewer, centre)
    rng = viewer.dims.range[0]
    viewer.dims.set_current_step(0, int(round((centre[0] - rng.start) / rng.step)))
    settle()
    z = viewer.dims.point[0]
    mouse_drag(viewer, [z, a[1], a[2]], [z, b[1], b[2]])
    row = len(pl.boxes.data) - 1
    pl.set_z_range(row, int(lo[0]) - 1, int(hi[0]) + 1)
    pl.boxes.selected_data = {row}
    prompts._sync_z_range()
    shot("03_box_prompt.png")
    prompts.segment()
    wait_for(prompts.runner)
    viewer.dims.ndisplay = 3
    prompts.session._applying = True  # a 3D view of the box outline only (not a change of scan)
    for layer in viewer.layers:
        layer.visible = layer in (pl.wire, prompts.session.labels_layer_for(baseline))
    prompts.session._applying = False
    viewer.reset_view()
    settle()
    camera(viewer).angles = (0, -35, 70)
    camera(viewer).center = tuple(centre)
    camera(viewer).zoom = camera(viewer).zoom * 2.5
    shot("04_box_prompt_3d.png")
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    prompts.activate_mode("view")

    # Propagate every baseline lesion to both follow-ups.
    prompts.session.set_active(baseline)
    timeline.refresh()
    assert timeline.propagate(source=baseline.name)
    wait_for(timeline.runner, busy=lambda: timeline.busy)
    follow = viewer.layers[study.images[1].name]
    prompts.session.set_active(follow)  # the follow-up in view, with its own lesions only
    centre_view(viewer, rec1.centre_world[1])
    shot("05_timeline_propagated.png")

    # Review: volumes and the side-by-side grid centred on lesion 1.
    review.measure()
    wait_for(review.runner)
    review.start_review()
    settle()
    review.table.selectRow(0)
    settle()
    shot("06_review_grid.png")
    review.stop_review()
    viewer.close()

    labels = list(study.labels)
    written.append(render_study_screenshot(study.images, labels, out_dir / "07_study_overview.png", lesion_id=1))
    print("wrote", written[-1])
    return written


def all_docks(out_dir: Path) -> list[Path]:
    """Every dock of the plugin open together at 1600x1000, as the Plugins menu opens them."""
    import os

    import napari
    from npe2 import PluginManifest

    import napari_lesionlocator.gui  # noqa: F401
    from napari_lesionlocator.gui._sample_data import _cached_study
    from napari_lesionlocator.gui._view import centre_view

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    study = _cached_study()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    settle()
    viewer.open_sample(PLUGIN, "synthetic_study_truth")
    names = [w.display_name for w in PluginManifest.from_distribution(PLUGIN).contributions.widgets]
    docks, widgets = {}, {}
    for name in names:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        settle(0.1)
    prompts, timeline = widgets["Lesion prompts"], widgets["Timeline"]
    baseline = viewer.layers[study.images[0].name]
    prompts.session.set_active(baseline)
    pl = prompts.prompt_layers()
    for gt in (1, 3, 5, 6):
        pl.add_point_world(next(r for r in study.lesions if r.id == gt).centre_world[0])
    prompts.segment()
    wait_for(prompts.runner)
    timeline.refresh()
    assert timeline.propagate(source=baseline.name)
    wait_for(timeline.runner, busy=lambda: timeline.busy)
    docks["Lesion review"].raise_()
    widgets["Lesion review"].measure()
    wait_for(widgets["Lesion review"].runner)
    rec1 = next(r for r in study.lesions if r.id == 1)
    prompts.lesion_spin.setValue(1)
    centre_view(viewer, rec1.centre_world[0])
    prompts.activate_mode("view")
    settle(1.0)

    def shot(name: str) -> None:
        settle(0.5)
        path = out_dir / name
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        written.append(path)
        print("wrote", path)

    shot("09_all_docks.png")
    panel = prompts.engine_panel
    k = panel.engine.findData("lesionlocator")
    if os.environ.get("LESIONLOCATOR_CHECKPOINT") and panel.engine.model().item(k).isEnabled():
        panel.engine.setCurrentIndex(k)
        settle()
        shot("08_lesionlocator_engine.png")
    else:
        print("no usable $LESIONLOCATOR_CHECKPOINT: 08_lesionlocator_engine.png not rendered")
    viewer.close()
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--only", choices=["docks"], default=None, help="render only the all-docks states")
    args = parser.parse_args()
    import os
    import tempfile

    # an autosave of an earlier run must not offer itself for recovery in the screenshots
    os.environ.setdefault("LESIONLOCATOR_RECOVERY", tempfile.mkdtemp(prefix="ll-shots-recovery-"))
    if args.only == "docks":
        all_docks(args.out)
    else:
        main(args.out)
        all_docks(args.out)

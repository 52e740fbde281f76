"""A reader with a mouse: real mouse and key events on the canvas, all docks open, after moving the slider.

Boxes and clicks at every timepoint (the follow-ups' slice planes are off the slider's grid), the
active timepoint, refining a lesion with a second click, Shift for a new lesion, Ctrl to exclude,
degenerate boxes, Ctrl+Z whatever layer is active, Delete with confirmation and undo. Results are
checked against the sample study's ground truth. Run under a display:
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/pytest -p no:xvfb tests/gui/test_gui_mouse.py
"""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import n_notifications, notifications_since, wait_idle

from napari_lesionlocator.core.measurements import dice

napari = pytest.importorskip("napari")
from qtpy.QtCore import Qt  # noqa: E402

pytestmark = pytest.mark.gui


def _record(study, gid):
    return next(r for r in study.lesions if r.id == gid)


def _step_slider(viewer, steps: int = 1) -> None:
    """Move the slice slider as the reader does (whole steps of the viewer's grid)."""
    viewer.dims.set_current_step(0, viewer.dims.current_step[0] + steps)


def _go_to(viewer, world) -> None:
    """Slider onto the slice nearest a world point (on the slider's grid) and the camera on it."""
    from napari_lesionlocator.gui._view import camera

    rng = viewer.dims.range[0]
    viewer.dims.set_current_step(0, int(round((world[0] - rng.start) / rng.step)))
    camera(viewer).center = tuple(world[1:])
    camera(viewer).zoom = 4.0


@pytest.mark.parametrize("t", [1, 2])
def test_box_drawn_with_the_mouse_after_a_slider_step_at_a_followup(docked, qtbot, study, t) -> None:
    viewer, w, _, mouse = docked
    prompts = w["Lesion prompts"]
    tp = viewer.layers[study.images[t].name]
    prompts.session.set_active(tp)
    rec = _record(study, 1)
    centre = np.asarray(rec.centre_world[t])
    _go_to(viewer, centre + [-2.5, 0, 0])
    _step_slider(viewer, 1)  # the reader scrolls onto the lesion's slice
    mouse.key(Qt.Key.Key_B, Qt.KeyboardModifier.AltModifier)  # Alt+B: box mode
    assert prompts.armed_mode() == "box" and prompts.box_mode.isChecked()
    r = rec.diameter_mm * 0.8
    z = viewer.dims.point[0]
    mouse.drag([z, centre[1] - r, centre[2] - r], [z, centre[1] + r, centre[2] + r])
    pl = prompts.prompt_layers()
    assert pl.image_layer is tp
    assert len(pl.boxes.data) == 1, "the rectangle was not drawn"
    lid = int(pl.boxes.features["lesion_id"].iloc[0])
    assert lid == 1
    box = pl.box_prompt(0)
    gt_idx = study.images[t].geometry.world_to_nearest_index(centre)
    assert np.all(box.start <= gt_idx) and np.all(gt_idx < box.stop), (box, gt_idx)
    assert prompts.segment()
    wait_idle(qtbot, prompts)
    labels = prompts.session.labels_layer_for(tp, create=False)
    assert dice(np.asarray(labels.data) == lid, study.labels[t].array == 1) > 0.7
    for other in study.images:  # written into the scan in view, nowhere else
        if other.name != tp.name:
            layer = prompts.session.labels_layer_for(viewer.layers[other.name], create=False)
            assert layer is None or not np.asarray(layer.data).any()
    # A second box on the next slice after another slider step still draws (the grid stays right).
    _step_slider(viewer, 1)
    z = viewer.dims.point[0]
    rec3 = _record(study, 3)
    c3 = np.asarray(rec3.centre_world[t])
    _go_to(viewer, c3)
    z = viewer.dims.point[0]
    mouse.drag([z, c3[1] - 15, c3[2] - 15], [z, c3[1] + 15, c3[2] + 15])
    assert len(pl.boxes.data) == 2 and int(pl.boxes.features["lesion_id"].iloc[1]) == 2


def test_degenerate_rectangle_is_dropped_with_a_message(docked, qtbot, study) -> None:
    viewer, w, _, mouse = docked
    prompts = w["Lesion prompts"]
    tp = viewer.layers[study.images[1].name]
    prompts.session.set_active(tp)
    c = np.asarray(_record(study, 6).centre_world[1])
    _go_to(viewer, c)
    _step_slider(viewer, -1)
    prompts.box_mode.click()  # the button arms the box tool
    assert prompts.armed_mode() == "box"
    n = n_notifications()
    z = viewer.dims.point[0]
    mouse.drag([z, c[1], c[2]], [z, c[1] + 0.2, c[2] + 0.2], steps=2)  # a slip of the mouse
    qtbot.waitUntil(lambda: len(prompts.prompt_layers().boxes.data) == 0, timeout=3000)
    assert any("Box dropped" in m for m in notifications_since(n))
    assert not prompts.segment()  # nothing to run


def test_clicks_go_to_the_scan_in_view_and_a_hidden_scan_refuses(docked, qtbot, study) -> None:
    viewer, w, _, mouse = docked
    prompts, timeline = w["Lesion prompts"], w["Timeline"]
    session = prompts.session
    tp0, tp1 = (viewer.layers[study.images[t].name] for t in (0, 1))
    # The reader ticks the follow-up's eye: it becomes the scan clicks go to, the baseline hides.
    tp1.visible = True
    assert session.active_image() is tp1 and not tp0.visible
    assert prompts.image_combo.current_layer() is tp1
    prompts.point_mode.click()
    c = np.asarray(_record(study, 6).centre_world[1])
    _go_to(viewer, c)
    mouse.click([viewer.dims.point[0], c[1], c[2]])
    pl1 = session.prompt_layers(tp1, create=False)
    assert pl1 is not None and len(pl1.points.data) == 1
    assert session.prompt_layers(tp0, create=False) is None  # nothing went to the hidden baseline
    # Clicking a timepoint in the Timeline switches the scan in view (and the armed tool with it).
    item = timeline.timepoint_list.findItems(tp0.name, Qt.MatchFlag.MatchExactly)[0]
    rect = timeline.timepoint_list.visualItemRect(item)
    qtbot.mouseClick(timeline.timepoint_list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert session.active_image() is tp0 and tp0.visible and not tp1.visible
    assert prompts.armed_mode() == "point"
    assert viewer.layers.selection.active is session.prompt_layers(tp0).points
    # A prompt layer of a scan not in view (selected without the dock's help) refuses clicks.
    session._applying = True
    viewer.layers.selection.active = pl1.points
    session._applying = False
    pl1.points.visible = True
    pl1.points.mode = "add"
    n = n_notifications()
    mouse.click([viewer.dims.point[0], c[1], c[2]])
    qtbot.waitUntil(lambda: len(pl1.points.data) == 1, timeout=3000)
    assert any("Prompt refused" in m and tp1.name in m for m in notifications_since(n))


def test_second_click_refines_shift_click_makes_new_and_ctrl_click_excludes(docked, qtbot, study) -> None:
    viewer, w, _, mouse = docked
    prompts = w["Lesion prompts"]
    session = prompts.session
    tp0 = viewer.layers[study.images[0].name]
    session.set_active(tp0)
    truth = study.labels[0].array == 6
    rec = _record(study, 6)  # a 35 mm lung mass
    c = np.asarray(rec.centre_world[0])
    _go_to(viewer, c)
    mouse.key(Qt.Key.Key_P, Qt.KeyboardModifier.AltModifier)
    assert prompts.point_mode.isChecked() and prompts.armed_mode() == "point"
    z = viewer.dims.point[0]
    mouse.click([z, c[1], c[2]])
    assert prompts.segment()
    wait_idle(qtbot, prompts)
    labels = session.labels_layer_for(tp0, create=False)
    first = np.asarray(labels.data) == 1
    assert dice(first, truth) > 0.7
    assert prompts.window_combo.itemText(0) == "auto (lung)"  # a lung lesion: lung window
    # A second click inside the lesion refines it: same id, one more prompt, one undo step.
    off = [z, c[1] + rec.diameter_mm / 4, c[2] - rec.diameter_mm / 4]
    mouse.click(off)
    pl = prompts.prompt_layers()
    assert list(pl.points.features["lesion_id"]) == [1, 1]
    assert "refines lesion 1" in prompts.progress.status.text()
    (job,), _ = pl.pending_lesions()
    assert job.lesion_id == 1 and len(job.prompts) == 2 and job.refine
    assert prompts.segment()
    wait_idle(qtbot, prompts)
    refined = np.asarray(labels.data) == 1
    assert dice(refined, truth) > 0.7 and refined.sum() >= first.sum() * 0.9
    assert session.next_lesion_id() == 2  # no new lesion was made
    # Shift+click inside the same lesion: a new lesion on purpose.
    mouse.click(off, Qt.KeyboardModifier.ShiftModifier)
    assert int(pl.points.features["lesion_id"].iloc[-1]) == 2
    pl.remove_ids([2])
    # Ctrl+click near the lesion's edge: the side of the click is taken out, the rest stays.
    idx = np.argwhere(refined)
    edge = idx[np.argmax(idx[:, 2])]  # the lesion's voxel furthest along +x
    geom = study.images[0].geometry
    edge_world = geom.index_to_world(edge.astype(float))
    _go_to(viewer, edge_world)
    mouse.click([viewer.dims.point[0], edge_world[1], edge_world[2]], Qt.KeyboardModifier.ControlModifier)
    assert int(pl.points.features["sign"].iloc[-1]) == -1 and int(pl.points.features["lesion_id"].iloc[-1]) == 1
    assert prompts.segment()
    wait_idle(qtbot, prompts)
    excluded = np.asarray(labels.data) == 1
    centre_idx = tuple(geom.world_to_nearest_index(c))
    click_idx = tuple(geom.world_to_nearest_index([viewer.dims.point[0], edge_world[1], edge_world[2]]))
    assert excluded[centre_idx] and not excluded[click_idx]
    assert 0 < excluded.sum() < refined.sum()
    # Ctrl+Z with the points layer active undoes the exclusion only (the refined mask is back).
    assert viewer.layers.selection.active is pl.points
    mouse.key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(np.asarray(labels.data) == 1, refined)


def test_ctrl_z_undoes_the_result_whatever_layer_is_active_and_delete_asks(docked, qtbot, study, monkeypatch) -> None:
    from napari_lesionlocator.gui import prompt_widget

    viewer, w, _, mouse = docked
    prompts = w["Lesion prompts"]
    session = prompts.session
    tp0 = viewer.layers[study.images[0].name]
    session.set_active(tp0)
    pl = prompts.prompt_layers()
    for gid in (1, 5):
        pl.add_point_world(_record(study, gid).centre_world[0])
    assert prompts.segment()
    wait_idle(qtbot, prompts)
    labels = session.labels_layer_for(tp0, create=False)
    after = np.asarray(labels.data).copy()
    assert set(np.unique(after)) == {0, 1, 2}
    # The reader clicks the CT layer in the layer list, then presses Ctrl+Z on the canvas.
    viewer.layers.selection.active = tp0
    mouse.key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not np.asarray(labels.data).any(), "Ctrl+Z did not undo the segmentation"
    assert "Undone" in prompts.progress.status.text()
    labels.redo()
    np.testing.assert_array_equal(np.asarray(labels.data), after)
    # Delete asks first: "No" changes nothing.
    asked = []
    monkeypatch.setattr(prompt_widget, "confirm", lambda *a: asked.append(a[2]) or False)
    prompts.lesion_spin.setValue(2)
    prompts.delete_button.click()
    assert asked and "lesion 2" in asked[0]
    np.testing.assert_array_equal(np.asarray(labels.data), after)
    # "Yes": gone with its prompt; Undo brings back the mask and the prompt.
    monkeypatch.setattr(prompt_widget, "confirm", lambda *a: True)
    prompts.delete_button.click()
    assert 2 not in np.asarray(labels.data) and 2 not in set(pl.points.features["lesion_id"])
    prompts.undo_button.click()
    np.testing.assert_array_equal(np.asarray(labels.data), after)
    assert sorted(pl.points.features["lesion_id"]) == [1, 2]
    assert session.next_lesion_id() == 3
    # A deleted id is never handed out again.
    monkeypatch.setattr(prompt_widget, "confirm", lambda *a: True)
    prompts.delete_button.click()
    assert session.next_lesion_id() == 3


def test_prompt_outside_the_volume_is_skipped_while_the_others_segment(docked, qtbot, study) -> None:
    viewer, w, _, _ = docked
    prompts = w["Lesion prompts"]
    tp0 = viewer.layers[study.images[0].name]
    prompts.session.set_active(tp0)
    pl = prompts.prompt_layers()
    geom = study.images[0].geometry
    far = geom.index_to_world([-40, 10, 10])
    good = pl.add_point_world(_record(study, 1).centre_world[0])
    bad = pl.add_point_world(far)
    n = n_notifications()
    assert prompts.segment()
    assert any("outside the volume" in m and "Skipped" in m for m in notifications_since(n))
    wait_idle(qtbot, prompts)
    labels = prompts.session.labels_layer_for(tp0, create=False)
    data = np.asarray(labels.data)
    assert dice(data == good, study.labels[0].array == 1) > 0.7 and not np.any(data == bad)
    assert "1 prompt(s) skipped" in prompts.progress.status.text()
    assert prompts.invalid_button.isEnabled()
    prompts.invalid_button.click()
    assert bad not in set(pl.points.features["lesion_id"]) and len(pl.points.data) == 1


def test_closing_the_scan_mid_run_leaves_no_helper_layers(docked, qtbot, study) -> None:
    viewer, w, _, _ = docked
    prompts = w["Lesion prompts"]
    tp1 = viewer.layers[study.images[1].name]
    prompts.session.set_active(tp1)
    pl = prompts.prompt_layers()
    for gid in (1, 3, 6):
        pl.add_point_world(_record(study, gid).centre_world[1])
    assert prompts.segment()
    viewer.layers.remove(tp1)
    wait_idle(qtbot, prompts)
    names = [layer.name for layer in viewer.layers]
    assert not any(n.startswith(f"{tp1.name} ") and "ground truth" not in n for n in names), names
    assert "closed during the run" in prompts.progress.status.text()
    assert prompts.session.active_image() is not None and prompts.image_combo.current_layer() is not None


def test_point_mode_is_armed_when_checked_and_unchecked_when_not(docked, qtbot, study) -> None:
    viewer, w, _, mouse = docked
    prompts = w["Lesion prompts"]
    assert prompts.view_mode.isChecked() and prompts.armed_mode() == "view"  # nothing claims to be armed
    qtbot.mouseClick(prompts.point_mode, Qt.MouseButton.LeftButton)
    assert prompts.point_mode.isChecked() and prompts.armed_mode() == "point"
    # The reader picks another layer: the point tool is no longer armed, and the button says so.
    viewer.layers.selection.active = viewer.layers[study.images[0].name]
    assert prompts.armed_mode() == "view" and prompts.view_mode.isChecked() and not prompts.point_mode.isChecked()

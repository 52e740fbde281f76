"""Timeline (propagation to follow-ups) and review (volumes, side-by-side grid) widgets, end to end.

One propagation run (the classical engine registers each follow-up, which takes tens of seconds
on a shared CPU) serves several checks. Run under a display:
xvfb-run -a .venv/bin/pytest -p no:xvfb tests/gui
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesionlocator.core.measurements import dice

napari = pytest.importorskip("napari")

pytestmark = pytest.mark.gui
PLUGIN = "napari-lesionlocator"
TRACK_TIMEOUT_MS = 240_000


@pytest.fixture
def study():
    from napari_lesionlocator.gui._sample_data import _cached_study

    return _cached_study()


@pytest.fixture
def annotated(make_napari_viewer, study):
    """Sample study with two baseline lesions entered by hand (as a user would paint/correct them):
    ground-truth lesion 1 as id 1 and ground-truth lesion 5 as id 9."""
    from napari_lesionlocator.gui._layers import apply_lesion_masks

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_study_truth")
    _, timeline = viewer.window.add_plugin_dock_widget(PLUGIN, "Timeline")
    tps = [viewer.layers[im.name] for im in study.images]
    baseline = timeline.session.labels_layer_for(tps[0])
    apply_lesion_masks(baseline, {1: study.labels[0].array == 1, 9: study.labels[0].array == 5})
    return viewer, timeline, tps


def test_timepoints_follow_dates_and_can_be_reordered(qtbot, annotated, study) -> None:
    viewer, timeline, tps = annotated
    assert [tp.name for tp in timeline.timepoints()] == [im.name for im in study.images]
    # The baseline's lesions are listed as present at the baseline only.
    assert timeline.presence() == {1: [True, False, False], 9: [True, False, False]}
    # The table refreshes in the event loop (after the follow-ups' lesion layers are made).
    qtbot.waitUntil(lambda: timeline.table.rowCount() == 2, timeout=5000)
    assert timeline.table.rowCount() == 2 and timeline.table.columnCount() == 3
    # Drag the last timepoint to the top: the order (and the propagation source list) follows.
    lst = timeline.timepoint_list
    item = lst.takeItem(2)
    lst.insertItem(0, item)
    timeline._on_reordered()
    assert [tp.name for tp in timeline.timepoints()] == [study.images[i].name for i in (2, 0, 1)]


def test_propagate_to_both_followups_then_review(qtbot, annotated, study) -> None:
    from napari_lesionlocator.gui._heartbeat import StallMonitor
    from napari_lesionlocator.gui._layers import lesion_colour
    from napari_lesionlocator.gui._view import camera

    viewer, timeline, tps = annotated
    assert timeline.propagate(source=tps[0].name)
    with StallMonitor() as monitor:
        qtbot.waitUntil(lambda: not timeline.busy, timeout=TRACK_TIMEOUT_MS)  # run + results written
    assert timeline.runner.last_state == "succeeded", timeline.progress.status.text()
    assert monitor.ticks > 2 and monitor.max_stall_ms < 1000, monitor.max_stall_ms
    for t in (1, 2):
        layer = timeline.session.labels_layer_for(tps[t], create=False)
        assert layer is not None, f"no labels layer for {tps[t].name}"
        data = np.asarray(layer.data)
        assert set(np.unique(data)) - {0} <= {1, 9}
        for our_id, gt_id in ((1, 1), (9, 5)):
            d = dice(data == our_id, study.labels[t].array == gt_id)
            assert d > 0.6, (t, our_id, d)
            np.testing.assert_allclose(layer.colormap.map(our_id), lesion_colour(our_id))
        # On the follow-up's own grid.
        np.testing.assert_allclose(layer.data_to_world([5, 6, 7]), tps[t].data_to_world([5, 6, 7]))
    assert timeline.presence() == {1: [True, True, True], 9: [True, True, True]}
    # A propagation is one undo step per follow-up layer.
    follow = timeline.session.labels_layer_for(tps[1])
    follow.undo()
    assert not np.asarray(follow.data).any()
    follow.redo()
    assert np.any(np.asarray(follow.data) == 9)

    # ---- review: volumes per timepoint, then the side-by-side grid centred on a lesion.
    _, review = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion review")
    assert review.measure()
    qtbot.waitUntil(lambda: not review.runner.running, timeout=60_000)
    assert sorted(review.volumes) == [1, 9]
    truth_ml = next(r for r in study.lesions if r.id == 5).volume_ml[0]
    assert review.volumes[9][0] == pytest.approx(truth_ml, rel=1e-6)  # baseline = the ground-truth mask
    assert all(v is not None and v > 0 for v in review.volumes[1])
    assert review.table.rowCount() == 2

    user_layers = list(viewer.layers)
    visible_before = {layer.name: layer.visible for layer in user_layers}
    review.start_review()
    grid = viewer.canvas.grid
    assert grid.enabled and grid.stride == 2
    assert grid.actual_shape(viewer.layers) == (1, 3)  # three timepoints side by side
    assert not any(layer.visible for layer in user_layers)  # only the review pairs are shown
    review.select_lesion(9)
    # Every timepoint's lesion 9 now sits at the same world point (the camera centre).
    centres = []
    for _, img, lab in review._review:
        idx = np.argwhere(np.asarray(lab.data) == 9).mean(axis=0)
        centres.append(np.asarray(lab.data_to_world(idx)))
        np.testing.assert_allclose(img.data_to_world([1, 2, 3]), lab.data_to_world([1, 2, 3]))
    for c in centres[1:]:
        np.testing.assert_allclose(c, centres[0], atol=1e-6)
    np.testing.assert_allclose(camera(viewer).center[-2:], centres[0][-2:], atol=1e-3)
    assert viewer.dims.point[0] == pytest.approx(centres[0][0], abs=1.5)
    # Review layers share the real arrays: an edit there is an edit of the real labels.
    assert review._review[1][2].data is timeline.session.labels_layer_for(tps[1]).data
    review.stop_review()
    assert not viewer.canvas.grid.enabled
    assert list(viewer.layers) == user_layers
    assert {layer.name: layer.visible for layer in user_layers} == visible_before


def test_propagate_refuses_without_lesions(make_napari_viewer, study) -> None:
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_study")
    _, timeline = viewer.window.add_plugin_dock_widget(PLUGIN, "Timeline")
    n = len(notification_manager.records)
    assert not timeline.propagate()
    assert not timeline.runner.running
    assert any("no lesions" in str(r.message) for r in notification_manager.records[n:])


def test_cancel_propagation_writes_nothing(qtbot, annotated) -> None:
    viewer, timeline, tps = annotated
    events = []

    def cancel_at_first_event(event) -> None:
        events.append(event)
        if len(events) == 1:
            timeline.runner.cancel()

    timeline.runner.progressed.connect(cancel_at_first_event)
    with qtbot.waitSignal(timeline.runner.cancelled, timeout=TRACK_TIMEOUT_MS):
        assert timeline.propagate(source=tps[0].name, lesion_ids=[1])
    qtbot.waitUntil(lambda: not timeline.runner.running, timeout=TRACK_TIMEOUT_MS)
    for tp in tps[1:]:
        layer = timeline.session.labels_layer_for(tp, create=False)
        assert layer is None or not np.asarray(layer.data).any()
    assert "Cancelled" in timeline.progress.status.text()
    assert timeline.propagate_button.isEnabled()


def _drop_followup_lesion_layers(qtbot, viewer, timeline, tps) -> None:
    """Each opened scan gets its (empty) lesion layer in an idle turn; close the follow-ups' ones, so
    that a propagation has to make them (as after a reader closed them)."""
    session = timeline.session
    qtbot.waitUntil(lambda: all(session.labels_layer_for(tp, create=False) is not None for tp in tps), timeout=10_000)
    for tp in tps[1:]:
        viewer.layers.remove(session.labels_layer_for(tp, create=False))


def test_opened_scans_get_their_lesion_layer_in_an_idle_turn(qtbot, make_napari_viewer, study) -> None:
    """napari needs 100-300 ms to add a Labels layer here, so it is made when the scan opens, not
    inside the first segmentation or propagation: hidden unless the scan is in view, not selected.
    A scan with napari's default geometry (1 mm at the origin, no file geometry) gets none until its
    geometry has been checked."""
    viewer = make_napari_viewer()
    _, timeline = viewer.window.add_plugin_dock_widget(PLUGIN, "Timeline")
    im = study.images[1]
    image = viewer.add_image(im.array, name="fu", metadata={"geometry": im.geometry.to_metadata()},
                             **im.geometry.napari_transform())
    plain = viewer.add_image(np.zeros((8, 9, 10), np.float32), name="plain")
    selected = viewer.layers.selection.active
    session = timeline.session
    assert session.labels_layer_for(image, create=False) is None  # not inside the insertion itself
    qtbot.waitUntil(lambda: session.labels_layer_for(image, create=False) is not None, timeout=5000)
    layer = session.labels_layer_for(image, create=False)
    assert layer.data.shape == im.shape and not np.asarray(layer.data).any()
    np.testing.assert_allclose(layer.data_to_world([3, 4, 5]), image.data_to_world([3, 4, 5]))
    assert viewer.layers.selection.active is selected
    qtbot.wait(100)
    assert session.labels_layer_for(plain, create=False) is None
    # A lesion map opened later for that scan (a DICOM-SEG, a saved map) replaces the empty layer made
    # in advance: prompts and tracking then write into the map the reader opened.
    opened = np.zeros(im.shape, np.uint16)
    opened[10:14, 20:30, 20:30] = 3
    seg = viewer.add_labels(opened, name="fu seg", metadata={"geometry": im.geometry.to_metadata(),
                            "lesionlocator": {"role": "lesions", "image": "fu"}}, **im.geometry.napari_transform())
    qtbot.waitUntil(lambda: layer not in viewer.layers, timeout=5000)
    assert session.labels_layer_for(image, create=False) is seg


def test_followup_layers_made_in_steps_and_cancel_before_the_run_starts(qtbot, annotated) -> None:
    """Propagate makes the missing follow-up Labels layers over several event-loop turns, before
    the worker starts; cancelling in that phase starts nothing and leaves the widget usable."""
    viewer, timeline, tps = annotated
    _drop_followup_lesion_layers(qtbot, viewer, timeline, tps)
    assert all(timeline.session.labels_layer_for(tp, create=False) is None for tp in tps[1:])
    assert timeline.propagate(source=tps[0].name, lesion_ids=[1])
    # Nothing heavy ran inside the handler: no layer yet, no worker yet, but the widget is busy.
    assert all(timeline.session.labels_layer_for(tp, create=False) is None for tp in tps[1:])
    assert not timeline.runner.running and timeline.busy
    assert not timeline.propagate(source=tps[0].name)  # a second press is refused meanwhile
    selected = viewer.layers.selection.active
    qtbot.waitUntil(lambda: timeline.session.labels_layer_for(tps[1], create=False) is not None, timeout=10_000)
    layer = timeline.session.labels_layer_for(tps[1], create=False)
    # Added without taking the selection (the reader's tool and scan in view stay as they were),
    # and hidden: only the scan in view shows its lesions.
    assert viewer.layers.selection.active is selected and not layer.visible
    timeline.cancel()
    assert not timeline.busy and not timeline.runner.running
    assert "Cancelled" in timeline.progress.status.text()
    assert timeline.propagate_button.isEnabled()
    qtbot.wait(100)  # no queued step may start the job after the cancel
    assert not timeline.runner.running
    layer = timeline.session.labels_layer_for(tps[1], create=False)
    assert not np.asarray(layer.data).any()
    # Tied to its image like any lesion layer: same grid, lesion colours, our metadata.
    assert layer.data.shape == tps[1].data.shape and layer.data.dtype == np.uint16
    assert layer.metadata["lesionlocator"]["image_id"] == str(tps[1].unique_id)
    np.testing.assert_allclose(layer.scale, tps[1].scale)


def test_gc_freeze_is_lifted_when_a_frozen_layer_is_closed(qtbot, annotated) -> None:
    import gc

    from napari_lesionlocator.gui import _gc

    viewer, timeline, tps = annotated
    _gc.lift_freeze()  # an earlier test's widget may have frozen the heap before these layers existed
    _gc.freeze_long_lived_objects(viewer)
    assert _gc.is_frozen() and gc.get_freeze_count() > 0
    # A layer made after the freeze is collected normally: its removal keeps the freeze.
    extra = viewer.add_labels(np.zeros((4, 4, 4), dtype=np.uint8))
    viewer.layers.remove(extra)
    assert _gc.is_frozen()
    viewer.layers.remove(tps[2])
    assert not _gc.is_frozen() and gc.get_freeze_count() == 0  # the closed layer can be collected
    qtbot.waitUntil(_gc.is_frozen, timeout=5_000)  # and the heap is frozen again afterwards
    assert gc.get_freeze_count() > 0


def test_layer_creation_failure_leaves_the_timeline_usable(qtbot, annotated, monkeypatch) -> None:
    from napari.utils.notifications import notification_manager

    viewer, timeline, tps = annotated

    def broken(image_layer):
        raise MemoryError("no room for the Labels array")

    _drop_followup_lesion_layers(qtbot, viewer, timeline, tps)
    monkeypatch.setattr(timeline.session, "new_labels_layer", broken)
    n = len(notification_manager.records)
    assert timeline.propagate(source=tps[0].name, lesion_ids=[1])
    qtbot.waitUntil(lambda: not timeline.busy, timeout=10_000)
    assert not timeline.runner.running and timeline.runner.last_state is None  # the job never started
    assert "no room for the Labels array" in timeline.progress.status.text()
    assert timeline.propagate_button.isEnabled()
    assert any("no room" in str(r.message) for r in notification_manager.records[n:])
    assert all(timeline.session.labels_layer_for(tp, create=False) is None for tp in tps[1:])


@pytest.mark.parametrize("timeline_first", [False, True])
def test_engine_label_follows_the_engine_chosen_in_lesion_prompts(make_napari_viewer, qtbot, timeline_first) -> None:
    """The Timeline names the engine chosen in the Lesion prompts dock, and follows a change of it
    (whichever dock was opened first: the one engine block ends up in Lesion prompts)."""
    viewer = make_napari_viewer(show=True)
    names = ["Timeline", "Lesion prompts"] if timeline_first else ["Lesion prompts", "Timeline"]
    w = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in names}
    timeline, panel = w["Timeline"], w["Lesion prompts"].engine_panel
    assert panel is timeline.engine_panel and panel.parent() is w["Lesion prompts"]
    qtbot.wait(50)
    assert "classical" in timeline.engine_label.text()
    index = panel.engine.findData("lesionlocator")
    panel.engine.setCurrentIndex(index)  # chosen as a reader would (the item may be disabled here)
    assert panel.engine_name == "lesionlocator"
    label = timeline.engine_label.text()
    assert "LesionLocator" in label and "classical" not in label, label
    assert timeline.engine_label.isVisible()
    panel.engine.setCurrentIndex(panel.engine.findData("classical"))
    assert "classical" in timeline.engine_label.text()

"""Prompt widget end to end: sample study -> point/box prompts -> classical engine in a worker -> Labels.

Everything is asserted against the synthetic study's ground truth. Run under a display:
xvfb-run -a .venv/bin/pytest -p no:xvfb tests/gui
"""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_lesionlocator.core.errors import EngineError  # noqa: E402
from napari_lesionlocator.core.measurements import dice  # noqa: E402
from napari_lesionlocator.engines.base import SegmentationResult  # noqa: E402

pytestmark = pytest.mark.gui
PLUGIN = "napari-lesionlocator"
WORKER_TIMEOUT_MS = 90_000
# Minimum Dice of the classical engine per ground-truth lesion (1: a 12 mm solid nodule, 5: an
# 8 mm nodule where one voxel of boundary weighs more). These check that the GUI sends the right
# prompt to the right voxels; the engine's own accuracy is tested in tests/engines.
MIN_DICE = {1: 0.7, 5: 0.7}


@pytest.fixture
def study():
    from napari_lesionlocator.gui._sample_data import _cached_study

    return _cached_study()


@pytest.fixture
def prompting(make_napari_viewer, study):
    """Viewer with the sample study (plus hidden ground truth) and the prompt widget from the manifest."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_study_truth")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion prompts")
    image = viewer.layers[study.images[0].name]
    widget.image_combo.set_layer(image)
    return viewer, widget, image


def _record(study, lesion_id: int):
    return next(r for r in study.lesions if r.id == lesion_id)


def _run(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WORKER_TIMEOUT_MS)


def _notifications():
    from napari.utils.notifications import notification_manager

    return notification_manager.records


def test_point_prompts_segment_against_ground_truth(qtbot, prompting, study) -> None:
    from napari_lesionlocator.gui._heartbeat import StallMonitor
    from napari_lesionlocator.gui._layers import lesion_colour

    viewer, widget, image = prompting
    pl = widget.prompt_layers()
    truth = study.labels[0].array
    ids = {pl.add_point_world(_record(study, gt).centre_world[0]): gt for gt in (1, 5)}
    assert sorted(ids) == [1, 2]  # each click is a new lesion id
    with StallMonitor() as monitor:
        widget.segment()
        assert widget.runner.running
        _run(qtbot, widget)
    labels = widget.session.labels_layer_for(image, create=False)
    assert labels is not None and labels.name == f"{image.name} lesions"
    for lid, gt in ids.items():
        d = dice(np.asarray(labels.data) == lid, truth == gt)
        assert d > MIN_DICE[gt], (lid, gt, d)
        np.testing.assert_allclose(labels.colormap.map(lid), lesion_colour(lid))
    # Tied to its image: same world placement.
    np.testing.assert_allclose(labels.data_to_world([10, 20, 30]), image.data_to_world([10, 20, 30]))
    # The GUI thread kept running (a generous bound; benchmarks/ui_responsiveness.py has the strict one).
    assert monitor.ticks > 2  # the heartbeat ran while the worker did
    assert monitor.max_stall_ms < 1000, monitor.max_stall_ms
    # Prompts are done: a second Segment runs nothing.
    assert pl.pending() == []
    widget.segment()
    assert not widget.runner.running
    # One model result = one undo step, and redo brings it back.
    before = np.asarray(labels.data).copy()
    labels.undo()
    assert not np.asarray(labels.data).any()
    labels.redo()
    np.testing.assert_array_equal(np.asarray(labels.data), before)


def test_box_prompt_segments_against_ground_truth(qtbot, prompting, study) -> None:
    viewer, widget, image = prompting
    pl = widget.prompt_layers()
    truth = study.labels[0].array == 1
    idx = np.argwhere(truth)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    zc = int(round(idx[:, 0].mean()))
    geom = study.images[0].geometry
    # A rectangle drawn on the lesion's middle slice, a little larger than the lesion, in world mm.
    a = geom.index_to_world([zc, lo[1] - 2, lo[2] - 2])
    b = geom.index_to_world([zc, hi[1] + 2, hi[2] + 2])
    lid = pl.add_box_world(a, b)
    feats = pl.boxes.features
    assert int(feats["z0"].iloc[0]) <= zc <= int(feats["z1"].iloc[0])  # a sensible default depth
    pl.set_z_range(0, lo[0] - 1, hi[0] + 1)
    box = pl.box_prompt(0)
    assert box.box == (lo[0] - 1, hi[0] + 2, lo[1] - 2, hi[1] + 3, lo[2] - 2, hi[2] + 3)
    assert len(pl.wire.data) == 6  # two faces and four edges of the 3D box
    widget.segment()
    _run(qtbot, widget)
    labels = widget.session.labels_layer_for(image)
    assert dice(np.asarray(labels.data) == lid, truth) > 0.7


def test_reprompt_replaces_and_delete_removes_everywhere(qtbot, prompting, study) -> None:
    from napari_lesionlocator.gui._layers import apply_lesion_masks

    viewer, widget, image = prompting
    pl = widget.prompt_layers()
    truth = study.labels[0].array
    lid = pl.add_point_world(_record(study, 1).centre_world[0])
    widget.segment()
    _run(qtbot, widget)
    labels = widget.session.labels_layer_for(image)
    assert dice(np.asarray(labels.data) == lid, truth == 1) > MIN_DICE[1]
    # Re-prompt the same id on another lesion: its mask is replaced, not added to.
    widget.lesion_spin.setValue(lid)
    widget.reprompt.setChecked(True)
    assert pl.add_point_world(_record(study, 5).centre_world[0]) == lid
    widget.segment()
    _run(qtbot, widget)
    assert dice(np.asarray(labels.data) == lid, truth == 5) > MIN_DICE[5]
    assert not np.any(np.asarray(labels.data)[truth == 1] == lid)
    assert not widget.reprompt.isChecked()
    # The same lesion at a follow-up (e.g. after propagation), then delete it: gone at every timepoint.
    follow = viewer.layers[study.images[1].name]
    follow_labels = widget.session.labels_layer_for(follow)
    apply_lesion_masks(follow_labels, {lid: study.labels[1].array == 5})
    assert widget.delete_lesion(lid) > 0
    assert lid not in np.asarray(labels.data) and lid not in np.asarray(follow_labels.data)
    assert lid not in set(pl.points.features["lesion_id"])
    follow_labels.undo()  # deletion is undoable per layer
    assert np.any(np.asarray(follow_labels.data) == lid)


def test_next_lesion_cycles_and_centres(qtbot, prompting, study) -> None:
    viewer, widget, image = prompting
    pl = widget.prompt_layers()
    for gt in (1, 5):
        pl.add_point_world(_record(study, gt).centre_world[0])
    widget.segment()
    _run(qtbot, widget)
    assert widget.next_lesion() == 1
    z = viewer.dims.point[0]
    assert abs(z - _record(study, 1).centre_world[0][0]) < 3.0  # slice moved onto the lesion
    assert widget.next_lesion() == 2
    assert widget.next_lesion() == 1  # wraps
    tip = widget.toolTip()
    bound = {str(k): f for k, f in viewer.keymap.items()}
    for key in ("Alt+P", "Alt+B", "Alt+S", "Alt+N"):
        assert key in tip and key in bound
    bound["Alt+B"](viewer)  # the shortcut switches to box mode and arms the rectangle tool
    assert widget.box_mode.isChecked()
    assert viewer.layers.selection.active.name == pl.boxes.name  # (the widget holds napari proxies)
    assert str(pl.boxes.mode) == "add_rectangle", pl.boxes.mode
    bound["Alt+N"](viewer)
    assert widget.lesion_spin.value() == 2


def test_cancel_mid_run_changes_nothing(qtbot, prompting, study) -> None:
    viewer, widget, image = prompting
    pl = widget.prompt_layers()
    for gt in (1, 3, 5, 6):
        pl.add_point_world(_record(study, gt).centre_world[0])
    labels = widget.session.labels_layer_for(image)
    events = []
    widget.runner.progressed.connect(lambda e: (events.append(e), widget.cancel() if len(events) == 2 else None))
    with qtbot.waitSignal(widget.runner.cancelled, timeout=WORKER_TIMEOUT_MS):
        widget.segment()
    _run(qtbot, widget)
    assert len(events) < 6  # it stopped before the last lesion
    assert not np.asarray(labels.data).any()
    assert "Cancelled" in widget.progress.status.text()
    assert len(pl.pending()) == 4  # the prompts are still there to run again
    assert widget.segment_button.isEnabled()


class _BrokenEngine:
    name = "broken"

    def prepare(self, image) -> None:
        return None

    def segment(self, image, prompts, *, on_progress=None, cancel=None) -> SegmentationResult:
        raise EngineError("the GPU went away; choose device 'cpu' and run again")

    def track(self, *args, **kwargs):  # pragma: no cover - not used here
        raise EngineError("not used")


def test_engine_error_becomes_a_notification(qtbot, prompting, study, monkeypatch) -> None:
    viewer, widget, image = prompting
    monkeypatch.setenv("LESIONLOCATOR_NO_HELPER_PROCESS", "1")  # the engine below runs in this process
    monkeypatch.setattr(widget.session, "engine", lambda name, settings=None: _BrokenEngine())
    pl = widget.prompt_layers()
    pl.add_point_world(_record(study, 1).centre_world[0])
    labels = widget.session.labels_layer_for(image)
    n_before = len(_notifications())
    with qtbot.waitSignal(widget.runner.failed, timeout=WORKER_TIMEOUT_MS):
        widget.segment()
    _run(qtbot, widget)
    messages = [str(n.message) for n in _notifications()[n_before:]]
    assert any("GPU went away" in m for m in messages), messages
    assert "Failed" in widget.progress.status.text()
    assert not np.asarray(labels.data).any()
    assert widget.segment_button.isEnabled() and len(pl.pending()) == 1


def test_prompt_outside_the_image_is_reported(qtbot, prompting, study) -> None:
    viewer, widget, image = prompting
    pl = widget.prompt_layers()
    far = np.asarray(study.images[0].geometry.index_to_world([-50, 10, 10]))
    pl.add_point_world(far)
    n_before = len(_notifications())
    widget.segment()
    assert not widget.runner.running
    messages = [str(n.message) for n in _notifications()[n_before:]]
    assert any("outside the volume" in m for m in messages), messages


def test_engine_panel_offers_lesionlocator_only_with_a_checkpoint(qtbot, tmp_path, monkeypatch) -> None:
    from napari_lesionlocator.engines.lesionlocator import config
    from napari_lesionlocator.gui._panels import EnginePanel

    monkeypatch.delenv(config.ENV_VAR, raising=False)
    monkeypatch.setattr(config, "config_file", lambda: tmp_path / "no-config.json")
    panel = EnginePanel()
    qtbot.addWidget(panel)
    assert panel.engine_name == "classical"
    assert not panel.engine.model().item(1).isEnabled()
    assert panel.settings().checkpoint is None

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    monkeypatch.setenv(config.ENV_VAR, str(ckpt))
    panel = EnginePanel()
    qtbot.addWidget(panel)
    assert panel.engine.model().item(1).isEnabled()
    panel.engine.setCurrentIndex(1)
    panel.folds.setText("0, 2")
    panel.tta.setChecked(True)
    settings = panel.settings()
    assert panel.engine_name == "lesionlocator"
    assert (settings.checkpoint, tuple(settings.folds)) == (str(ckpt), (0, 2))
    assert settings.tta and settings.device == "cpu"
    panel.folds.setText("zero")
    with pytest.raises(EngineError, match="comma-separated"):
        panel.settings()


def test_prompts_on_a_rotated_image_map_to_the_right_voxels(make_napari_viewer) -> None:
    """World clicks go through the layers' transforms (affine here) to voxel indices of the image."""
    from napari_lesionlocator.core.geometry import Geometry
    from napari_lesionlocator.core.image import Image
    from napari_lesionlocator.gui._layers import image_layer_data
    from napari_lesionlocator.gui._prompt_layers import PromptLayers

    c, s = np.cos(0.5), np.sin(0.5)
    direction = (1, 0, 0, 0, c, -s, 0, s, c)
    geom = Geometry((20, 30, 40), (2.5, 0.8, 0.7), (-10.0, 20.0, 33.0), direction)
    viewer = make_napari_viewer()
    data, kwargs, _ = image_layer_data(Image(np.zeros(geom.shape, np.float32), geom, name="rot"))
    image = viewer.add_image(data, **kwargs)
    assert not np.allclose(image.affine.affine_matrix, np.eye(4))
    ids = iter(range(1, 100))
    pl = PromptLayers(viewer, image, lambda: next(ids))
    pl.add_point_world(geom.index_to_world([7, 11, 13]))
    pl.add_box_world(geom.index_to_world([9, 5, 6]), geom.index_to_world([9, 12, 20]), (8, 10))
    (point, _), (box, _) = pl.pending()
    assert point.zyx == (7, 11, 13) and point.lesion_id == 1
    assert box.box == (8, 11, 5, 13, 6, 21) and box.lesion_id == 2

"""Prompt widget with the LesionLocator engine: a tiny generated checkpoint, run through the real GUI path.

The checkpoint has random weights (``generate_checkpoint(tiny=True)``), so nothing here asserts
accuracy: the tests check that the widget really runs the LesionLocator engine with the options
from its form, writes the result on the image's grid, and reports configuration errors (missing
checkpoint folder, absent device) as notifications instead of crashing. Run under a display:
xvfb-run -a .venv/bin/pytest -p no:xvfb tests/gui/test_gui_lesionlocator.py
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

pytestmark = pytest.mark.gui
PLUGIN = "napari-lesionlocator"
WORKER_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A one-fold tiny LesionLocator checkpoint (point + box parts, random weights), made once per module."""
    from napari_lesionlocator.engines.lesionlocator.generate import generate_checkpoint

    return generate_checkpoint(tmp_path_factory.mktemp("ll_gui_ckpt"), tiny=True, folds=(0,),
                               parts=("bbox", "point"))


@pytest.fixture
def ll_env(tiny_checkpoint, tmp_path, monkeypatch):
    """$LESIONLOCATOR_CHECKPOINT -> the tiny checkpoint; the user config file redirected into tmp_path."""
    from napari_lesionlocator.engines.lesionlocator import config

    cfg = tmp_path / "config" / "config.json"
    monkeypatch.setattr(config, "config_file", lambda: cfg)
    monkeypatch.setenv(config.ENV_VAR, str(tiny_checkpoint))
    yield tiny_checkpoint
    assert not cfg.exists()  # the widget never writes the user's config


@pytest.fixture
def study():
    from napari_lesionlocator.gui._sample_data import _cached_study

    return _cached_study()


@pytest.fixture
def ll_widget(make_napari_viewer, ll_env, study):
    """Viewer with the sample study and the prompt widget (from the manifest), LesionLocator selected."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_study")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion prompts")
    image = viewer.layers[study.images[0].name]
    widget.image_combo.set_layer(image)
    panel = widget.engine_panel
    index = panel.engine.findData("lesionlocator")
    assert index >= 0 and panel.engine.model().item(index).isEnabled()
    panel.engine.setCurrentIndex(index)
    assert panel.engine_name == "lesionlocator"
    assert all(w.isEnabled() for w in (panel.tta, panel.folds, panel.device))
    return viewer, widget, image


def _wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WORKER_TIMEOUT_MS)


def _notifications():
    from napari.utils.notifications import notification_manager

    return notification_manager.records


def _lesion_centre(study, lesion_id: int):
    return next(r for r in study.lesions if r.id == lesion_id).centre_world[0]


def test_point_prompt_runs_the_lesionlocator_engine_with_the_form_options(qtbot, ll_widget, study) -> None:
    from napari_lesionlocator.engines.lesionlocator import LesionLocatorEngine

    viewer, widget, image = ll_widget
    panel = widget.engine_panel
    panel.folds.setText("0")
    panel.tta.setChecked(True)
    panel.device.setCurrentText("cpu")
    pl = widget.prompt_layers()
    lid = pl.add_point_world(_lesion_centre(study, 1))
    n_before = len(_notifications())
    widget.segment()
    assert widget.runner.running
    assert "lesionlocator engine" in widget.progress.status.text()
    _wait(qtbot, widget)
    assert widget.runner.last_state == "succeeded", widget.runner.last_error

    # The engine that ran is the LesionLocator one, built from the form's options.
    (engine,) = widget.session._engines.values()
    assert isinstance(engine, LesionLocatorEngine)
    s = engine.settings
    assert (tuple(s.folds), s.tta, s.device) == ((0,), True, "cpu")
    assert s.checkpoint == panel.checkpoint and engine.checkpoint_root().name == "LesionLocatorCheckpoint"
    assert engine._models, "the model was never loaded"
    assert "point" in engine._models
    assert all(list(m.folds) == [0] for m in engine._models.values())  # fold 0 only, as typed in the form

    # The result is in the image's Labels layer, on the image's exact grid.
    labels = widget.session.labels_layer_for(image, create=False)
    assert labels is not None and labels.data.shape == image.data.shape
    np.testing.assert_array_equal(labels.scale, image.scale)
    np.testing.assert_array_equal(labels.translate, image.translate)
    np.testing.assert_allclose(labels.affine.affine_matrix, image.affine.affine_matrix)
    data = np.asarray(labels.data)
    assert set(np.unique(data)) <= {0, lid}  # only this prompt's id is written
    status = widget.progress.status.text()
    if np.any(data == lid):
        assert status.startswith("Segmented 1 lesion(s)"), status
    else:  # random weights may predict nothing: that must be said, not silently dropped
        assert f"no lesion found for id(s) [{lid}]" in status, status
    messages = [str(n.message) for n in _notifications()[n_before:]]
    assert not any("Traceback" in m or "Error" in m for m in messages), messages
    assert pl.pending() == []

    # A second run with the same options reuses the loaded engine (weights load once).
    pl.add_point_world(_lesion_centre(study, 5))
    widget.segment()
    _wait(qtbot, widget)
    assert widget.runner.last_state == "succeeded", widget.runner.last_error
    assert widget.session.engines_created == 1 and next(iter(widget.session._engines.values())) is engine
    # The engine repeats its standing notes with every prompt; the user sees each one once.
    messages = [str(n.message) for n in _notifications()[n_before:]]
    fold_notes = [m for m in messages if m.startswith("point: using fold(s) [0]")]
    assert len(fold_notes) == 1, messages


def test_missing_checkpoint_folder_is_a_notification(qtbot, ll_widget, study, tmp_path, monkeypatch) -> None:
    """The folder configured when the widget opened is gone at Segment time: a clear error, nothing written."""
    from napari_lesionlocator.engines.lesionlocator import config

    viewer, widget, image = ll_widget
    moved = tmp_path / "ckpt_copy"
    shutil.copytree(widget.engine_panel.checkpoint, moved)
    widget.engine_panel.checkpoint = str(moved)  # as if configured to this folder ...
    shutil.rmtree(moved)  # ... which was then deleted
    monkeypatch.setenv(config.ENV_VAR, str(moved))
    pl = widget.prompt_layers()
    pl.add_point_world(_lesion_centre(study, 1))
    labels = widget.session.labels_layer_for(image)
    n_before = len(_notifications())
    with qtbot.waitSignal(widget.runner.failed, timeout=WORKER_TIMEOUT_MS):
        widget.segment()
    _wait(qtbot, widget)
    messages = [str(n.message) for n in _notifications()[n_before:]]
    assert any(str(moved) in m and "does not exist" in m and "download-weights" in m for m in messages), messages
    assert "Failed" in widget.progress.status.text()
    assert not np.asarray(labels.data).any()
    assert widget.segment_button.isEnabled() and len(pl.pending()) == 1  # the prompt is kept to run again


def test_absent_device_is_a_notification(qtbot, ll_widget, study) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the 'absent device' case cannot happen")
    viewer, widget, image = ll_widget
    widget.engine_panel.device.setCurrentText("cuda")
    pl = widget.prompt_layers()
    pl.add_point_world(_lesion_centre(study, 1))
    labels = widget.session.labels_layer_for(image)
    n_before = len(_notifications())
    with qtbot.waitSignal(widget.runner.failed, timeout=WORKER_TIMEOUT_MS):
        widget.segment()
    _wait(qtbot, widget)
    messages = [str(n.message) for n in _notifications()[n_before:]]
    assert any("'cuda' was requested" in m and "cpu" in m for m in messages), messages
    assert "Failed" in widget.progress.status.text()
    assert not np.asarray(labels.data).any() and len(pl.pending()) == 1
    # Switching back to cpu then works with the same prompt.
    widget.engine_panel.device.setCurrentText("cpu")
    widget.segment()
    _wait(qtbot, widget)
    assert widget.runner.last_state == "succeeded", widget.runner.last_error
    assert pl.pending() == []


def test_panel_explains_a_configured_but_missing_checkpoint(qtbot, tmp_path, monkeypatch) -> None:
    """A checkpoint setting that points nowhere keeps the engine disabled and says which folder is missing."""
    from napari_lesionlocator.engines.lesionlocator import config
    from napari_lesionlocator.gui._panels import EnginePanel

    monkeypatch.setattr(config, "config_file", lambda: tmp_path / "no-config.json")
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "gone"))
    panel = EnginePanel()
    qtbot.addWidget(panel)
    index = panel.engine.findData("lesionlocator")
    assert not panel.engine.model().item(index).isEnabled()
    tip = str(panel.engine.itemData(index, 3))  # Qt.ToolTipRole
    assert str(tmp_path / "gone") in tip and "does not exist" in tip, tip


def test_timeline_propagates_with_the_lesionlocator_engine_and_reports_its_notes(
        qtbot, make_napari_viewer, ll_env, study, monkeypatch) -> None:
    """The timeline's engine panel builds a LesionLocatorEngine with the form's options; the engine's
    reasons for a lost lesion reach the user. ``track`` itself is replaced (a real tracking run needs
    the ~283 MB track checkpoint and a registration: tests/engines/lesionlocator covers it)."""
    from napari_lesionlocator.core.image import LabelMap
    from napari_lesionlocator.engines.base import TrackingResult
    from napari_lesionlocator.engines.lesionlocator import LesionLocatorEngine
    from napari_lesionlocator.gui._layers import apply_lesion_masks

    calls = []
    truth = {im.name: lab.array for im, lab in zip(study.images, study.labels, strict=True)}

    def fake_track(self, baseline, baseline_labels, followup, *, lesion_ids=None, on_progress=None, cancel=None):
        calls.append((self, baseline.geometry, followup.geometry))
        out = LabelMap.empty_like(followup)
        out.paste(1, truth[followup.name] == 1)  # on the follow-up's own grid
        return TrackingResult(out, [9], ["lesion 9: registration moved it outside the follow-up in every pass"])

    monkeypatch.setattr(LesionLocatorEngine, "track", fake_track)
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic_study")
    _, timeline = viewer.window.add_plugin_dock_widget(PLUGIN, "Timeline")
    tps = [viewer.layers[im.name] for im in study.images]
    apply_lesion_masks(timeline.session.labels_layer_for(tps[0]),
                       {1: study.labels[0].array == 1, 9: study.labels[0].array == 5})
    panel = timeline.engine_panel
    panel.engine.setCurrentIndex(panel.engine.findData("lesionlocator"))
    panel.folds.setText("0")
    panel.tta.setChecked(True)
    n_before = len(_notifications())
    assert timeline.propagate(source=tps[0].name)
    qtbot.waitUntil(lambda: not timeline.busy, timeout=WORKER_TIMEOUT_MS)
    assert timeline.runner.last_state == "succeeded", timeline.runner.last_error
    assert len(calls) == 2  # baseline -> tp1, then tp1 -> tp2
    engine = calls[0][0]
    assert isinstance(engine, LesionLocatorEngine) and all(c[0] is engine for c in calls)
    assert (tuple(engine.settings.folds), engine.settings.tta, engine.settings.device) == ((0,), True, "cpu")
    for t in (1, 2):
        layer = timeline.session.labels_layer_for(tps[t], create=False)
        np.testing.assert_array_equal(np.asarray(layer.data) == 1, study.labels[t].array == 1)
        np.testing.assert_array_equal(layer.scale, tps[t].scale)
        np.testing.assert_array_equal(layer.translate, tps[t].translate)
    messages = [str(n.message) for n in _notifications()[n_before:]]
    for tp in tps[1:]:
        assert f"{tp.name}: lesion(s) [9] not found" in messages, messages
        assert f"{tp.name}: lesion 9: registration moved it outside the follow-up in every pass" in messages


def test_bad_folds_are_notifications(qtbot, ll_widget, study) -> None:
    """Unreadable folds are refused before any run; folds the checkpoint lacks fail with the folds it has."""
    viewer, widget, image = ll_widget
    pl = widget.prompt_layers()
    pl.add_point_world(_lesion_centre(study, 1))
    widget.engine_panel.folds.setText("zero")
    n_before = len(_notifications())
    widget.segment()
    assert not widget.runner.running
    messages = [str(n.message) for n in _notifications()[n_before:]]
    assert any("comma-separated integers" in m for m in messages), messages

    widget.engine_panel.folds.setText("0,3")
    n_before = len(_notifications())
    with qtbot.waitSignal(widget.runner.failed, timeout=WORKER_TIMEOUT_MS):
        widget.segment()
    _wait(qtbot, widget)
    messages = [str(n.message) for n in _notifications()[n_before:]]
    assert any("fold(s) [3] requested but not present" in m and "[0]" in m for m in messages), messages
    assert len(pl.pending()) == 1 and widget.segment_button.isEnabled()

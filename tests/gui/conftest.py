"""Fixtures for the GUI tests: a viewer on a 1600x1000 window with every dock open (see gui_helpers)."""

from __future__ import annotations

import pytest

napari = pytest.importorskip("napari")

from gui_helpers import DOCKS, PLUGIN, Mouse  # noqa: E402


@pytest.fixture(autouse=True)
def _private_recovery_folder(tmp_path_factory, monkeypatch):
    """Autosaves of GUI tests go to a folder of their own, never the user's recovery folder (where
    they would also be offered for restoring at the next widget opened)."""
    monkeypatch.setenv("LESIONLOCATOR_RECOVERY", str(tmp_path_factory.mktemp("recovery")))


@pytest.fixture
def study():
    from napari_lesionlocator.gui._sample_data import _cached_study

    return _cached_study()


@pytest.fixture
def docked(make_napari_viewer, qtbot, study):
    """The sample study (with hidden ground truth) on a 1600x1000 window with all three docks open."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample(PLUGIN, "synthetic_study_truth")
    docks, widgets = {}, {}
    for name in DOCKS:
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    qtbot.wait(200)
    return viewer, widgets, docks, Mouse(viewer, qtbot)



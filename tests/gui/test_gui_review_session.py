"""The review around the Lesion table, driven as a reader would (all docks open, 1600x1000):

* a lesion clicked at a follow-up (real mouse click after moving the slice slider) is a NEW lesion:
  the next id never used in the study, state "new", and that follow-up becomes PD;
* Disappeared hides the tracked mask but keeps it in the study (and the save); Ctrl+Z shows it again;
* the File menu's Save / Open review session and report entries; the restore-after-crash offer
  when the first widget of a viewer opens (not the Lesion table);
* a session whose images moved: the relocate dialog points to the new folder and restores;
* the Report button writes the HTML report.

xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -p no:xvfb tests/gui/test_gui_review_session.py
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pyqtgraph")

from gui_helpers import DOCKS, PLUGIN, Mouse, wait_idle  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402

pytestmark = pytest.mark.gui
TABLE = "Lesion table"


@pytest.fixture
def recovery(tmp_path, monkeypatch):
    root = tmp_path / "recovery"
    monkeypatch.setenv("LESIONLOCATOR_RECOVERY", str(root))
    return root


def _open(make_napari_viewer, qtbot, truth, *, drop=(7,), docks=(*DOCKS, TABLE), paths=None):
    """The sample study with the docks open; each timepoint's lesion layer holds the ground truth
    without the lesions in ``drop`` (as if the reader had drawn the others)."""
    from napari_lesionlocator.gui._session import session_for

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    if paths is None:
        viewer.open_sample(PLUGIN, "synthetic_study")
    else:
        for p in paths:
            viewer.open(str(p), plugin=PLUGIN)
    widgets = {}
    for name in docks:
        _, widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    session = session_for(viewer)
    for tp, lab in zip(session.timepoints(), truth.labels, strict=True):
        arr = lab.array.copy()
        arr[np.isin(arr, drop)] = 0
        session.labels_layer_for(tp).data = arr
    if TABLE in widgets:
        n = len(set(np.unique(np.concatenate([lab.array.ravel() for lab in truth.labels]))) - {0, *drop})
        qtbot.waitUntil(lambda: widgets[TABLE].table.rowCount() == n, timeout=10_000)
    return viewer, widgets, session


def _col(table, text: str) -> int:
    for c in range(table.table.columnCount()):
        if table.table.horizontalHeaderItem(c).text() == text:
            return c
    raise KeyError(text)


def _cell(table, lid: int, header: str) -> str:
    for r in range(table.table.rowCount()):
        if int(table.table.item(r, 0).text()) == lid:
            return table.table.item(r, _col(table, header)).text()
    raise KeyError(lid)


def _shows(table, lid: int, header: str, text: str) -> bool:
    """The cell reads ``text`` (False while the row is not there yet: the table refreshes ~50 ms later)."""
    try:
        return _cell(table, lid, header) == text
    except KeyError:
        return False


def _go_to(viewer, world) -> None:
    """Slider onto the slice just before a world point, then one step (as the reader scrolls)."""
    from napari_lesionlocator.gui._view import camera

    rng = viewer.dims.range[0]
    step = int(round((world[0] - rng.start) / rng.step))
    viewer.dims.set_current_step(0, step - 1)
    camera(viewer).center = tuple(world[1:])
    camera(viewer).zoom = 4.0
    viewer.dims.set_current_step(0, step)


def _wait_job(qtbot, table, timeout=120_000) -> None:
    qtbot.waitUntil(lambda: not table.runner.running, timeout=timeout)


def test_lesion_clicked_at_a_followup_is_new_and_makes_it_pd(make_napari_viewer, qtbot, study, recovery,
                                                             monkeypatch) -> None:
    from napari_lesionlocator.core.measurements import dice

    viewer, w, session = _open(make_napari_viewer, qtbot, study)
    prompts, timeline, table = w["Lesion prompts"], w["Timeline"], w[TABLE]
    tps = session.timepoints()
    table.model.flush()
    before = table.response.item(1, 5).text()
    assert "new lesion" not in before
    # the reader deletes lesion 6 (the highest id): its id is never handed out again
    monkeypatch.setattr("napari_lesionlocator.gui.prompt_widget.confirm", lambda *a, **k: True)
    prompts.lesion_spin.setValue(6)
    qtbot.mouseClick(prompts.delete_button, Qt.MouseButton.LeftButton)
    assert all(6 not in np.unique(np.asarray(session.labels_layer_for(tp).data)) for tp in tps)
    # at follow-up 1 the reader scrolls to lesion 7 (absent at the baseline) and clicks it
    session.set_active(tps[1])
    mouse = Mouse(viewer, qtbot)
    rec = next(r for r in study.lesions if r.id == 7)
    centre = np.asarray(rec.centre_world[1], dtype=float)
    _go_to(viewer, centre)
    mouse.key(Qt.Key.Key_P, Qt.KeyboardModifier.AltModifier)
    assert prompts.armed_mode() == "point"
    mouse.click([viewer.dims.point[0], centre[1], centre[2]])
    pl = session.prompt_layers(tps[1], create=False)
    assert len(pl.points.data) == 1
    lid = int(pl.points.features["lesion_id"].iloc[0])
    assert lid == 7  # 6 was used (and deleted): the next id never used
    mouse.key(Qt.Key.Key_S, Qt.KeyboardModifier.AltModifier)  # Alt+S: segment
    wait_idle(qtbot, prompts)
    assert prompts.runner.last_state == "succeeded", prompts.progress.status.text()
    got = np.asarray(session.labels_layer_for(tps[1]).data) == lid
    assert dice(got, study.labels[1].array == 7) > 0.6
    assert session.review(tps[1], lid) == ("new", None)
    timeline._refresh_table()
    header = [timeline.table.verticalHeaderItem(r).text() for r in range(timeline.table.rowCount())]
    assert timeline.table.item(header.index(f"lesion {lid}"), 1).text() == "\u25cf+"
    qtbot.waitUntil(lambda: _shows(table, lid, "T1 status", "new"), timeout=5000)
    table.model.flush()
    assert table.response.item(1, 4).text().startswith("PD")
    assert f"new lesion {lid}" in table.response.item(1, 5).text()
    assert session.study().observation(lid, tps[1].name).review == "new"


def test_disappeared_keeps_the_tracked_mask_and_undo_shows_it(make_napari_viewer, qtbot, study, recovery) -> None:
    from napari_lesionlocator.core.results import LesionMask, LesionResult
    from napari_lesionlocator.gui._layers import apply_lesion_masks

    viewer, w, session = _open(make_napari_viewer, qtbot, study)
    timeline, table = w["Timeline"], w[TABLE]
    panel = timeline.verify
    tps = session.timepoints()
    layer = session.labels_layer_for(tps[1])
    tracked = np.asarray(layer.data) == 3
    # a tracked result written the way the Timeline writes one
    apply_lesion_masks(layer, {3: tracked})
    session.record_results(tps[1], {3: LesionResult(3, LesionMask.from_full(session.geometry(tps[1]), tracked),
                                                    "ok", [], {"engine": "classical"})}, tracked=True)
    qtbot.waitUntil(lambda: _shows(table, 3, "T1 status", "unverified"), timeout=3000)
    session.set_active(tps[1])
    timeline.tabs.setCurrentWidget(panel)
    panel.refresh()
    panel.select_lesion(3)
    qtbot.mouseClick(panel.gone_button, Qt.MouseButton.LeftButton)
    assert session.review(tps[1], 3) == ("disappeared", None)
    assert not np.any(np.asarray(layer.data) == 3)  # hidden from the display
    qtbot.waitUntil(lambda: _shows(table, 3, "T1 status", "disappeared"), timeout=3000)
    obs = table.model.study.observation(3, tps[1].name)
    assert obs.review == "disappeared" and obs.provenance.source == "tracked" and obs.provenance.edits == 0
    np.testing.assert_array_equal(obs.mask.to_full(), tracked)  # ... but kept in the study
    saved = [o for o in table.model.study.snapshot_state()["observations"]
             if o["lesion_id"] == 3 and o["timepoint"] == tps[1].name]
    np.testing.assert_array_equal(saved[0]["mask"].to_full(), tracked)  # and in what a save writes
    # the session's own Study over the layers carries it the same way (and leaves the layer as it is)
    shown = np.asarray(layer.data).copy()
    core = session.study()
    obs = core.observation(3, tps[1].name)
    assert obs is not None and obs.review == "disappeared" and not obs.present
    assert obs.provenance.source == "tracked" and obs.provenance.tracked_from == tps[0].name
    np.testing.assert_array_equal(obs.mask.to_full(), tracked)
    np.testing.assert_array_equal(np.asarray(layer.data), shown)
    np.testing.assert_array_equal(core[tps[1].name].labels.array, shown)
    assert core.table_status(3, tps[1].name) == "disappeared"
    assert float(_cell(table, 3, "T1 mL") or 0) == 0.0
    # Ctrl+Z on the canvas: the verdict is undone and the lesion shown again, unedited
    viewer.layers.selection.active = tps[1]
    Mouse(viewer, qtbot).key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: session.review(tps[1], 3) == ("unverified", None), timeout=3000)
    np.testing.assert_array_equal(np.asarray(layer.data) == 3, tracked)
    qtbot.waitUntil(lambda: _shows(table, 3, "T1 status", "unverified"), timeout=3000)
    obs = table.model.study.observation(3, tps[1].name)
    assert obs.review == "unverified" and obs.provenance.edits == 0
    np.testing.assert_array_equal(obs.mask.to_full(), tracked)
    np.testing.assert_array_equal(table.model.study[tps[1].name].labels.array, np.asarray(layer.data))
    # the same with Ctrl+Z in the lesion layer itself (napari's own undo of that layer)
    panel.refresh()
    panel.select_lesion(3)
    qtbot.mouseClick(panel.gone_button, Qt.MouseButton.LeftButton)
    assert not np.any(np.asarray(layer.data) == 3)
    viewer.layers.selection.active = layer
    Mouse(viewer, qtbot).key(Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: session.review(tps[1], 3) == ("unverified", None), timeout=3000)
    np.testing.assert_array_equal(np.asarray(layer.data) == 3, tracked)


def _menu_action(viewer, text: str):
    from qtpy.QtWidgets import QMenu

    def walk(menu):
        for action in menu.actions():
            if action.menu() is not None:
                found = walk(action.menu())
                if found is not None:
                    return found
            elif action.text().replace("&", "").startswith(text):  # napari adds " (LesionLocator)"
                return action
        return None

    menu = viewer.window.file_menu
    menu.aboutToShow.emit()  # napari updates the entries' enabled state when the menu opens
    for sub in menu.findChildren(QMenu):
        sub.aboutToShow.emit()
    return walk(menu)


def test_file_menu_and_the_recovery_offer_at_the_first_widget(make_napari_viewer, qtbot, study, recovery,
                                                              tmp_path, monkeypatch) -> None:
    from napari.utils.notifications import notification_manager

    from napari_lesionlocator.gui._recovery import RECOVERY_MESSAGE
    from napari_lesionlocator.gui.lesion_table_widget import LesionTableWidget

    viewer, w, session = _open(make_napari_viewer, qtbot, study, docks=DOCKS)  # no Lesion table yet
    folder = tmp_path / "review"
    monkeypatch.setattr("napari_lesionlocator.gui.lesion_table_widget.QFileDialog.getExistingDirectory",
                        lambda *a, **k: str(folder))
    action = _menu_action(viewer, "Save review session\u2026")
    assert action is not None, "File > IO Utilities > Save review session... missing"
    assert _menu_action(viewer, "Open review session\u2026") is not None
    assert _menu_action(viewer, "Write response report\u2026") is not None
    action.trigger()
    tables = viewer.window._qt_window.findChildren(LesionTableWidget)
    assert len(tables) == 1  # the entry opened the Lesion table dock and saved through it
    table = tables[0]
    qtbot.waitUntil(lambda: (folder / "session.json").is_file() and not table.runner.running, timeout=60_000)
    doc = json.loads((folder / "session.json").read_text())
    assert sorted(le["id"] for le in doc["lesions"]) == [1, 2, 3, 4, 5, 6]
    # an autosave is left behind as by a crash; a new napari opens the Timeline first: offered there
    assert table.autosave()
    _wait_job(qtbot, table)
    sid = table.model.study.session_id
    viewer.close()
    viewer2 = make_napari_viewer(show=True)
    n = len(notification_manager.records)
    viewer2.window.add_plugin_dock_widget(PLUGIN, "Timeline")
    qtbot.waitUntil(lambda: any(RECOVERY_MESSAGE in str(r.message) for r in notification_manager.records[n:]),
                    timeout=5000)
    note = next(r for r in notification_manager.records[n:] if RECOVERY_MESSAGE in str(r.message))
    assert "6 lesion(s)" in str(note.message)
    restore = dict(note.actions)["Restore"]
    restore(None)  # the notification's Restore button
    table2 = viewer2.window._qt_window.findChildren(LesionTableWidget)[0]
    _wait_job(qtbot, table2)
    qtbot.waitUntil(lambda: table2.table.rowCount() == 6, timeout=20_000)
    assert table2.model.study.session_id == sid
    assert len([la for la in viewer2.layers if la.name.endswith(" lesions")]) == 3
    # File > Open review session... restores the saved folder (asking before replacing the scans)
    monkeypatch.setattr("qtpy.QtWidgets.QMessageBox.question",
                        lambda *a, **k: __import__("qtpy.QtWidgets").QtWidgets.QMessageBox.StandardButton.Yes)
    first = table2.last_restored
    _menu_action(viewer2, "Open review session\u2026").trigger()
    qtbot.waitUntil(lambda: table2.last_restored is not first, timeout=30_000)
    assert table2.model.study.session_folder == folder


def test_relocate_dialog_points_a_moved_session_to_its_images(make_napari_viewer, qtbot, study, recovery,
                                                              tmp_path, monkeypatch) -> None:
    from napari_lesionlocator.io.images import write_image
    from napari_lesionlocator.io.session import read_session_info

    scans = tmp_path / "scans"
    scans.mkdir()
    paths = []
    for im in study.images:
        p = scans / f"{im.name}.nii.gz"
        write_image(im, p)
        paths.append(p)
    viewer, w, session = _open(make_napari_viewer, qtbot, study, paths=paths)
    table = w[TABLE]
    folder = tmp_path / "review"
    assert table.save_session(folder)
    _wait_job(qtbot, table)
    saved = {name: table.model.study.mask(lid, name).to_full() for name in table.model.study.names
             for lid in (1, 3) if table.model.study.mask(lid, name) is not None}
    moved = tmp_path / "archive" / "scans"
    moved.parent.mkdir()
    shutil.move(str(scans), str(moved))
    monkeypatch.setattr("qtpy.QtWidgets.QMessageBox.question",
                        lambda *a, **k: __import__("qtpy.QtWidgets").QtWidgets.QMessageBox.StandardButton.Yes)
    monkeypatch.setattr("napari_lesionlocator.gui.lesion_table_widget.QFileDialog.getExistingDirectory",
                        lambda *a, **k: str(folder))
    qtbot.mouseClick(table.restore_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: table.relocate_dialog is not None and table.relocate_dialog.isVisible(), timeout=60_000)
    dialog = table.relocate_dialog
    assert dialog.table.rowCount() == 3 and not dialog.restore_button.isEnabled()
    assert "not found" in dialog.status.text() and study.images[0].name in dialog.status.text()
    monkeypatch.setattr("napari_lesionlocator.gui._relocate.QFileDialog.getExistingDirectory",
                        lambda *a, **k: str(moved))
    qtbot.mouseClick(dialog.folder_button, Qt.MouseButton.LeftButton)
    assert dialog.all_found and dialog.restore_button.isEnabled()
    assert all(str(moved) in dialog.table.item(r, 2).text() for r in range(3))
    qtbot.mouseClick(dialog.restore_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: table.last_restored is not None or "Session:" in table.status.text(), timeout=60_000)
    assert table.last_restored is not None, table.status.text()
    st = table.model.study
    for name, arr in saved.items():
        lid = 1 if np.array_equal(arr, table.model.study.mask(1, name).to_full()) else 3
        np.testing.assert_array_equal(st.mask(lid, name).to_full(), arr)
    info = read_session_info(folder)  # re-pointed: the session now names the new files
    assert all(str(moved) in tp["image"]["path"] for tp in info.timepoints)


def test_report_button_writes_the_html_report(make_napari_viewer, qtbot, study, recovery, tmp_path,
                                              monkeypatch) -> None:
    viewer, w, session = _open(make_napari_viewer, qtbot, study, drop=())
    table = w[TABLE]
    out = tmp_path / "report.html"
    monkeypatch.setattr("napari_lesionlocator.gui.lesion_table_widget.QFileDialog.getSaveFileName",
                        lambda *a, **k: (str(out), "HTML page (*.html)"))
    qtbot.mouseClick(table.report_button, Qt.MouseButton.LeftButton)
    _wait_job(qtbot, table)
    assert table.last_report == out, table.status.text()
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert "data:image/png;base64," in html  # self-contained: plot and key slices embedded
    for tp in session.timepoints():
        assert tp.name in html
    assert "new lesion 7" in html and "PD" in html
    assert html.count("<img") >= 1 + 7

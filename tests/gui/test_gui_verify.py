"""Verified tracking in the Timeline dock's Verify panel, end to end on the sample study (all docks open).

One propagation (tens of seconds on a shared CPU) serves the whole flow: every tracked lesion is
unverified with its proposed point, accept, disappeared, a real mouse drag of a proposed point
(re-segments with the same id), re-propagation from follow-up 1 (only follow-up 2 changes), and the
engine's candidate for the sample's new lesion 7 accepted at follow-up 1. Run under a display:
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -p no:xvfb tests/gui/test_gui_verify.py
Set LESIONLOCATOR_SCREENSHOTS=1 to also write docs/screenshots/14_verify.png.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from napari_lesionlocator.core.measurements import dice

napari = pytest.importorskip("napari")

from gui_helpers import wait_idle  # noqa: E402

pytestmark = pytest.mark.gui
TRACK_TIMEOUT_MS = 300_000


def _cell(timeline, lesion_id: int, col: int) -> str:
    for row in range(timeline.table.rowCount()):
        if timeline.table.verticalHeaderItem(row).text() == f"lesion {lesion_id}":
            return timeline.table.item(row, col).text()
    raise KeyError(lesion_id)


def _labels(session, tp) -> np.ndarray:
    return np.asarray(session.labels_layer_for(tp, create=False).data).copy()


def _show(qtbot, timeline, tp) -> None:
    timeline.session.set_active(tp)
    qtbot.wait(50)
    timeline.verify.refresh()


def test_verify_tracked_lesions_and_candidates(qtbot, docked, study) -> None:
    from qtpy.QtCore import Qt

    from napari_lesionlocator.gui._layers import apply_lesion_masks
    from napari_lesionlocator.gui._view import camera, centre_view

    viewer, widgets, _, mouse = docked
    timeline = widgets["Timeline"]
    panel, session = timeline.verify, timeline.session
    tps = [viewer.layers[im.name] for im in study.images]
    baseline = session.labels_layer_for(tps[0])
    apply_lesion_masks(baseline, {1: study.labels[0].array == 1, 9: study.labels[0].array == 5})
    assert timeline.propagate(source=tps[0].name)
    wait_idle(qtbot, timeline, TRACK_TIMEOUT_MS)
    assert timeline.runner.last_state == "succeeded", timeline.progress.status.text()

    # ---- every tracked lesion at every follow-up is unverified, its proposed point inside its mask
    for t in (1, 2):
        assert session.reviews(tps[t]) == {1: ("unverified", None), 9: ("unverified", None)}
    assert session.review(tps[0], 1) is None  # the baseline was drawn by the reader, not tracked
    _show(qtbot, timeline, tps[1])
    proposed = panel.points_layer(tps[1], "proposed", create=False)
    assert proposed is not None and len(proposed.data) == 2
    lab1 = session.labels_layer_for(tps[1], create=False)
    for lid, point in zip(proposed.features["lesion"], proposed.data, strict=True):
        idx = tuple(np.rint(lab1.world_to_data(point)).astype(int))
        assert int(np.asarray(lab1.data)[idx]) == lid
    timeline._refresh_table()
    assert _cell(timeline, 1, 1) == "\u25cf?" and _cell(timeline, 9, 2) == "\u25cf?"
    assert "2 of 2 lesion(s) unverified" in panel.title.text()

    # ---- accept lesion 1 at follow-up 1 (button click)
    panel.select_lesion(1)
    qtbot.mouseClick(panel.accept_button, Qt.MouseButton.LeftButton)
    assert session.review(tps[1], 1) == ("accepted", None)
    assert session.review(tps[2], 1) == ("unverified", None)
    timeline._refresh_table()
    assert _cell(timeline, 1, 1) == "\u25cf\u2713"
    assert session.study().observation(1, tps[1].name).review == "accepted"

    # ---- mark lesion 9 disappeared at follow-up 2: erased there, state recorded, shown
    _show(qtbot, timeline, tps[2])
    panel.select_lesion(9)
    qtbot.mouseClick(panel.gone_button, Qt.MouseButton.LeftButton)
    assert session.review(tps[2], 9) == ("disappeared", None)
    assert not np.any(_labels(session, tps[2]) == 9)
    timeline._refresh_table()
    assert _cell(timeline, 9, 2) == "\u2715\u2713"

    # ---- move lesion 9's proposed point at follow-up 1 with a real mouse drag: re-segmented, same id
    _show(qtbot, timeline, tps[1])
    proposed = panel.points_layer(tps[1], "proposed", create=False)
    i9 = list(proposed.features["lesion"]).index(9)
    start = np.asarray(proposed.data[i9], dtype=float)
    target = start + np.array([0.0, 1.5, -1.5])
    viewer.dims.set_point(0, float(start[0]))  # the slice slider to the point's slice
    centre_view(viewer, start)
    camera(viewer).zoom = 8.0
    viewer.layers.selection.active = proposed
    proposed.mode = "select"
    qtbot.wait(100)
    old9, tp2_before, tp0_before = session.result(tps[1], 9), _labels(session, tps[2]), _labels(session, tps[0])
    mouse.drag(start, target)
    qtbot.waitUntil(lambda: session.result(tps[1], 9) is not old9 and not panel.busy, timeout=120_000)
    assert panel.runner.last_state == "succeeded", panel.status.text()
    assert session.review(tps[1], 9) == ("accepted", None)
    after = _labels(session, tps[1])
    idx = tuple(np.rint(lab1.world_to_data(target)).astype(int))
    assert after[idx] == 9  # the lesion grew from the moved point, with the same id
    assert set(np.unique(after)) - {0} == {1, 9}
    truth9 = study.labels[1].array == 5
    assert dice(after == 9, truth9) > 0.5
    np.testing.assert_array_equal(_labels(session, tps[2]), tp2_before)  # nothing later changed yet

    # ---- re-propagate from follow-up 1: only follow-up 2 changes. There a verdict stands where the
    # re-tracked mask is the one judged (9: disappeared, mask kept hidden), and a lesion whose mask
    # differs from what the reader judged is unverified again (1: edited by hand, then accepted).
    _show(qtbot, timeline, tps[2])
    lab2 = session.labels_layer_for(tps[2], create=False)
    voxel = np.argwhere(_labels(session, tps[2]) == 1)[0]
    lab2.brush_size = 3
    lab2.paint(tuple(int(v) for v in voxel), 0)  # the reader's eraser on lesion 1 (napari's own paint)
    judged1 = _labels(session, tps[2]) == 1
    assert judged1.sum() < (tp2_before == 1).sum()
    panel.select_lesion(1)
    qtbot.mouseClick(panel.accept_button, Qt.MouseButton.LeftButton)
    assert session.review(tps[2], 1) == ("accepted", None)
    kept9 = session.result(tps[2], 9).mask.to_full()  # the tracked mask hidden by "disappeared"
    tp2_judged = _labels(session, tps[2])
    _show(qtbot, timeline, tps[1])
    tp1_before = _labels(session, tps[1])
    qtbot.mouseClick(panel.repropagate_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, timeline, TRACK_TIMEOUT_MS)
    assert timeline.runner.last_state == "succeeded", timeline.progress.status.text()
    np.testing.assert_array_equal(_labels(session, tps[0]), tp0_before)
    np.testing.assert_array_equal(_labels(session, tps[1]), tp1_before)
    tp2_after = _labels(session, tps[2])
    assert not np.array_equal(tp2_after, tp2_judged)
    new1 = session.result(tps[2], 1).mask.to_full()
    np.testing.assert_array_equal(tp2_after == 1, new1)
    assert not np.array_equal(new1, judged1)
    assert session.review(tps[2], 1) == ("unverified", None)  # changed from what was accepted
    new9 = session.result(tps[2], 9).mask.to_full()
    assert dice(new9, study.labels[2].array == 5) > 0.5  # tracked on from the corrected mask
    if np.array_equal(new9, kept9):  # the same proposal: the reader's "disappeared" stands, still hidden
        assert session.review(tps[2], 9) == ("disappeared", None) and not (tp2_after == 9).any()
    else:
        assert session.review(tps[2], 9) == ("unverified", None)
        np.testing.assert_array_equal(tp2_after == 9, new9)
    assert session.reviews(tps[1]) == {1: ("accepted", None), 9: ("accepted", None)}

    # ---- the engine's candidate for the new lesion 7 at follow-up 1: accept -> new lesion, next id
    _show(qtbot, timeline, tps[1])
    centre7 = np.asarray(next(r for r in study.lesions if r.id == 7).centre_world[1], dtype=float)
    cands = session.candidates(tps[1])
    assert cands and panel.candidate_list.count() == len(cands)
    best = min(cands, key=lambda c: np.linalg.norm(np.asarray(c["centroid_mm"]) - centre7))
    assert np.linalg.norm(np.asarray(best["centroid_mm"]) - centre7) < 10.0
    assert len(panel.points_layer(tps[1], "candidates", create=False).data) == len(cands)
    panel.candidate_list.setCurrentRow([c["index"] for c in cands].index(best["index"]))
    qtbot.mouseClick(panel.accept_candidate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.busy and session.review(tps[1], 10) is not None, timeout=120_000)
    assert session.review(tps[1], 10) == ("new", None)  # 10: the next id never used in this study
    new = _labels(session, tps[1]) == 10
    assert dice(new, study.labels[1].array == 7) > 0.5
    assert best["index"] not in [c["index"] for c in session.candidates(tps[1])]
    assert session.study().observation(10, tps[1].name).review == "new"
    timeline._refresh_table()
    assert _cell(timeline, 10, 1) == "\u25cf+"
    # the other candidate(s): dismiss one
    if panel.candidate_list.count():
        n = len(session.candidates(tps[1]))
        qtbot.mouseClick(panel.dismiss_button, Qt.MouseButton.LeftButton)
        assert len(session.candidates(tps[1])) == n - 1

    # ---- a verification in progress, looked at in the README
    _show(qtbot, timeline, tps[2])
    timeline.tabs.setCurrentWidget(panel)
    panel.refresh()
    n_open = sum(1 for t in tps[1:] for st, _ in session.reviews(t).values() if st == "unverified")
    assert n_open >= 1
    assert timeline.tabs.tabText(timeline.tabs.indexOf(panel)) == f"Verify ({n_open} unverified)"
    proposed = panel.points_layer(tps[2], "proposed", create=False)
    viewer.layers.selection.active = proposed
    panel.select_lesion(1)
    point = proposed.data[list(proposed.features["lesion"]).index(1)]
    viewer.dims.set_point(0, float(point[0]))
    centre_view(viewer, point)
    camera(viewer).zoom = 5.0
    qtbot.wait(300)
    if os.environ.get("LESIONLOCATOR_SCREENSHOTS"):
        out = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "14_verify.png"
        viewer.screenshot(str(out), canvas_only=False, flash=False)
        assert out.stat().st_size > 10_000

    # ---- merged: lesion 1 into lesion 9 at follow-up 2 (pick list), erased there, shown, in the Study
    _show(qtbot, timeline, tps[2])
    panel.select_lesion(1)
    panel.merge_combo.setCurrentIndex(panel.merge_combo.findData(9))
    qtbot.mouseClick(panel.merge_button, Qt.MouseButton.LeftButton)
    assert session.review(tps[2], 1) == ("merged", 9)
    assert not np.any(_labels(session, tps[2]) == 1)
    timeline._refresh_table()
    assert _cell(timeline, 1, 2) == "\u21929"
    obs = session.study().observation(1, tps[2].name)
    assert obs.review == "merged" and obs.merged_into == 9

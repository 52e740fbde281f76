"""The QA dock in napari: an IDC-style review of a real SEG (dcmqi) with scores picked in the table,
an edit painted into the Labels layer, saved and resumed, exported as qa-results.csv + corrected SEG.
Run under xvfb-run."""

from __future__ import annotations

import csv

import numpy as np
import pytest

napari = pytest.importorskip("napari")

pytestmark = pytest.mark.gui
PLUGIN = "napari-lesionlocator"


def test_qa_dock_review_resume_export(make_napari_viewer, real_data_dir, tmp_path) -> None:
    from napari_lesionlocator.io.dicom_seg import read_dicom_seg
    from napari_lesionlocator.io.qa import LIKERT, segment_column

    base = real_data_dir / "dcmqi_seg"
    seg = base / "seg" / "partial_overlaps.dcm"
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate segmentations")
    widget.reviewer.setText("rad7")
    assert widget.open_seg(str(seg))
    assert widget.table.rowCount() == 5
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    for lid, score in ((1, 5), (2, 3), (3, 4), (4, 4), (5, 5)):
        combo = widget.score_combo(lid)
        combo.setCurrentIndex(combo.findData(score))
    widget.table.setCurrentCell(1, 1)
    assert widget.definition.text() == f"3: {LIKERT[3]}"
    widget.table.item(1, 2).setText("clip the top")
    # the reader erases ORANGE (id 2) on slice 0 and paints it on a square of slice 2
    data = np.asarray(widget.labels_layer.data).copy()
    erased = data[0] == 2
    data[0][erased] = 0
    data[2, 10:20, 10:20] = 2
    widget.labels_layer.data = data
    widget.save(str(tmp_path / "review"))
    # a new dock resumes the saved review
    viewer2 = make_napari_viewer()
    _, again = viewer2.window.add_plugin_dock_widget(PLUGIN, "Rate segmentations")
    assert again.resume(str(tmp_path / "review"))
    assert again.score_combo(2).currentData() == 3 and again.table.item(1, 2).text() == "clip the top"
    assert np.array_equal(np.asarray(again.labels_layer.data) == 2, data == 2)
    csv_path, corrected = again.export(str(tmp_path / "out"))
    with open(csv_path, newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["Reviewer"] == "rad7" and row[segment_column("ORANGE")] == "3"
    assert row["CorrectedSegmentation"] == corrected.name
    back = read_dicom_seg(corrected, base / "ct-3slice")
    ai = read_dicom_seg(seg, base / "ct-3slice")
    orange = back.lesions[2].mask.to_full()
    assert not orange[0][erased].any() and orange[2, 10:20, 10:20].all()
    # voxels the AI showed as another segment on top of ORANGE stay in ORANGE's own mask
    np.testing.assert_array_equal(orange[1], ai.lesions[2].mask.to_full()[1])
    np.testing.assert_array_equal(back.lesions[1].mask.to_full(), ai.lesions[1].mask.to_full())

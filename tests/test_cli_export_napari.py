"""The Export dock in napari: a DICOM series opened with File > Open, lesions painted into its Labels
layer, exported with progress to DICOM-SEG (referencing the opened series) + SR + NIfTI, and refused
without writing anything when the files exist. Run under xvfb-run."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

pytestmark = pytest.mark.gui
PLUGIN = "napari-lesionlocator"


def test_export_dock_writes_seg_on_the_opened_series(make_napari_viewer, qtbot, tmp_path) -> None:
    import highdicom as hd
    from qtpy.QtCore import Qt

    from napari_lesionlocator.core.geometry import Geometry
    from napari_lesionlocator.core.image import Image
    from napari_lesionlocator.io.dicom import write_dicom_series
    from napari_lesionlocator.io.dicom_seg import read_dicom_seg
    from napari_lesionlocator.io.dicom_sr import read_dicom_sr

    g = Geometry((12, 40, 44), (2.5, 0.7, 0.8), (-30.0, 5.0, 12.0))
    img = Image(np.random.default_rng(0).normal(0, 30, g.shape).astype(np.float32).round(), g, "ct")
    write_dicom_series(img, tmp_path / "ct", acquisition_date="2022-02-02", patient_id="PX")
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "ct"), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    labels = widget.session.labels_layer_for(image)
    arr = np.zeros(g.shape, np.uint8)
    arr[3:7, 10:20, 12:22] = 1
    arr[6:9, 25:32, 5:12] = 3
    labels.data = arr
    widget.folder.setText(str(tmp_path / "out"))
    for fmt, box in widget.checks.items():
        box.setChecked(fmt in ("nifti", "dicom-seg", "dicom-sr"))
    qtbot.mouseClick(widget.export_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    assert "Wrote" in widget.status.text(), widget.status.text()
    assert widget.progress.value() == widget.progress.maximum()
    (seg_path,) = (tmp_path / "out" / "dicom").glob("*_seg.dcm")
    seg = hd.seg.segread(seg_path)
    assert seg.PatientID == "PX" and not list((tmp_path / "out" / "dicom").glob("*_ct"))  # the opened series
    imp = read_dicom_seg(seg_path, tmp_path / "ct")
    np.testing.assert_array_equal(imp.labels.array, arr)
    (sr_path,) = (tmp_path / "out" / "dicom").glob("*_sr.dcm")
    assert {les.tracking_id for les in read_dicom_sr(sr_path).lesions} == {"lesion-1", "lesion-3"}
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    qtbot.mouseClick(widget.export_button, Qt.LeftButton)  # again: the files exist, nothing is written
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    assert "already exist" in widget.status.text()
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}

"""Screenshots of the clinical interchange features (docs/screenshots/1x_*.png), under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python resources/make_interchange_screenshots.py

10: a dcmqi DICOM-SEG (5 overlapping segments) opened with File > Open on its CT;
11: the Lung-PET-CT-Dx XML boxes opened on their DICOM series, the 3D box prompt segmented;
12: the synthetic sample study exported to DICOM-SEG and re-opened (baseline);
13: the "Rate segmentations" dock reviewing the dcmqi SEG (IDC QA workflow).
Needs ../shared/data/real (or LESIONLOCATOR_SHARED).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-lesionlocator"
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
REAL = Path(os.environ.get("LESIONLOCATOR_SHARED", ROOT.parent / "shared")) / "data" / "real"


def settle(seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def shot(viewer, name: str) -> None:
    settle()
    viewer.screenshot(str(OUT / name), canvas_only=False, flash=False)
    print(OUT / name)


def seg_on_ct() -> None:
    viewer = napari.Viewer(title="DICOM-SEG on its CT")
    viewer.window.resize(1400, 900)
    viewer.open(str(REAL / "dcmqi_seg" / "seg" / "partial_overlaps.dcm"), plugin=PLUGIN)
    viewer.dims.set_point(0, viewer.layers[0].data_to_world([1, 0, 0])[0])
    viewer.layers[0].contrast_limits = (-160, 240)
    shot(viewer, "10_dicom_seg_open.png")
    viewer.close()


def voc_boxes() -> None:
    a0002 = (REAL / "lung_pet_ct_dx" / "Lung-PET-CT-Dx" / "Lung_Dx-A0002"
             / "04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834")
    viewer = napari.Viewer(title="Lung-PET-CT-Dx boxes")
    viewer.window.resize(1600, 1000)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion prompts")
    (image,) = viewer.open(str(a0002 / "3.000000-ThoraxRoutine  8.0.0  B40f-10983"), plugin=PLUGIN)
    widget.image_combo.set_layer(image)
    viewer.open(str(REAL / "lung_pet_ct_dx" / "Annotation" / "A0002"), plugin=PLUGIN)
    widget.segment()
    t0 = time.time()
    while widget.runner.running and time.time() - t0 < 300:
        settle(0.2)
    viewer.dims.set_point(0, image.data_to_world([16, 0, 0])[0])
    shot(viewer, "11_voc_boxes_segmented.png")
    viewer.close()


def sample_export() -> None:
    from napari_lesionlocator.cli.export import export_study
    from napari_lesionlocator.core.results import results_from_label_map
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    study = make_synthetic_study(seed=0, size="small")
    tmp = Path(tempfile.mkdtemp())
    export_study(study.images, [results_from_label_map(lab) for lab in study.labels], tmp,
                 formats=["dicom-seg", "dicom-sr"], engine="classical")
    viewer = napari.Viewer(title="Sample study: DICOM-SEG re-opened")
    viewer.window.resize(1400, 900)
    layers = viewer.open(str(tmp / "dicom" / f"{study.images[0].name}_seg.dcm"), plugin=PLUGIN)
    truth = study.labels[0].array
    z = int(np.argmax((truth == 1).sum(axis=(1, 2))))
    viewer.dims.set_point(0, layers[0].data_to_world([z, 0, 0])[0])
    shot(viewer, "12_sample_seg_reopened.png")
    viewer.close()


def qa_dock() -> None:
    viewer = napari.Viewer(title="Rate segmentations")
    viewer.window.resize(1600, 1000)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate segmentations")
    widget.reviewer.setText("rad1")
    widget.open_seg(str(REAL / "dcmqi_seg" / "seg" / "partial_overlaps.dcm"))
    for lid, score in ((1, 5), (2, 3), (3, 4)):
        combo = widget.score_combo(lid)
        combo.setCurrentIndex(combo.findData(score))
    widget.table.item(1, 2).setText("too wide at the top")
    widget.table.setCurrentCell(1, 1)
    viewer.layers[0].contrast_limits = (-160, 240)
    viewer.dims.set_point(0, viewer.layers[0].data_to_world([1, 0, 0])[0])
    shot(viewer, "13_qa_rating_dock.png")
    viewer.close()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    if not REAL.is_dir():
        print(f"{REAL} not found (set LESIONLOCATOR_SHARED)", file=sys.stderr)
        return 1
    seg_on_ct()
    voc_boxes()
    sample_export()
    qa_dock()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

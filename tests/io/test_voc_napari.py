"""Lung-PET-CT-Dx boxes in napari: File > Open on the XML folder after the DICOM series gives a Shapes
layer of the radiologists' rectangles and a pending 3D box prompt per lesion, which segments from the
prompt widget. Run under xvfb-run."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

pytestmark = pytest.mark.gui
PLUGIN = "napari-lesionlocator"
A0002 = "Lung-PET-CT-Dx/Lung_Dx-A0002/04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834"


def test_open_xml_folder_gives_shapes_and_box_prompts_that_segment(make_napari_viewer, real_data_dir, qtbot) -> None:
    base = real_data_dir / "lung_pet_ct_dx"
    series = base / A0002 / "3.000000-ThoraxRoutine  8.0.0  B40f-10983"
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion prompts")
    (image,) = viewer.open(str(series), plugin=PLUGIN)
    widget.image_combo.set_layer(image)
    (shapes,) = viewer.open(str(base / "Annotation" / "A0002"), plugin=PLUGIN)
    assert type(shapes).__name__ == "Shapes"
    assert len(shapes.data) == 10  # one rectangle per annotated slice of this series
    assert set(shapes.features["lesion_id"]) == {1}
    assert shapes.metadata["voc_boxes"] == [[12, 22, 253, 357, 108, 235]]
    assert len(shapes.metadata["unmatched"]) == 8  # the B70f series' XML files, listed
    # the rectangles sit on the CT in world mm: first corner of the first box at its voxel edge
    geom_z = image.data_to_world([12, 0, 0])[0]
    assert min(float(v[0, 0]) for v in shapes.data) == pytest.approx(geom_z)
    # each lesion's 3D box is a pending prompt of the prompt widget, ready to segment
    pl = widget.prompt_layers()
    (prompt,) = [p for p, _ in pl.pending()]
    assert prompt.box == (12, 22, 253, 357, 108, 235)
    widget.segment()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=120_000)
    labels = widget.session.labels_layer_for(image, create=False)
    assert labels is not None
    mask = np.asarray(labels.data) == prompt.lesion_id
    z, y, x = np.nonzero(mask)
    assert mask.sum() > 10000
    assert z.min() >= 12 and z.max() < 22 and y.min() >= 253 and y.max() < 357 and x.min() >= 108 and x.max() < 235

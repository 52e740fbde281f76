"""A napari Labels layer kept in step with the study: paint events (and undo, which sends none)
update the lesions' own masks, and the study's rendering goes back into the layer.

Model only (napari layers work without a viewer or Qt)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image
from napari_lesionlocator.core.results import LesionMask
from napari_lesionlocator.core.study import Study, Timepoint

napari_layers = pytest.importorskip("napari.layers")

G = Geometry((8, 30, 30), (2.0, 1.0, 1.0))


def _box(z, y, x) -> LesionMask:
    full = np.zeros(G.shape, bool)
    full[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return LesionMask.from_full(G, full)


def test_paint_fill_erase_and_undo_follow_the_layer() -> None:
    study = Study([Timepoint(Image(np.zeros(G.shape, np.float32), G, name="t0"))])
    study.set_result(1, "t0", _box((2, 6), (5, 15), (5, 15)))
    study.set_result(2, "t0", _box((2, 6), (12, 22), (12, 22)))  # overlaps lesion 1 (3 x 3 x 4 voxels)
    layer = napari_layers.Labels(study["t0"].labels.array.copy())  # the layer's own array

    def on_paint(event) -> None:
        res = study.apply_napari_paint("t0", event.value, user="reader")
        if res.region is not None:  # the study's rendering back into the layer (hidden overlaps, new ids)
            layer.data[res.region] = study["t0"].labels.array[res.region]
        results.append(res)

    results = []
    layer.events.paint.connect(on_paint)
    layer.brush_size = 3
    layer.paint((3, 25, 25), 1)  # a brush dab away from both: lesion 1 grows
    grown = int((layer.data[3, 22:29, 22:29] == 1).sum())
    assert results[-1].changed == [1] and grown > 0 and study.mask(1, "t0").voxels == 400 + grown
    layer.paint((3, 13, 13), 0)  # the eraser where lesion 2 (shown) hides lesion 1: both lose the voxels
    assert results[-1].changed == [1, 2]
    assert study.mask(2, "t0").voxels < 400 and study.mask(1, "t0").voxels < 400 + grown
    np.testing.assert_array_equal(layer.data, study.render_labels("t0").array)
    layer.fill((5, 20, 20), 3)  # flood-fill lesion 2's visible part at z=5 with a new id
    assert results[-1].added == [3] and study.mask(3, "t0").voxels > 0
    np.testing.assert_array_equal(layer.data, study.render_labels("t0").array)
    layer.undo()  # napari's undo writes the old values back and sends no paint event: sync the whole array
    res = study.sync_label_array("t0", layer.data, user="reader")
    assert res.changed == [2, 3] and study.mask(3, "t0").is_empty
    np.testing.assert_array_equal(layer.data, study.render_labels("t0").array)
    assert study.observation(1, "t0").provenance.edits == 2 and study.observation(2, "t0").provenance.edits == 3

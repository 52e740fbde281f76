"""Per-lesion masks: crops kept whole, composition (later wins), overlap report."""

import numpy as np
import pytest

from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import LabelMap
from napari_lesionlocator.core.results import (
    LesionMask,
    LesionResult,
    compose_label_map,
    overlaps,
    results_from_label_map,
)

GEOM = Geometry((10, 12, 14), (2.0, 1.0, 0.5))


def _ball(center, r):
    zz, yy, xx = np.indices(GEOM.shape)
    return (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= r * r


def test_from_full_round_trip_and_volume():
    full = _ball((5, 6, 7), 3)
    m = LesionMask.from_full(GEOM, full)
    assert m.array.shape[0] < GEOM.shape[0]
    np.testing.assert_array_equal(m.to_full(), full)
    assert m.voxels == int(full.sum())
    assert m.volume_ml == pytest.approx(full.sum() * 1.0 / 1000)
    np.testing.assert_allclose(m.centroid_index(), np.argwhere(full).mean(axis=0))


def test_empty_mask_and_status():
    m = LesionMask.from_full(GEOM, np.zeros(GEOM.shape, bool))
    assert m.is_empty and m.voxels == 0
    r = LesionResult(3, m, "ok")
    assert r.status == "empty"
    assert r.summary() == {"id": 3, "status": "empty", "voxels": 0, "volume_ml": 0.0, "messages": []}
    with pytest.raises(ValueError, match="unknown lesion status"):
        LesionResult(3, m, "fine")


def test_crop_outside_grid_refused():
    with pytest.raises(ValueError, match="outside the grid"):
        LesionMask(GEOM, (8, 0, 0), np.ones((3, 2, 2), bool))


def test_from_crop_shrinks_margins():
    crop = np.zeros((5, 5, 5), bool)
    crop[2, 1:3, 4] = True
    m = LesionMask.from_crop(GEOM, (1, 2, 3), crop)
    assert m.start == (3, 3, 7) and m.array.shape == (1, 2, 1)


def test_overlap_kept_in_each_mask_and_reported():
    a = LesionResult(1, LesionMask.from_full(GEOM, _ball((5, 6, 5), 3)))
    b = LesionResult(2, LesionMask.from_full(GEOM, _ball((5, 6, 8), 3)))
    shared = int((_ball((5, 6, 5), 3) & _ball((5, 6, 8), 3)).sum())
    assert shared > 0
    assert overlaps([a, b]) == [(1, 2, shared)]
    lm = compose_label_map([a, b], GEOM, "x")
    # display product: later lesion wins; each lesion's own mask stays whole
    assert int((lm.array == 2).sum()) == b.voxels
    assert int((lm.array == 1).sum()) == a.voxels - shared
    np.testing.assert_array_equal(a.mask.to_full(), _ball((5, 6, 5), 3))


def test_compose_on_base_replaces_own_id_only():
    base = LabelMap(np.zeros(GEOM.shape, np.uint16), GEOM)
    base.array[0, 0, 0] = 1
    base.array[9, 11, 13] = 4
    new1 = LesionResult(1, LesionMask.from_full(GEOM, _ball((5, 6, 7), 2)))
    lm = compose_label_map([new1], GEOM, base=base)
    assert lm.array[0, 0, 0] == 0 and lm.array[9, 11, 13] == 4 and lm.array[5, 6, 7] == 1
    assert base.array[0, 0, 0] == 1  # base untouched


def test_results_from_label_map():
    arr = np.zeros(GEOM.shape, np.uint16)
    arr[1:3, 1:3, 1:3] = 2
    arr[6, 6, 6] = 7
    res = results_from_label_map(LabelMap(arr, GEOM))
    assert sorted(res) == [2, 7]
    assert res[2].voxels == 8 and res[7].mask.start == (6, 6, 6)
    assert list(results_from_label_map(LabelMap(arr, GEOM), ids=[7])) == [7]

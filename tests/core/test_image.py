"""Image and LabelMap containers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap

G = Geometry((3, 4, 5), (2.0, 1.0, 1.0))


def test_shape_and_type_checks() -> None:
    with pytest.raises(ValueError, match="3D"):
        Image(np.zeros((4, 5)), G)
    with pytest.raises(ValueError, match="geometry shape"):
        Image(np.zeros((3, 4, 6)), G)
    with pytest.raises(ValueError, match="integers"):
        LabelMap(np.zeros(G.shape, np.float32), G)
    img = Image(np.zeros(G.shape, np.float32), G, name="a")
    assert img.with_array(np.ones(G.shape, np.float32), name="b").name == "b"
    assert LabelMap.empty_like(img).name == "a_lesions" and LabelMap.empty_like(img).array.dtype == np.uint16


def test_paste_replaces_one_lesion_and_widens_dtype() -> None:
    lab = LabelMap(np.zeros(G.shape, np.uint8), G)
    m1 = np.zeros(G.shape, bool)
    m1[0, :2, :2] = True
    lab.paste(3, m1)
    m2 = np.zeros(G.shape, bool)
    m2[0, 1:3, 1:3] = True
    lab.paste(300, m2)  # overlaps lesion 3 at (0, 1, 1): newest wins
    assert lab.array.dtype == np.uint32 and lab.ids == [3, 300]
    assert lab.array[0, 1, 1] == 300 and int((lab.array == 3).sum()) == 3
    lab.paste(3, np.zeros(G.shape, bool))  # an empty mask removes the lesion
    assert lab.ids == [300]
    copy = lab.copy()
    copy.array[:] = 0
    assert lab.ids == [300]
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive integers"):
            lab.paste(bad, m1)
    with pytest.raises(ValueError, match="mask shape"):
        lab.paste(1, np.zeros((1, 1, 1), bool))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64])
def test_ids_fast_and_fallback_paths(dtype) -> None:
    arr = np.zeros(G.shape, dtype)
    assert LabelMap(arr, G).ids == []
    arr[0, 0, 0], arr[2, 3, 4] = 9, 2
    assert LabelMap(arr, G).ids == [2, 9]
    if np.iinfo(dtype).max > 2_000_000:
        arr[1, 1, 1] = 2_000_000  # beyond the find_objects range: np.unique path
        assert LabelMap(arr, G).ids == [2, 9, 2_000_000]

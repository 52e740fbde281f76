"""Prompt mapping into preprocessed voxels (6.1), the dense prompt channel, tile choice (6.2)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from napari_lesionlocator.core.errors import PromptError  # noqa: E402
from napari_lesionlocator.core.prompts import BoxPrompt, PointPrompt  # noqa: E402
from napari_lesionlocator.engines.lesionlocator.preprocessing import Preprocessed, nonzero_bbox  # noqa: E402
from napari_lesionlocator.engines.lesionlocator.prompting import (  # noqa: E402
    PromptPP,
    dense_prompt,
    map_box,
    map_point,
    point_ball,
    prompt_extent,
    prompts_from_preprocessed_labels,
)
from napari_lesionlocator.engines.lesionlocator.tiling import (  # noqa: E402
    gaussian_map,
    mirror_combinations,
    padding_for,
    select_tiles,
)


def _pre(before=(50, 80, 80), bbox=((0, 50), (0, 80), (0, 80)), new=(100, 40, 60)) -> Preprocessed:
    after = tuple(b - a for a, b in bbox)
    return Preprocessed(
        np.zeros((1, *new), np.float32), before, [list(b) for b in bbox], after, (2.0, 0.4, 0.6), (1.0, 0.8, 0.8)
    )


def test_box_mapping_floor_ceil_grow():
    pre = _pre()  # scale z 2.0, y 0.5, x 0.75
    pp = map_box(BoxPrompt(7, (10, 13, 5, 10, 3, 9)), pre)
    # z: [20, 26) -> [19, 27); y: floor(2.5)=2, ceil(5)=5 -> [1, 6); x: floor(2.25)=2, ceil(6.75)=7 -> [1, 8)
    assert (pp.lesion_id, pp.kind, pp.lo, pp.hi) == (7, "box", (19, 1, 1), (27, 6, 8))


def test_box_minimum_mapping_to_zero_does_not_wrap():
    # The official code casts to uint16 before "- 1": a minimum at 0 becomes 65535 and the lesion is skipped.
    pp = map_box(BoxPrompt(1, (0, 2, 0, 2, 0, 2)), _pre())
    assert pp.lo == (0, 0, 0)
    assert pp.hi == (5, 2, 3)
    assert all(isinstance(v, int) for v in pp.lo)


def test_box_clipped_to_volume_and_outside_is_an_error():
    pre = _pre()
    pp = map_box(BoxPrompt(1, (45, 60, 70, 90, 0, 80)), pre)
    assert pp.hi == (100, 40, 60)
    with pytest.raises(PromptError, match="outside the volume"):
        map_box(BoxPrompt(2, (50, 60, 0, 5, 0, 5)), pre)
    with pytest.raises(PromptError, match="outside the volume"):
        map_box(BoxPrompt(3, (-9, -1, 0, 5, 0, 5)), pre)
    with pytest.raises(PromptError, match="empty along z"):
        BoxPrompt(4, (5, 5, 0, 5, 0, 5))


def test_crop_offset_subtracted_once():
    pre = _pre(before=(60, 90, 90), bbox=((10, 60), (5, 85), (0, 80)))
    assert np.array_equal(pre.crop_offset, (10, 5, 0))
    pt = map_point(PointPrompt(1, (20, 25, 40)), pre)
    # (10, 20, 40) * (2, 0.5, 0.75) -> (20, 10, 30)
    assert pt.point == (20, 10, 30)
    bx = map_box(BoxPrompt(2, (20, 23, 25, 30, 40, 44)), pre)
    assert bx.lo == (19, 9, 29) and bx.hi == (27, 14, 34)


def test_point_rounds_half_to_even_and_clips_into_crop():
    pre = _pre(new=(100, 40, 60))
    # y: 5 * 0.5 = 2.5 -> 2 (even), 7 * 0.5 = 3.5 -> 4
    assert map_point(PointPrompt(1, (0, 5, 0)), pre).point[1] == 2
    assert map_point(PointPrompt(1, (0, 7, 0)), pre).point[1] == 4
    pre2 = _pre(before=(60, 90, 90), bbox=((10, 60), (5, 85), (0, 80)))
    # a point in the cropped-away border is clipped to the crop
    assert map_point(PointPrompt(1, (2, 88, 0)), pre2).point == (0, 40, 0)
    with pytest.raises(PromptError, match="outside the volume"):
        map_point(PointPrompt(1, (60, 0, 0)), pre2)


def test_ball_and_dense_channel():
    b = point_ball()
    assert b.shape == (11, 11, 11) and int(b.sum()) == 739
    pp = PromptPP(1, "point", (20, 20, 20), (21, 21, 21))
    d = dense_prompt(pp, (40, 40, 40))
    assert d.sum() == 739 and d[20, 20, 20] == 1 and d[20, 20, 25] == 1 and d[20, 20, 26] == 0
    corner = PromptPP(1, "point", (0, 1, 39), (1, 2, 40))
    dc = dense_prompt(corner, (40, 40, 40))
    assert 0 < dc.sum() < 739 // 2
    lo, hi = prompt_extent(corner, (40, 40, 40))
    nz = np.argwhere(dc)
    assert np.array_equal(lo, nz.min(0)) and np.array_equal(hi, nz.max(0) + 1)
    box = PromptPP(2, "box", (1, 2, 3), (4, 6, 8))
    db = dense_prompt(box, (10, 10, 10))
    assert db.sum() == 3 * 4 * 5 and db[1:4, 2:6, 3:8].all()


def test_label_prompts_keep_ids_with_gaps_and_large_ids():
    lab = np.zeros((30, 30, 30), np.int64)
    lab[2:5, 3:9, 4:6] = 300
    lab[0:3, 27:30, 10:12] = 7
    lab[20:23, 20:21, 20:25] = 70000
    pps = {p.lesion_id: p for p in prompts_from_preprocessed_labels(lab, "box")}
    assert sorted(pps) == [7, 300, 70000]
    assert pps[300].lo == (1, 2, 3) and pps[300].hi == (6, 10, 7)
    assert pps[7].lo == (0, 26, 9) and pps[7].hi == (4, 30, 13)  # clipped at the borders
    pts = {p.lesion_id: p for p in prompts_from_preprocessed_labels(lab, "point")}
    assert pts[300].point == (3, 6, 4)  # mean (3, 5.5, 4.5) rounded half to even
    assert pts[70000].point == (21, 20, 22)
    with pytest.raises(PromptError, match="unknown prompt kind"):
        prompts_from_preprocessed_labels(lab, "blob")


def test_nonzero_bbox_equals_nnunet_crop():
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    data = np.zeros((1, 20, 30, 25), np.float32)
    data[0, 3:15, 4:29, 2:20] = 1.0
    data[0, 8, 10, 10] = 0.0  # a hole: filled by nnU-Net, cannot move the box
    _d, _s, bbox = crop_to_nonzero(data.copy(), None)
    assert nonzero_bbox(data) == [list(b) for b in bbox] == [[3, 15], [4, 29], [2, 20]]


def test_padding_rule():
    assert padding_for((20, 60, 47), (32, 48, 48)) == ((32, 60, 48), (6, 0, 0))
    assert padding_for((21, 48, 40), (32, 48, 48)) == ((32, 48, 48), (5, 0, 4))


def test_single_centred_tile_shifted_inside():
    patch = (32, 48, 48)
    # extent [40, 51) -> last 50: start int((40 + 50 - 32) / 2) = 29
    assert select_tiles((40, 50, 5), (51, 61, 16), (100, 100, 100), patch) == [(29, 31, 0)]
    # near the far end: shifted to 100 - patch
    assert select_tiles((95, 95, 95), (100, 100, 100), (100, 100, 100), patch) == [(68, 52, 52)]
    # negative centre truncates toward zero then is shifted inside
    assert select_tiles((0, 0, 0), (3, 3, 3), (100, 100, 100), patch) == [(0, 0, 0)]


def test_sliding_tiles_overlapping_prompt():
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    patch = (32, 48, 48)
    shape = (100, 100, 100)
    steps = compute_steps_for_sliding_window(shape, patch, 0.5)
    lo, hi = (10, 30, 30), (60, 50, 50)  # z extent 50 >= 32 -> sliding
    tiles = select_tiles(lo, hi, shape, patch)
    zs = sorted({t[0] for t in tiles})
    assert zs == [s for s in steps[0] if s < hi[0] - 1 and s + 32 > lo[0]]
    assert len(tiles) == len(zs) * len({t[1] for t in tiles}) * len({t[2] for t in tiles})
    # a tile starting at the prompt's last index does not count
    last = steps[0][2]
    tiles2 = select_tiles((0, 30, 30), (last + 1, 50, 50), shape, patch)
    assert last not in {t[0] for t in tiles2}


def test_gaussian_and_mirrors():
    g = gaussian_map((32, 48, 48)).numpy()
    assert g.dtype == np.float16 and g.max() == np.float16(10) and g.min() > 0
    assert g[16, 24, 24] == g.max()
    assert mirror_combinations((0, 1, 2)) == [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert mirror_combinations(()) == []

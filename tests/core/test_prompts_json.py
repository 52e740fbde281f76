"""Prompts: JSON round trip, the official format's quirks, and prompts derived from label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_lesionlocator.core.errors import OutputExistsError, PromptError
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.prompts import (
    BoxPrompt,
    PointPrompt,
    instance_map_from_labels,
    prompts_from_json_dict,
    prompts_from_label_map,
    prompts_to_json_dict,
    read_prompt_json,
)
from napari_lesionlocator.io.prompt_files import write_prompt_json

ids = st.lists(st.integers(1, 10_000), min_size=1, max_size=6, unique=True)


@settings(max_examples=60, deadline=None)
@given(ids, st.data())
def test_json_round_trip(tmp_path_factory, lesion_ids, data) -> None:
    prompts = []
    for lid in lesion_ids:
        if data.draw(st.booleans()):
            prompts.append(PointPrompt(lid, tuple(data.draw(st.integers(0, 500)) for _ in range(3))))
        else:
            lo = [data.draw(st.integers(0, 400)) for _ in range(3)]
            ext = [data.draw(st.integers(1, 50)) for _ in range(3)]
            prompts.append(BoxPrompt(lid, (lo[0], lo[0] + ext[0], lo[1], lo[1] + ext[1], lo[2], lo[2] + ext[2])))
    path = tmp_path_factory.mktemp("p") / "case.json"
    write_prompt_json(prompts, path)
    back = read_prompt_json(path)
    assert back == sorted(prompts, key=lambda p: p.lesion_id)


def test_official_format_string_numbers_and_gapped_ids(tmp_path) -> None:
    path = tmp_path / "case.json"
    path.write_text(json.dumps({"7": {"point": ["10", "20", "30"]}, "2": {"box": ["1", 5, "2", "9", 0, 4]}}))
    prompts = read_prompt_json(path)
    assert prompts == [BoxPrompt(2, (1, 5, 2, 9, 0, 4)), PointPrompt(7, (10, 20, 30))]
    assert prompts_to_json_dict(prompts) == {"2": {"box": [1, 5, 2, 9, 0, 4]}, "7": {"point": [10, 20, 30]}}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2, 3], "expected an object"),
        ({"a": {"point": [1, 2, 3]}}, "not a lesion id"),
        ({"0": {"point": [1, 2, 3]}}, "positive"),
        ({"-3": {"point": [1, 2, 3]}}, "positive"),
        ({"1": {"click": [1, 2, 3]}}, "needs a 'point' or a 'box'"),
        ({"1": [1, 2, 3]}, "needs a 'point' or a 'box'"),
        ({"1": {"point": [1, 2]}}, "3 coordinates"),
        ({"1": {"point": "123"}}, "must be a list"),
        ({"1": {"point": [1, "x", 3]}}, "non-numeric"),
        ({"1": {"point": [1, None, 3]}}, "non-numeric"),
        ({"1": {"point": [1, True, 3]}}, "non-numeric"),
        ({"1": {"point": [1, "inf", 3]}}, "non-numeric"),
        ({"1": {"point": [1, "nan", 3]}}, "non-numeric"),
        ({"1": {"box": [1, 5, 2, 9, 0]}}, "6 numbers"),
        ({"1": {"box": [5, 5, 2, 9, 0, 4]}}, "empty along z"),
        ({"1": {"box": [1, 5, 9, 2, 0, 4]}}, "empty along y"),
        ({"1": {"box": [1, 5, 2, 9, 4, 4]}}, "empty along x"),
        ({"1": {"point": [1, 2, 3]}, "01": {"point": [4, 5, 6]}}, "both name lesion 1"),
    ],
)
def test_bad_prompt_dicts(data, match) -> None:
    with pytest.raises(PromptError, match=match):
        prompts_from_json_dict(data, source="x.json")


def test_bad_json_file_and_missing_file(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"point": [1, 2, 3]')
    with pytest.raises(PromptError, match="bad.json: not valid JSON"):
        read_prompt_json(bad)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PromptError, match="not valid JSON"):
        read_prompt_json(binary)
    with pytest.raises(PromptError, match="not found"):
        read_prompt_json(tmp_path / "missing.json")


def test_write_refuses_overwrite_and_duplicate_ids(tmp_path) -> None:
    path = tmp_path / "c.json"
    write_prompt_json([PointPrompt(1, (1, 2, 3))], path)
    with pytest.raises(OutputExistsError):
        write_prompt_json([PointPrompt(2, (1, 2, 3))], path)
    assert read_prompt_json(path) == [PointPrompt(1, (1, 2, 3))]
    write_prompt_json([PointPrompt(2, (1, 2, 3))], path, overwrite=True)
    assert read_prompt_json(path) == [PointPrompt(2, (1, 2, 3))]
    with pytest.raises(PromptError, match="share lesion id"):
        prompts_to_json_dict([PointPrompt(1, (1, 2, 3)), BoxPrompt(1, (0, 1, 0, 1, 0, 1))])
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temp files left


def test_point_and_box_outside_volume() -> None:
    shape = (10, 20, 30)
    PointPrompt(1, (9, 19, 29)).validate(shape)
    for bad in [(10, 0, 0), (0, 20, 0), (0, 0, 30), (-1, 0, 0)]:
        with pytest.raises(PromptError, match="outside the volume"):
            PointPrompt(1, bad).validate(shape)
    BoxPrompt(1, (0, 10, 0, 20, 0, 30)).validate(shape)
    with pytest.raises(PromptError, match="outside the volume"):
        BoxPrompt(1, (0, 11, 0, 20, 0, 30)).validate(shape)
    assert BoxPrompt(1, (-5, 3, 0, 25, 28, 40)).clipped(shape).box == (0, 3, 0, 20, 28, 30)
    with pytest.raises(PromptError, match="empty"):
        BoxPrompt(1, (12, 15, 0, 5, 0, 5)).clipped(shape)


def test_point_world_round_trip_on_rotated_grid() -> None:
    c, s = np.cos(0.4), np.sin(0.4)
    g = Geometry((20, 30, 40), (3.0, 0.7, 0.7), (5, -4, 2), (1, 0, 0, 0, c, -s, 0, s, c))
    p = PointPrompt(3, (4, 17, 22))
    assert PointPrompt.from_world(3, p.to_world(g), g) == p
    with pytest.raises(PromptError, match="outside"):
        PointPrompt.from_world(3, g.index_to_world((25, 0, 0)), g)
    corners = BoxPrompt(1, (0, 1, 0, 1, 0, 1)).corners_world(g)
    np.testing.assert_allclose(g.world_to_index(corners).min(axis=0), -0.5, atol=1e-9)
    np.testing.assert_allclose(g.world_to_index(corners).max(axis=0), 0.5, atol=1e-9)


# ------------------------------------------------------------------ label maps
def _two_blobs(dtype=np.uint8, value=1) -> np.ndarray:
    lab = np.zeros((12, 14, 16), dtype=dtype)
    lab[1:4, 2:5, 3:7] = value  # 3 x 3 x 4 block
    lab[8:11, 9:12, 10:15] = value
    return lab


def test_binary_map_split_into_26_connected_components() -> None:
    lab = _two_blobs()
    lab[4, 5, 7] = 1  # touches the first block only by a corner: 26-connected, same lesion
    inst = instance_map_from_labels(lab)
    assert sorted(np.unique(inst)) == [0, 1, 2]
    assert inst[4, 5, 7] == inst[1, 2, 3]
    boxes = prompts_from_label_map(lab, "box")
    assert [b.box for b in boxes] == [(1, 5, 2, 6, 3, 8), (8, 11, 9, 12, 10, 15)]
    points = prompts_from_label_map(lab, "point")
    expected = np.round(np.argwhere(inst == 2).mean(axis=0)).astype(int)
    assert points[1] == PointPrompt(2, tuple(expected))
    # bool masks are binary maps too
    assert [p.box for p in prompts_from_label_map(lab.astype(bool), "box")] == [b.box for b in boxes]
    # 6- or 18-connectivity would have split the corner voxel off as a third lesion.
    lab[4, 5, 7] = 0
    lab[5, 6, 8] = 1
    assert len(prompts_from_label_map(lab, "box")) == 3


def test_instance_map_ids_kept_with_gaps_and_above_255() -> None:
    lab = np.zeros((12, 14, 16), dtype=np.int32)
    lab[1:4, 2:5, 3:7] = 300
    lab[8:11, 9:12, 10:15] = 7
    lab[0, 0, 0] = 70000
    boxes = prompts_from_label_map(lab, "box")
    assert [b.lesion_id for b in boxes] == [7, 300, 70000]
    assert boxes[1].box == (1, 4, 2, 5, 3, 7)
    assert boxes[2].box == (0, 1, 0, 1, 0, 1)
    # Two separate components with the same non-1 id stay one lesion (ids are kept as they are).
    lab2 = _two_blobs(np.uint16, value=5)
    assert [p.lesion_id for p in prompts_from_label_map(lab2, "point")] == [5]
    assert prompts_from_label_map(lab2, "box")[0].box == (1, 11, 2, 12, 3, 15)


def test_centroid_rounding_half_to_even() -> None:
    lab = np.zeros((5, 5, 8), dtype=np.uint8)
    lab[2, 2, 2:4] = 2  # x centroid 2.5 -> 2 (half to even)
    lab[2, 2, 5:7] = 3  # x centroid 5.5 -> 6
    pts = prompts_from_label_map(lab, "point")
    assert [p.zyx for p in pts] == [(2, 2, 2), (2, 2, 6)]


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((3, 3, 3), np.uint8), "empty"),
        (np.zeros((3, 3), np.uint8), "3D"),
        (np.full((3, 3, 3), 1.5), "fractional"),
        (np.full((3, 3, 3), -2, np.int16), "negative"),
        (np.full((3, 3, 3), "a"), "integer"),
    ],
)
def test_bad_label_prompts(labels, match) -> None:
    with pytest.raises(PromptError, match=match):
        prompts_from_label_map(labels, "point")


def test_unknown_prompt_kind() -> None:
    with pytest.raises(PromptError, match="unknown prompt kind"):
        prompts_from_label_map(_two_blobs(), "scribble")

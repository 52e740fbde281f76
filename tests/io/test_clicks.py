"""Click/tracking files: grand-challenge "Multiple points" (world mm, x y z), autoPET IV simulated clicks
(voxel x y z) and LongiSeg trackingTr.json (voxel x y z, NaN = missing), to and from LesionLocator prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from napari_lesionlocator.core.errors import OutputExistsError, PromptError
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.prompts import PointPrompt
from napari_lesionlocator.io.clicks import (
    gc_points_to_prompts,
    read_autopet_clicks,
    read_gc_points,
    read_tracking_json,
    tracking_pair_from_results,
    tracking_pair_prompts,
    write_autopet_clicks,
    write_gc_points,
    write_tracking_json,
)


def _geom(seed: int) -> Geometry:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Geometry(tuple(int(v) for v in rng.integers(10, 60, 3)), tuple(rng.uniform(0.4, 4, 3)),
                    tuple(rng.uniform(-300, 300, 3)), tuple(q.reshape(-1)))


def _sitk_point(geom: Geometry, zyx) -> list[float]:
    """World (x, y, z) of a voxel (z, y, x) computed by SimpleITK itself (independent of our code)."""
    itk = geom.to_itk()
    img = sitk.Image([int(v) for v in itk["size"]], sitk.sitkUInt8)
    img.SetSpacing(itk["spacing"])
    img.SetOrigin(itk["origin"])
    img.SetDirection(itk["direction"])
    return list(img.TransformIndexToPhysicalPoint([int(v) for v in zyx[::-1]]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_grand_challenge_points_round_trip_in_world_mm(tmp_path, seed) -> None:
    geom = _geom(seed)
    rng = np.random.default_rng(seed)
    prompts = [PointPrompt(lid, tuple(int(rng.integers(0, n)) for n in geom.shape)) for lid in (1, 4, 9)]
    path = write_gc_points(tmp_path / "clicks.json", prompts, geom, negatives=[(0, 0, 0)])
    raw = read_gc_points(path)
    assert json.loads(path.read_text())["type"] == "Multiple points"
    for p, r in zip(prompts, raw, strict=False):
        assert r["name"] == str(p.lesion_id)
        np.testing.assert_allclose(r["point"], _sitk_point(geom, p.zyx), atol=1e-6)  # world mm, x y z
    back = gc_points_to_prompts(path, geom)
    assert back.prompts == prompts
    assert back.negatives == [(0, 0, 0)] and not back.outside
    with pytest.raises(OutputExistsError):
        write_gc_points(tmp_path / "clicks.json", prompts, geom)


def test_grand_challenge_tumor_background_and_outside(tmp_path) -> None:
    geom = Geometry((20, 30, 40), (2.0, 0.5, 0.8), (-10.0, 5.0, 100.0))
    inside = _sitk_point(geom, (3, 4, 5))
    data = {"type": "Multiple points", "version": {"major": 1, "minor": 0}, "points": [
        {"name": "tumor", "point": inside},
        {"name": "2", "point": _sitk_point(geom, (10, 10, 10))},
        {"name": "background", "point": _sitk_point(geom, (1, 1, 1))},
        {"name": "tumor", "point": [1e4, 0, 0]},
    ]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    res = gc_points_to_prompts(tmp_path / "c.json", geom)
    assert res.prompts == [PointPrompt(2, (10, 10, 10)), PointPrompt(3, (3, 4, 5))]  # named id kept, tumor after it
    assert res.negatives == [(1, 1, 1)]
    assert len(res.outside) == 1 and "outside" in res.outside[0]
    (tmp_path / "bad.json").write_text(json.dumps({"type": "Polygon", "points": []}))
    with pytest.raises(PromptError, match="Multiple points"):
        read_gc_points(tmp_path / "bad.json")


def test_autopet_simulated_clicks_are_voxel_xyz(tmp_path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"tumor": [[109, 103, 353], [99, 92, 178]],
                                                 "background": [[84, 84, 264]]}))
    res = read_autopet_clicks(tmp_path / "a.json", shape=(400, 200, 200))
    assert res.prompts == [PointPrompt(1, (353, 103, 109)), PointPrompt(2, (178, 92, 99))]
    assert res.negatives == [(264, 84, 84)]
    out = write_autopet_clicks(tmp_path / "b.json", res.prompts, negatives=res.negatives)
    assert json.loads(out.read_text()) == {"tumor": [[109, 103, 353], [99, 92, 178]], "background": [[84, 84, 264]]}
    assert read_autopet_clicks(tmp_path / "a.json", shape=(100, 200, 200)).outside  # z 353 and 178 >= 100


def test_longiseg_tracking_json(tmp_path) -> None:
    text = """{
      "patient_1": {
        "1": {"img_bl": "p1_s0", "img_fu": "p1_s1", "bl_point": [10, 20, 30], "fu_point_prop": [11, 21, 31],
              "fu_point": [12.4, 22.6, 32], "merged_lesions": [1]},
        "2": {"img_bl": "p1_s0", "img_fu": "p1_s1", "bl_point": [5, 6, 7], "fu_point_prop": [NaN, NaN, NaN],
              "fu_point": [NaN, NaN, NaN], "merged_lesions": [0]}
      },
      "patient_2": [
        {"1": {"img_bl": "p2_s0", "img_fu": "p2_s1", "bl_point": [1, 2, 3], "fu_point_prop": [1, 2, 4],
               "fu_point": [1, 2, 4], "merged_lesions": [1, 3]}},
        {"1": {"img_bl": "p2_s1", "img_fu": "p2_s2", "bl_point": [1, 2, 4], "fu_point_prop": [1, 2, 5],
               "fu_point": [1, 2, 5], "merged_lesions": [1]}}
      ]
    }"""
    (tmp_path / "trackingTr.json").write_text(text)
    data = read_tracking_json(tmp_path / "trackingTr.json")
    (p1,) = data["patient_1"]
    assert (p1.img_bl, p1.img_fu) == ("p1_s0", "p1_s1")
    assert p1.lesions[2].disappeared and p1.lesions[2].fu_point is None
    bl, fu = tracking_pair_prompts(p1)
    assert bl == [PointPrompt(1, (30, 20, 10)), PointPrompt(2, (7, 6, 5))]  # (x, y, z) -> (z, y, x)
    assert fu == [PointPrompt(1, (32, 23, 12))]  # verified point, rounded; the vanished lesion has none
    assert tracking_pair_prompts(p1, mode="automatic")[1] == [PointPrompt(1, (31, 21, 11))]
    assert len(data["patient_2"]) == 2 and data["patient_2"][0].lesions[1].merged_lesions == [1, 3]
    write_tracking_json(tmp_path / "again.json", data)
    again = read_tracking_json(tmp_path / "again.json")
    assert again["patient_1"][0].lesions == p1.lesions and len(again["patient_2"]) == 2
    assert "NaN" in (tmp_path / "again.json").read_text()


def test_longiseg_pair_from_our_results(tmp_path) -> None:
    pair = tracking_pair_from_results("bl", "fu1", {1: (4, 5, 6), 3: (7, 8, 9)}, {1: (5, 5, 6), 3: None})
    write_tracking_json(tmp_path / "t.json", {"case": [pair]})
    (back,) = read_tracking_json(tmp_path / "t.json")["case"]
    assert back.lesions[1].bl_point == (6.0, 5.0, 4.0) and back.lesions[1].fu_point == (6.0, 5.0, 5.0)
    assert back.lesions[3].disappeared and back.lesions[3].fu_point_prop is None
    bl, fu = tracking_pair_prompts(back)
    assert [p.zyx for p in bl] == [(4, 5, 6), (7, 8, 9)] and [p.zyx for p in fu] == [(5, 5, 6)]


def test_segment_cli_reads_click_files(tmp_path, capsys) -> None:
    """`lesionlocator segment -p clicks.json -t point` with a grand-challenge or autoPET click file."""
    from napari_lesionlocator.cli import main
    from napari_lesionlocator.core.image import Image
    from napari_lesionlocator.io.images import read_label_map, write_image

    geom = Geometry((20, 40, 40), (2.0, 0.8, 0.8), (-10.0, 3.0, 7.0))
    zz, yy, xx = np.indices(geom.shape)
    ball = ((zz - 10) * 2.0) ** 2 + ((yy - 20) * 0.8) ** 2 + ((xx - 22) * 0.8) ** 2 < 6.0**2
    arr = np.where(ball, 60.0, -800.0).astype(np.float32)
    write_image(Image(arr, geom, "ct"), tmp_path / "ct.nii.gz")
    gc = {"type": "Multiple points", "points": [{"name": "tumor", "point": _sitk_point(geom, (10, 20, 22))},
                                                {"name": "background", "point": _sitk_point(geom, (2, 2, 2))}]}
    (tmp_path / "ct.json").write_text(json.dumps(gc))
    rc = main(["segment", "-i", str(tmp_path / "ct.nii.gz"), "-p", str(tmp_path / "ct.json"), "-t", "point",
               "-o", str(tmp_path / "out"), "--engine", "classical", "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "grand-challenge points" in err and "background click" in err
    mask = read_label_map(tmp_path / "out" / "ct_lesion_1.nii.gz").array.astype(bool)
    assert mask[10, 20, 22] and (mask & ball).sum() > 0.5 * ball.sum()
    (tmp_path / "a.json").write_text(json.dumps({"tumor": [[22, 20, 10]], "background": []}))
    assert main(["segment", "-i", str(tmp_path / "ct.nii.gz"), "-p", str(tmp_path / "a.json"), "-t", "box",
                 "-o", str(tmp_path / "out2"), "-q"]) == 2
    assert "holds clicks" in capsys.readouterr().err

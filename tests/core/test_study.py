"""Study model: timepoint order and validation, lesion ids and status, removing a lesion."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from napari_lesionlocator.core.errors import InputImageError
from napari_lesionlocator.core.geometry import Geometry, GeometryMismatchError
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.core.study import Lesion, Study, StudyError, Timepoint, parse_date

GEOM = Geometry((6, 8, 10), (2.0, 1.0, 1.0))


def _tp(name: str, date: str | None = None, ids: tuple[int, ...] | None = (), *, image_date: str | None = None):
    img = Image(np.zeros(GEOM.shape, np.float32), GEOM, name=name, acquisition_date=image_date)
    labels = None
    if ids is not None:
        labels = LabelMap.empty(GEOM, f"{name}_lesions")
        for k, lid in enumerate(ids):
            labels.array[k, :2, :2] = lid
    return Timepoint(img, labels, date)


def test_parse_date_forms() -> None:
    assert parse_date("2024-03-05") == dt.date(2024, 3, 5)
    assert parse_date("20240305") == dt.date(2024, 3, 5)
    assert parse_date("2024-03-05T10:11:12") == dt.date(2024, 3, 5)
    assert parse_date(dt.datetime(2024, 3, 5, 1, 2)) == dt.date(2024, 3, 5)
    assert parse_date(None) is None and parse_date("  ") is None
    for bad in ("2024-13-01", "yesterday", "05/03/2024", "2024-02-30"):
        with pytest.raises(StudyError, match="cannot read the date"):
            parse_date(bad)


def test_timepoint_date_defaults_and_normalises() -> None:
    assert _tp("a", None, image_date="20230102").acquisition_date == "2023-01-02"
    assert _tp("a", "20230105", image_date="2023-01-02").acquisition_date == "2023-01-05"
    with pytest.raises(StudyError):
        _tp("a", "not a date")
    tp = _tp("a", "2023-01-01")
    tp.set_date("20240101")
    assert tp.acquisition_date == "2024-01-01" and tp.date == dt.date(2024, 1, 1)
    with pytest.raises(StudyError):
        tp.set_date("1st of May")
    assert tp.acquisition_date == "2024-01-01"


def test_timepoint_labels_must_share_the_grid() -> None:
    img = Image(np.zeros(GEOM.shape, np.float32), GEOM, name="scan")
    other = Geometry(GEOM.shape, (2.0, 1.0, 1.0), (0.0, 0.0, 5.0))
    with pytest.raises(GeometryMismatchError, match="origin") as info:
        Timepoint(img, LabelMap.empty(other, "lab"))
    assert isinstance(info.value, InputImageError)
    tp = Timepoint(img)
    with pytest.raises(GeometryMismatchError):
        tp.set_labels(LabelMap.empty(other))
    assert tp.labels is None
    assert tp.ensure_labels().geometry == GEOM and tp.lesion_ids == []


def test_study_sorted_by_date_and_validated() -> None:
    s = Study([_tp("fu2", "2024-06-01"), _tp("base", "2023-01-01"), _tp("fu1", "2023-09-15")], "p1")
    assert s.names == ["base", "fu1", "fu2"]
    assert s.baseline.name == "base" and s.dates_in_order
    assert s["fu1"] is s[1] and len(s) == 3 and [tp.name for tp in s] == s.names
    with pytest.raises(StudyError, match="unique.*base"):
        Study([_tp("base", "2023-01-01"), _tp("base", "2024-01-01")])
    with pytest.raises(StudyError, match="no acquisition date"):
        Study([_tp("a", "2023-01-01"), _tp("b")])
    with pytest.raises(StudyError, match="at least one"):
        Study([])
    # Undated studies keep the given order; so does sort_by_date=False.
    assert Study([_tp("z"), _tp("a")]).names == ["z", "a"]
    assert Study([_tp("b", "2024-01-01"), _tp("a", "2023-01-01")], sort_by_date=False).names == ["b", "a"]


def test_reorder_add_remove_timepoints() -> None:
    s = Study([_tp("a", "2023-01-01"), _tp("b", "2023-05-01"), _tp("c", "2024-01-01")])
    s.reorder(["c", "a", "b"])
    assert s.names == ["c", "a", "b"] and not s.dates_in_order
    for bad in (["a", "b"], ["a", "b", "b"], ["a", "b", "x"]):
        with pytest.raises(StudyError, match="exactly once"):
            s.reorder(bad)
    s.sort_by_date()
    assert s.names == ["a", "b", "c"]
    assert s.add_timepoint(_tp("mid", "2023-08-01")) == 2
    assert s.names == ["a", "b", "mid", "c"]
    with pytest.raises(StudyError, match="unique"):
        s.add_timepoint(_tp("mid", "2023-08-02"))
    assert s.remove_timepoint("mid").name == "mid"
    with pytest.raises(StudyError, match="no timepoint named 'zz'"):
        s.remove_timepoint("zz")
    single = Study([_tp("only")])
    with pytest.raises(StudyError, match="only timepoint"):
        single.remove_timepoint("only")


def test_lesion_ids_and_status() -> None:
    s = Study(
        [_tp("base", "2023-01-01", (1, 2, 300)), _tp("fu1", "2023-06-01", (2, 300, 4)), _tp("fu2", "2024-01-01", None)]
    )
    assert s.lesion_ids_by_timepoint() == {"base": [1, 2, 300], "fu1": [2, 4, 300], "fu2": []}
    assert s.lesion_ids == [1, 2, 4, 300] and s.next_lesion_id() == 301
    lesions = {les.id: les for les in s.lesions()}
    assert lesions[1].status == {"base": "present", "fu1": "absent", "fu2": "not_evaluable"}
    assert lesions[1].disappeared_at("fu1") and not lesions[1].is_new_at("fu1")
    assert lesions[4].is_new_at("fu1") and lesions[4].first_seen == "fu1"
    assert not lesions[4].is_new_at("base") and lesions[300].present_at == ["base", "fu1"]
    assert s.status(4, "base") == "absent" and s.status(4, "fu2") == "not_evaluable"
    s.set_not_evaluable(2, "fu1")
    assert s.lesion(2).status["fu1"] == "not_evaluable" and s.status(2, "fu1") == "not_evaluable"
    s.set_not_evaluable(2, "fu1", False)
    assert s.status(2, "fu1") == "present"
    s.rename_lesion(300, "liver met")
    assert s.lesion(300).name == "liver met" and s.lesion(2).name == "Lesion 2"
    with pytest.raises(StudyError, match="no lesion with id 9"):
        s.lesion(9)


def test_remove_lesion_everywhere_keeps_other_ids() -> None:
    s = Study([_tp("base", "2023-01-01", (1, 2)), _tp("fu1", "2023-06-01", (2, 1))])
    s.rename_lesion(2, "node")
    s.set_not_evaluable(2, "base")
    before = {tp.name: tp.labels.array.copy() for tp in s}
    cleared = s.remove_lesion(2)
    assert cleared == 8  # 2x2 voxels at each of two timepoints
    assert s.lesion_ids == [1]
    for tp in s:
        expected = np.where(before[tp.name] == 2, 0, before[tp.name])
        np.testing.assert_array_equal(tp.labels.array, expected)
    assert s.next_lesion_id() == 3  # the removed id 2 is not handed out again
    with pytest.raises(StudyError, match="no lesion with id 2"):
        s.remove_lesion(2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_lesion_ids_positive_integers(bad) -> None:
    with pytest.raises(StudyError, match="positive integers"):
        Lesion(bad)


# ----------------------------------------------------------------- per-lesion model
from napari_lesionlocator.core.prompts import PointPrompt  # noqa: E402
from napari_lesionlocator.core.recist import TargetRuleError  # noqa: E402
from napari_lesionlocator.core.results import LesionMask, LesionResult  # noqa: E402
from napari_lesionlocator.core.study import Provenance  # noqa: E402

BIG = Geometry((10, 40, 40), (2.0, 1.0, 1.0))


def _box_mask(geom: Geometry, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> LesionMask:
    full = np.zeros(geom.shape, bool)
    full[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return LesionMask.from_full(geom, full)


def _study(n: int = 3) -> Study:
    tps = []
    for k in range(n):
        img = Image(np.zeros(BIG.shape, np.float32), BIG, name=f"tp{k}", acquisition_date=f"2024-0{k + 1}-01")
        tps.append(Timepoint(img))
    return Study(tps)


def test_new_lesion_ids_are_never_reused_after_deletions() -> None:
    s = _study()
    a, b, c = s.new_lesion("a"), s.new_lesion("b"), s.new_lesion("c")
    assert (a, b, c) == (1, 2, 3)
    s.remove_lesion(3)
    s.remove_lesion(2)
    assert s.lesion_ids == [1] and s.next_lesion_id() == 4
    assert s.new_lesion() == 4  # neither 2 nor 3 again
    with pytest.raises(StudyError, match="never reused"):
        s.add_lesion(2)
    s.remove_lesion(4)
    s.remove_lesion(1)
    assert s.lesion_ids == [] and s.new_lesion() == 5
    # an engine result for an unused higher id moves the counter past it
    s.set_result(9, "tp0", _box_mask(BIG, (0, 2), (0, 2), (0, 2)))
    assert s.next_lesion_id() == 10


def test_overlapping_masks_stay_apart_and_display_later_id_wins() -> None:
    s = _study()
    m1 = _box_mask(BIG, (2, 6), (5, 20), (5, 20))
    m2 = _box_mask(BIG, (2, 6), (15, 30), (15, 30))  # overlaps m1 on a 5x5x4 block
    s.set_result(1, "tp0", LesionResult(1, m1))
    s.set_result(2, "tp0", LesionResult(2, m2))
    assert s.mask(1, "tp0").voxels == 4 * 15 * 15 and s.mask(2, "tp0").voxels == 4 * 15 * 15
    np.testing.assert_array_equal(s.mask(1, "tp0").to_full(), m1.to_full())
    disp = s["tp0"].labels.array
    assert (disp == 2).sum() == 4 * 15 * 15 and (disp == 1).sum() == 4 * 15 * 15 - 4 * 5 * 5
    # measured on their own masks: identical sizes although lesion 1 is partly hidden in the display
    rows = {r.lesion_id: r for r in s.measurements() if r.timepoint == 0}
    assert rows[1].voxel_count == rows[2].voxel_count == 900
    assert rows[1].long_axis_mm == pytest.approx(rows[2].long_axis_mm)
    # removing lesion 2 shows lesion 1 whole again, in place
    s.remove_lesion(2)
    np.testing.assert_array_equal(s["tp0"].labels.array == 1, m1.to_full())


def test_review_states_and_table_status() -> None:
    s = _study()
    lid = s.new_lesion("nodule", site="lung")
    s.set_result(lid, "tp0", _box_mask(BIG, (2, 6), (5, 20), (5, 20)), prompts=[PointPrompt(lid, (4, 12, 12))])
    assert s.observation(lid, "tp0").review == "accepted"
    assert s.observation(lid, "tp0").provenance.prompt == [{"point": [4, 12, 12]}]
    assert s.table_status(lid, "tp1") == "not tracked"  # distinct from disappeared
    obs = s.set_result(lid, "tp1", LesionResult(lid, _box_mask(BIG, (2, 6), (6, 21), (5, 20)), "check", ["weak edge"]),
                       tracked_from="tp0")
    assert obs.review == "unverified" and obs.provenance.tracked_from == "tp0" and obs.engine_status == "check"
    assert s.table_status(lid, "tp1") == "unverified" and s.unverified() == [(lid, "tp1")]
    s.accept(lid, "tp1")
    assert s.table_status(lid, "tp1") == "present" and s.unverified() == []
    # tracked but lost at tp2
    s.set_result(lid, "tp2", LesionResult(lid, LesionMask.empty(BIG), "lost"), tracked_from="tp1")
    assert s.table_status(lid, "tp2") == "lost" and s.observation(lid, "tp2").review == "unverified"
    s.set_review(lid, "tp2", "disappeared")
    assert s.table_status(lid, "tp2") == "disappeared" and s.status(lid, "tp2") == "absent"
    # merged: counts as absent, display shows only the lesion it merged into
    other = s.new_lesion()
    s.set_result(other, "tp1", _box_mask(BIG, (2, 6), (25, 35), (25, 35)))
    assert s.observation(other, "tp1").review == "new" and s.is_new_at(other, "tp1")
    s.set_review(lid, "tp1", "merged", merged_into=other)
    assert s.table_status(lid, "tp1") == "merged" and s.lesion(lid).review["tp1"] == "merged into 2"
    assert lid not in np.unique(s["tp1"].labels.array) and s.status(lid, "tp1") == "absent"
    s.set_review(lid, "tp1", "accepted")  # undo: drawn again
    assert lid in np.unique(s["tp1"].labels.array)
    with pytest.raises(StudyError, match="merged_into"):
        s.set_review(lid, "tp1", "merged")
    with pytest.raises(StudyError, match="itself"):
        s.set_review(lid, "tp1", "merged", merged_into=lid)
    with pytest.raises(StudyError, match="baseline cannot be 'new'"):
        s.set_review(lid, "tp0", "new")
    with pytest.raises(StudyError, match="unknown review state"):
        s.set_review(lid, "tp1", "fine")


def test_label_edit_updates_only_the_touched_lesions_and_records_provenance() -> None:
    s = _study()
    s.set_result(1, "tp0", _box_mask(BIG, (2, 6), (5, 20), (5, 20)))
    s.set_result(2, "tp0", _box_mask(BIG, (2, 6), (15, 30), (15, 30)))
    m1_before, m2_before = s.mask(1, "tp0"), s.mask(2, "tp0")
    edited = s["tp0"].labels.array.copy()
    edited[3, 25:28, 25:28] = 0  # erase part of lesion 2 (not overlapping lesion 1)
    edited[3, 30:33, 5:8] = 1   # paint 9 voxels onto lesion 1
    res = s.apply_label_edit("tp0", edited, user="reader", when="2024-05-01T10:00:00+00:00")
    assert sorted(res.changed) == [1, 2] and res.added == [] and not res.remapped
    assert s.mask(1, "tp0").voxels == m1_before.voxels + 9
    assert s.mask(2, "tp0").voxels == m2_before.voxels - 9
    prov = s.observation(1, "tp0").provenance
    assert prov.edits == 1 and prov.edit_times == ["2024-05-01T10:00:00+00:00"] and prov.edit_users == ["reader"]
    # painting another lesion over the overlap: lesion 2 (shown) gives the voxels up, lesion 1 (hidden) keeps them
    edited = s["tp0"].labels.array.copy()
    edited[2:4, 15:20, 15:20] = 7
    res = s.apply_label_edit("tp0", edited, region=(slice(0, 10), slice(10, 25), slice(10, 25)))
    assert res.changed == [2, 7] and res.added == [7] and res.region == (slice(2, 4), slice(15, 20), slice(15, 20))
    assert s.mask(1, "tp0").voxels == m1_before.voxels + 9 and s.mask(7, "tp0").voxels == 50
    # the eraser means "no lesion here": lesion 1, hidden under lesion 2, loses the voxels too
    edited = s["tp0"].labels.array.copy()
    edited[4:6, 15:20, 15:20] = 0
    res = s.apply_label_edit("tp0", edited)
    assert res.changed == [1, 2]
    assert s.mask(1, "tp0").voxels == m1_before.voxels + 9 - 50
    assert (s["tp0"].labels.array[4:6, 15:20, 15:20] == 0).all()
    s.remove_lesion(7)
    # painting a removed id gets a fresh id instead
    s.remove_lesion(2)
    edited = s["tp0"].labels.array.copy()
    edited[8, 35:38, 35:38] = 2
    res = s.apply_label_edit("tp0", edited)
    assert res.remapped == {2: 8} and res.added == [8] and "never reused" in res.messages[0]
    assert (s["tp0"].labels.array[8, 35:38, 35:38] == 8).all() and s.next_lesion_id() == 9
    assert s.observation(8, "tp0").provenance.source == "manual"


def test_set_results_provenance_from_engine_details() -> None:
    s = _study()
    details = {"engine": "lesionlocator", "model": "LesionLocatorCheckpoint", "folds": [0, 1], "tta": True,
               "device": "cuda"}
    s.set_results("tp0", {1: LesionResult(1, _box_mask(BIG, (2, 4), (2, 4), (2, 4)), provenance=details)})
    prov = s.observation(1, "tp0").provenance
    assert prov.engine == "lesionlocator" and prov.folds == [0, 1] and prov.tta is True
    assert prov.parameters == {"device": "cuda"} and prov.user and prov.package_version
    assert Provenance.from_dict(prov.to_dict()) == prov


def test_target_rules_refuse_with_messages() -> None:
    s = _study()
    # four 15 mm lung lesions, an 8 mm one, a node of 12 mm short axis
    ids = []
    for k in range(4):
        lid = s.new_lesion(site="lung")
        s.set_result(lid, "tp0", _box_mask(BIG, (2 * k, 2 * k + 2), (2, 17), (2, 17)))
        ids.append(lid)
    small = s.new_lesion(site="lung")
    s.set_result(small, "tp0", _box_mask(BIG, (8, 10), (30, 32), (20, 28)))  # 8 x 2 mm: long axis about 8 mm
    s.set_lesion_info(ids[0], role="target")
    s.set_lesion_info(ids[1], role="target")
    with pytest.raises(TargetRuleError, match="lung already has 2 targets"):
        s.set_lesion_info(ids[2], role="target")
    assert s.role(ids[2]) == "not assessed"  # nothing changed
    s.set_lesion_info(small, site="liver")
    with pytest.raises(TargetRuleError, match=r"not measurable: long axis 8\.\d mm < 10 mm"):
        s.set_lesion_info(small, role="target")
    node = s.new_lesion(site="lymph node")
    yy, xx = np.mgrid[:40, :40]
    ellipse = np.zeros(BIG.shape, bool)
    ellipse[6:8] = ((yy - 28) / 6.0) ** 2 + ((xx - 28) / 11.0) ** 2 <= 1.0  # axes about 12 and 22 mm
    s.set_result(node, "tp0", LesionMask.from_full(BIG, ellipse))
    with pytest.raises(TargetRuleError, match=r"short axis >= 15 mm.*measures 1[1-3]\.\d mm.*non-target"):
        s.set_lesion_info(node, role="target")
    s.set_lesion_info(node, role="non-target")
    not_at_baseline = s.new_lesion(site="liver")
    with pytest.raises(TargetRuleError, match="no mask at the baseline"):
        s.set_lesion_info(not_at_baseline, role="target")
    with pytest.raises(StudyError, match="unknown site"):
        s.set_lesion_info(node, site="brain")


def test_from_results_marks_tracked_masks_unverified() -> None:
    from types import SimpleNamespace

    imgs = [Image(np.zeros(BIG.shape, np.float32), BIG, name=f"t{k}") for k in range(3)]
    seg = SimpleNamespace(lesions={1: LesionResult(1, _box_mask(BIG, (2, 4), (2, 8), (2, 8))),
                                   2: LesionResult(2, _box_mask(BIG, (5, 7), (20, 30), (20, 30)))})
    fu = SimpleNamespace(lesions={1: LesionResult(1, _box_mask(BIG, (2, 4), (3, 9), (2, 8)), "check"),
                                  2: LesionResult(2, LesionMask.empty(BIG), "lost")})
    s = Study.from_results(imgs, [seg, fu], prompts=[PointPrompt(1, (3, 5, 5))], engine="classical",
                           settings={"threads": 1})
    assert s.observation(1, "t0").review == "accepted" and s.observation(1, "t0").prompts == [PointPrompt(1, (3, 5, 5))]
    assert s.observation(1, "t1").review == "unverified" and s.observation(1, "t1").provenance.tracked_from == "t0"
    assert s.observation(1, "t1").provenance.engine == "classical" and s.engine["settings"] == {"threads": 1}
    assert s.table_status(2, "t1") == "lost" and s.status(2, "t1") == "absent"
    assert s.table_status(1, "t2") == "not tracked" and s.status(1, "t2") == "not_evaluable"
    assert s.unverified() == [(1, "t1"), (2, "t1")]


def test_not_tracked_is_distinct_from_disappeared_after_partial_propagation() -> None:
    s = _study()
    s.set_result(1, "tp0", _box_mask(BIG, (2, 4), (2, 8), (2, 8)))
    s.set_result(2, "tp0", _box_mask(BIG, (5, 7), (20, 30), (20, 30)))
    s.set_result(1, "tp1", _box_mask(BIG, (2, 4), (2, 8), (2, 8)), tracked_from="tp0")  # only lesion 1 propagated
    assert s.table_status(2, "tp1") == "not tracked" and s.status(2, "tp1") == "not_evaluable"
    assert [r.lesion_id for r in s.measurements() if r.timepoint == 1] == [1]  # no 0 mm row for lesion 2


def test_new_lesion_candidates_accept_and_dismiss() -> None:
    s = _study()
    s.set_result(1, "tp0", _box_mask(BIG, (2, 4), (2, 8), (2, 8)))
    s.set_candidates("tp1", [{"centroid_mm": np.array([5.0, 20.0, 20.0]), "box": (4, 7, 18, 23, 18, 23),
                              "score": np.float32(0.9)},
                             {"centroid_mm": [1.0, 1.0, 1.0], "box": [0, 2, 0, 3, 0, 3], "score": 0.2}])
    cands = s.candidates("tp1")
    assert [c["index"] for c in cands] == [0, 1] and cands[0]["box"] == [4, 7, 18, 23, 18, 23]
    assert isinstance(cands[0]["score"], float)
    lid = s.accept_candidate("tp1", 0, _box_mask(BIG, (4, 7), (18, 23), (18, 23)), site="liver")
    assert lid == 2 and s.is_new_at(2, "tp1") and s.table_status(2, "tp1") == "new" and s.site(2) == "liver"
    s.dismiss_candidate("tp1", 1)
    assert s.candidates("tp1") == [] and [c["state"] for c in s.candidates("tp1", state=None)] == ["accepted",
                                                                                                  "dismissed"]
    with pytest.raises(StudyError, match="already dismissed"):
        s.accept_candidate("tp1", 1, _box_mask(BIG, (0, 2), (0, 3), (0, 3)))
    with pytest.raises(StudyError, match="no candidate 5"):
        s.dismiss_candidate("tp1", 5)
    state = s.snapshot_state()
    assert state["candidates"]["tp1"][0]["lesion_id"] == 2


def test_provenance_defaults_from_the_study_engine() -> None:
    s = _study()
    s.engine = {"name": "lesionlocator", "settings": {"checkpoint": "/w/LesionLocatorCheckpoint", "folds": [0, 2],
                                                      "tta": False, "device": "cuda"}}
    obs = s.set_result(1, "tp0", _box_mask(BIG, (2, 4), (2, 8), (2, 8)))
    p = obs.provenance
    assert (p.engine, p.model, p.folds, p.tta, p.parameters) == ("lesionlocator", "/w/LesionLocatorCheckpoint", [0, 2],
                                                                 False, {"device": "cuda"})
    obs = s.set_result(1, "tp1", LesionResult(1, _box_mask(BIG, (2, 4), (2, 8), (2, 8)), provenance={"tta": True}),
                       tracked_from="tp0")
    assert obs.provenance.tta is True and obs.provenance.tracked_from == "tp0" and obs.provenance.source == "tracked"
    edited = s["tp2"].ensure_labels().array.copy()
    edited[0, 0, 0] = 5
    s.apply_label_edit("tp2", edited)
    assert s.observation(5, "tp2").provenance.source == "manual" and s.observation(5, "tp2").provenance.engine is None


def test_take_and_put_back_a_lesion_is_an_exact_undo() -> None:
    s = _study()
    s.set_result(1, "tp0", _box_mask(BIG, (2, 6), (5, 20), (5, 20)), prompts=[PointPrompt(1, (4, 12, 12))])
    s.set_result(2, "tp0", _box_mask(BIG, (2, 6), (15, 30), (15, 30)))
    s.set_result(2, "tp1", _box_mask(BIG, (2, 6), (15, 30), (16, 31)), tracked_from="tp0")
    s.rename_lesion(2, "node")
    s.set_not_evaluable(2, "tp2")
    before = {n: s[n].labels.array.copy() for n in ("tp0", "tp1")}
    state = s.snapshot_state()
    record = s.take_lesion(2)
    assert s.lesion_ids == [1] and (s["tp0"].labels.array == 1).sum() == 4 * 15 * 15  # no longer hidden
    s.put_back_lesion(record)
    for n in ("tp0", "tp1"):
        np.testing.assert_array_equal(s[n].labels.array, before[n])
    again = s.snapshot_state()
    assert [(o["lesion_id"], o["timepoint"], o["review"], o["prompts"], o["mask"] is m["mask"])
            for o, m in zip(again["observations"], state["observations"], strict=True)] == [
        (o["lesion_id"], o["timepoint"], o["review"], o["prompts"], True) for o in state["observations"]]
    assert s.lesion_name(2) == "node" and s.status(2, "tp2") == "not_evaluable" and s.next_lesion_id() == 3
    with pytest.raises(StudyError, match="put back twice"):
        s.put_back_lesion(record)


def test_repropagation_changes_only_later_timepoints() -> None:
    from types import SimpleNamespace

    s = _study()
    m0 = _box_mask(BIG, (2, 4), (2, 8), (2, 8))
    s.set_result(1, "tp0", m0)
    s.set_result(1, "tp1", _box_mask(BIG, (2, 4), (3, 9), (2, 8)), tracked_from="tp0")
    s.set_result(1, "tp2", _box_mask(BIG, (2, 4), (4, 10), (2, 8)), tracked_from="tp1")
    before_tp0 = s.mask(1, "tp0")
    fixed = _box_mask(BIG, (2, 4), (20, 26), (20, 26))  # the reader corrects tp1...
    s.set_result(1, "tp1", fixed, review="accepted")
    res = SimpleNamespace(lesions={1: LesionResult(1, _box_mask(BIG, (2, 4), (21, 27), (20, 26)))},
                          new_candidates=[{"centroid_mm": [0, 0, 0], "box": [0, 1, 0, 1, 0, 1], "score": 0.1}])
    assert s.later_timepoints("tp1") == ["tp2"]
    assert s.apply_tracking("tp1", [res]) == ["tp2"]  # ...and re-propagates from there
    assert s.mask(1, "tp0") is before_tp0 and s.mask(1, "tp1") is fixed and s.observation(1, "tp1").review == "accepted"
    assert s.mask(1, "tp2").start == (2, 21, 20) and s.observation(1, "tp2").review == "unverified"
    assert s.observation(1, "tp2").provenance.tracked_from == "tp1" and len(s.candidates("tp2")) == 1
    with pytest.raises(StudyError, match="2 tracking results for 1 later"):
        s.apply_tracking("tp1", [res, res])


def test_edits_when_the_layer_paints_into_the_display_array() -> None:
    """napari's labels layer may share the study's display array: the stroke is already in it, so
    the old values come from ``before`` or from napari's paint event (``apply_paint``)."""
    s = _study()
    s.set_result(1, "tp0", _box_mask(BIG, (2, 6), (5, 20), (5, 20)))
    s.set_result(2, "tp0", _box_mask(BIG, (2, 6), (15, 30), (15, 30)))
    shared = s["tp0"].labels.array  # what the layer would paint into
    region = (slice(3, 4), slice(30, 33), slice(5, 8))
    before = shared[region].copy()
    shared[region] = 1  # the brush stroke, in place
    res = s.apply_label_edit("tp0", shared, region=region, before=before)
    assert res.changed == [1] and s.mask(1, "tp0").voxels == 900 + 9
    assert s.apply_label_edit("tp0", shared).changed == []  # without 'before' the stroke is invisible
    # napari's paint event: indices, old values, new value (paint lesion 1 over lesion 2 where they overlap)
    zz, yy, xx = np.meshgrid([2, 3], [15, 16], [15, 16], indexing="ij")
    old = shared[zz, yy, xx].copy()
    shared[zz, yy, xx] = 1
    res = s.apply_paint("tp0", (zz.ravel(), yy.ravel(), xx.ravel()), old.ravel(), 1, user="reader")
    assert res.changed == [2] and s.mask(2, "tp0").voxels == 900 - 8 and s.mask(1, "tp0").voxels == 909
    assert (shared[zz, yy, xx] == 1).all()  # lesion 1 shows there now (it was already in its own mask)
    assert s.observation(2, "tp0").provenance.edit_users == ["reader"]
    # painting a voxel with an id the study never had makes that lesion (at the baseline: accepted)
    res = s.apply_paint("tp0", ([8], [1], [1]), [0], 3)
    assert res.added == [3] and s.observation(3, "tp0").review == "accepted" and s.next_lesion_id() == 4
    with pytest.raises(StudyError, match="outside"):
        s.apply_paint("tp0", ([10], [0], [0]), [0], 1)


def test_from_results_a_lesion_added_at_a_follow_up_is_new() -> None:
    from types import SimpleNamespace

    imgs = [Image(np.zeros(BIG.shape, np.float32), BIG, name=f"t{k}") for k in range(3)]
    seg = SimpleNamespace(lesions={1: LesionResult(1, _box_mask(BIG, (2, 4), (2, 8), (2, 8)))})
    fu1 = SimpleNamespace(lesions={1: LesionResult(1, _box_mask(BIG, (2, 4), (2, 8), (2, 8))),
                                   7: LesionResult(7, _box_mask(BIG, (5, 7), (20, 30), (20, 30)))})
    fu2 = SimpleNamespace(lesions={1: LesionResult(1, _box_mask(BIG, (2, 4), (2, 8), (2, 8))),
                                   7: LesionResult(7, _box_mask(BIG, (5, 7), (20, 31), (20, 30)))})
    s = Study.from_results(imgs, [seg, fu1, fu2])
    assert s.observation(7, "t1").review == "new" and s.observation(7, "t1").provenance.tracked_from is None
    assert s.observation(7, "t2").review == "unverified" and s.observation(7, "t2").provenance.tracked_from == "t1"
    assert s.new_lesion_ids("t1") == [7] and s.new_lesion_ids("t2") == []
    assert s.table_status(7, "t0") == "absent"  # the baseline was read whole


def test_carry_over_keeps_overlaps_reviews_and_ids_when_a_timepoint_is_added() -> None:
    s = _study(2)
    s.set_result(1, "tp0", _box_mask(BIG, (2, 6), (5, 20), (5, 20)), prompts=[PointPrompt(1, (4, 12, 12))])
    s.set_result(2, "tp0", _box_mask(BIG, (2, 6), (15, 30), (15, 30)))  # overlaps lesion 1
    s.set_result(2, "tp1", _box_mask(BIG, (2, 6), (15, 30), (16, 31)), tracked_from="tp0")
    s.set_lesion_info(1, name="nodule", site="lung")
    s.set_candidates("tp1", [{"centroid_mm": [0, 0, 0], "box": [0, 1, 0, 1, 0, 1], "score": 0.5}])
    s.remove_lesion(s.new_lesion())  # id 3 used up
    # rebuilt from the layers (display maps: the overlap is lost there) plus a new timepoint
    tps = [Timepoint(s[n].image, s[n].labels.copy()) for n in s.names]
    img = Image(np.zeros(BIG.shape, np.float32), BIG, name="tp9", acquisition_date="2025-01-01")
    fresh = Study([*tps, Timepoint(img)], sort_by_date=False)
    assert fresh.mask(1, "tp0").voxels < 900  # what importing the display map gives
    assert fresh.carry_over(s) == ["tp0", "tp1"]
    assert fresh.mask(1, "tp0").voxels == 900 and fresh.lesion_name(1) == "nodule" and fresh.site(1) == "lung"
    assert fresh.observation(2, "tp1").review == "unverified" and fresh.observation(1, "tp0").prompts
    assert len(fresh.candidates("tp1")) == 1 and fresh.next_lesion_id() == 4 and fresh.session_id == s.session_id
    assert fresh.table_status(1, "tp9") == "not tracked"
    np.testing.assert_array_equal(fresh["tp0"].labels.array, s["tp0"].labels.array)

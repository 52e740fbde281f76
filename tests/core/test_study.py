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

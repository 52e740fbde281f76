"""RECIST 1.1 on hand-computed cases: every branch, boundaries exactly at 30 %, 20 % and 5 mm."""

from __future__ import annotations

import pytest

from napari_lesionlocator.core.measurements import LesionMeasurement
from napari_lesionlocator.core.recist import evaluate_recist, recist_from_measurements, select_targets


def responses(diameters, **kw):
    return [t.response for t in evaluate_recist(diameters, **kw).timepoints]


def test_partial_response_boundary_exactly_30_percent():
    base = {1: 50.0, 2: 50.0}
    assert responses([base, {1: 35.0, 2: 35.0}]) == ["baseline", "PR"]  # -30 % exactly
    assert responses([base, {1: 35.0, 2: 35.1}]) == ["baseline", "SD"]  # -29.9 %
    # Floating point: 12.3 + 17.7 = 30.0 and 8.61 + 12.39 = 21.0 (-30 %) even with rounding noise.
    assert responses([{1: 12.3, 2: 17.7}, {1: 8.61, 2: 12.39}]) == ["baseline", "PR"]


def test_progression_needs_20_percent_and_5_mm_over_the_nadir():
    # Nadir 70 (after a PR): 84 is +14 mm = +20 % exactly -> PD; 83.9 is +19.9 % -> SD.
    s = evaluate_recist([{1: 100.0}, {1: 70.0}, {1: 84.0}])
    assert [t.response for t in s.timepoints] == ["baseline", "PR", "PD"]
    assert s.timepoints[2].nadir_mm == 70.0
    assert s.timepoints[2].change_vs_nadir_pct == pytest.approx(20.0)
    assert s.timepoints[2].change_vs_baseline_pct == pytest.approx(-16.0)
    assert responses([{1: 100.0}, {1: 70.0}, {1: 83.9}]) == ["baseline", "PR", "SD"]
    # Small lesions: +20 % but only +4 mm is not PD; +5 mm and +25 % is.
    assert responses([{1: 20.0}, {1: 24.0}]) == ["baseline", "SD"]
    assert responses([{1: 20.0}, {1: 25.0}]) == ["baseline", "PD"]
    # Both boundaries at once: 25 -> 30 is exactly +5 mm and exactly +20 %.
    assert responses([{1: 25.0}, {1: 30.0}]) == ["baseline", "PD"]
    assert responses([{1: 25.0}, {1: 29.9}]) == ["baseline", "SD"]
    # +5 mm but only +10 % is not PD either.
    assert responses([{1: 50.0}, {1: 55.0}]) == ["baseline", "SD"]


def test_nadir_is_the_smallest_earlier_sum_including_baseline():
    s = evaluate_recist([{1: 40.0}, {1: 44.0}, {1: 30.0}, {1: 36.0}, {1: 37.0}])
    assert [t.nadir_mm for t in s.timepoints] == [None, 40.0, 40.0, 30.0, 30.0]
    # 36 is +20 % of 30 but only +6 mm >= 5 -> PD; 37 also PD (still vs nadir 30, 36 is not lower).
    assert [t.response for t in s.timepoints] == ["baseline", "SD", "SD", "PD", "PD"]


def test_complete_response_uses_node_short_axis_below_10_mm():
    base = {1: 30.0, 2: 20.0}  # lesion 2 is a node: its diameter is its short axis
    assert responses([base, {1: 0.0, 2: 9.9}], nodes=[2]) == ["baseline", "CR"]
    # A node at exactly 10 mm is not normal: no CR; the sum fell 80 % -> PR.
    assert responses([base, {1: 0.0, 2: 10.0}], nodes=[2]) == ["baseline", "PR"]
    # Without node status, a 9.9 mm lesion has not disappeared.
    assert responses([base, {1: 0.0, 2: 9.9}]) == ["baseline", "PR"]
    # All non-nodal targets gone -> CR; the sum is 0.
    s = evaluate_recist([{1: 12.0, 3: 15.0}, {1: 0.0, 3: 0.0}])
    assert s.timepoints[1].response == "CR" and s.timepoints[1].sum_mm == 0.0
    assert s.timepoints[1].change_vs_baseline_pct == pytest.approx(-100.0)


def test_new_lesion_is_progression_whatever_the_sum():
    assert responses([{1: 50.0}, {1: 10.0}], new_lesions=[False, True]) == ["baseline", "PD"]
    assert responses([{1: 50.0}, {1: 0.0}], new_lesions=[False, True]) == ["baseline", "PD"]


def test_unmeasured_target_is_not_evaluable_unless_pd_is_proven():
    s = evaluate_recist([{1: 30.0, 2: 20.0}, {1: 10.0, 2: None}])
    assert s.timepoints[1].response == "NE" and s.timepoints[1].sum_mm is None
    # Lesion 1 alone already exceeds the nadir 50 by 20 % and 5 mm -> PD.
    assert responses([{1: 30.0, 2: 20.0}, {1: 60.0, 2: None}]) == ["baseline", "PD"]
    # An NE timepoint does not change the nadir.
    s = evaluate_recist([{1: 30.0}, {1: None}, {1: 36.0}])
    assert [t.nadir_mm for t in s.timepoints] == [None, 30.0, 30.0]
    assert s.timepoints[2].response == "PD"


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="at least one target"):
        evaluate_recist([{}])
    with pytest.raises(ValueError, match="no measurable baseline"):
        evaluate_recist([{1: 0.0}])
    with pytest.raises(ValueError, match="not target"):
        evaluate_recist([{1: 10.0}], nodes=[4])
    with pytest.raises(ValueError, match="timepoints"):
        evaluate_recist([{1: 10.0}, {1: 9.0}], new_lesions=[False])


def _row(lid, tp, long, short, present=True, date=None):
    return LesionMeasurement(lesion_id=lid, timepoint=tp, present=present, long_axis_mm=long,
                             short_axis_mm=short, date=date)


def test_from_measurements_nodes_absent_rows_and_new_ids():
    rows = [
        _row(1, 0, 40.0, 25.0, date="2024-01-01"), _row(2, 0, 30.0, 20.0), _row(3, 0, 8.0, 5.0),
        _row(1, 1, 20.0, 12.0, date="2024-03-01"), _row(2, 1, 25.0, 8.0), _row(3, 1, 0.0, 0.0, present=False),
        _row(1, 2, 0.0, 0.0, present=False), _row(2, 2, 12.0, 9.0), _row(5, 2, 11.0, 7.0),
    ]
    s = recist_from_measurements(rows, nodes=[2])
    # Lesion 3 (8 mm) is not measurable: targets are 1 and 2 (node, 20 mm short axis >= 15).
    assert s.targets == (1, 2) and s.nodes == (2,)
    t0, t1, t2 = s.timepoints
    assert t0.sum_mm == 60.0 and t0.date == "2024-01-01"  # 40 long + 20 short
    assert t1.sum_mm == 28.0 and t1.response == "PR" and t1.date == "2024-03-01"  # 20 + 8
    # Lesion 5 appears at timepoint 2: a new lesion -> PD, although 1 vanished and node 2 is 9 mm.
    assert t2.new_lesions and t2.response == "PD" and t2.sum_mm == 9.0
    s2 = recist_from_measurements(rows, targets=[1, 2], nodes=[2], new_lesions=[False, False, False])
    assert s2.timepoints[2].response == "CR"
    assert s2.to_dict()["timepoints"][2]["diameters_mm"] == {"1": 0.0, "2": 9.0}
    with pytest.raises(ValueError, match="not present at baseline"):
        recist_from_measurements(rows, targets=[5])


def test_select_targets_largest_measurable_first():
    rows = [_row(i, 0, float(10 + i), 5.0) for i in range(1, 8)] + [_row(9, 0, 30.0, 14.0), _row(10, 0, 9.9, 9.0)]
    assert select_targets(rows) == [4, 5, 6, 7, 9]  # the five largest, returned in id order
    assert select_targets(rows, nodes=[9]) == [3, 4, 5, 6, 7]  # node 9 has a 14 mm short axis: not measurable
    assert select_targets(rows, max_targets=2) == [7, 9]


def test_study_level_measurements_and_recist():
    import numpy as np

    from napari_lesionlocator.core.geometry import Geometry
    from napari_lesionlocator.core.image import Image, LabelMap
    from napari_lesionlocator.core.measurements import measure_study
    from napari_lesionlocator.core.recist import recist_for_study
    from napari_lesionlocator.core.study import Study, Timepoint

    geom = Geometry((4, 20, 60), spacing=(3.0, 1.0, 0.5))
    tps = []
    for k, (n1, n2, n3) in enumerate([(40, 30, 0), (20, 30, 0), (20, 24, 30)]):  # voxels along x (0.5 mm)
        lab = np.zeros(geom.shape, np.uint16)
        lab[1, 5, :n1] = 1
        lab[2, 10, :n2] = 2
        lab[3, 15, :n3] = 3
        img = Image(np.zeros(geom.shape, np.float32), geom, name=f"tp{k}", acquisition_date=f"2024-0{k + 1}-01")
        tps.append(Timepoint(img, LabelMap(lab, geom)))
    study = Study(tps, sort_by_date=False)
    study.rename_lesion(1, "liver")
    study.set_not_evaluable(2, "tp1")
    rows = measure_study(study)
    assert {(r.timepoint, r.lesion_id) for r in rows} == {(0, 1), (0, 2), (0, 3), (1, 1), (1, 3), (2, 1), (2, 2),
                                                          (2, 3)}
    r = next(r for r in rows if (r.timepoint, r.lesion_id) == (0, 1))
    assert r.name == "liver" and r.date == "2024-01-01" and r.long_axis_mm == pytest.approx(20.0)
    assert not next(r for r in rows if (r.timepoint, r.lesion_id) == (0, 3)).present
    s = recist_for_study(study, targets=[1, 2])
    # tp1: lesion 2 not evaluable -> NE; tp2: lesion 3 is new -> PD (although the sum fell 35 -> 22 mm).
    assert [t.response for t in s.timepoints] == ["baseline", "NE", "PD"]
    assert s.timepoints[2].sum_mm == pytest.approx(22.0) and s.timepoints[2].new_lesions

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


# ----------------------------------------------------------------- reasons, non-targets, provisional
def test_reasons_in_words():
    s = evaluate_recist([{1: 16.0, 2: 10.0}, {1: 20.0, 2: 12.0}])  # 26 -> 32 mm: +6 mm = +23.1 %
    assert s.timepoints[1].response == "PD"
    assert s.timepoints[1].reason.startswith("+23 % and +6 mm from nadir")
    assert s.timepoints[1].change_vs_nadir_mm == pytest.approx(6.0)
    s = evaluate_recist([{1: 50.0}, {1: 10.0}], new_lesion_ids=[(), (7,)])
    assert s.timepoints[1].response == "PD" and s.timepoints[1].reason == "new lesion 7"
    assert s.timepoints[1].new_lesions and s.timepoints[1].target_response == "PR"
    s = evaluate_recist([{1: 50.0}, {1: 30.0}, {1: 40.0}])
    assert s.timepoints[1].reason.startswith("-40 % from baseline")
    # 40 vs nadir 30: +33 % and +10 mm -> PD although still below the baseline
    assert s.timepoints[2].response == "PD" and s.timepoints[2].reason.startswith("+33 % and +10 mm from nadir")
    s = evaluate_recist([{1: 50.0, 2: 20.0}, {1: 45.0, 2: None}])
    assert s.timepoints[1].response == "NE" and s.timepoints[1].reason == "target lesion 2 not evaluated"


def test_non_target_lesions_in_the_overall_response():
    base = {1: 30.0}
    # targets CR + non-targets still present -> PR (RECIST table 1); non-targets gone -> CR
    r = evaluate_recist([base, {1: 0.0}], non_target=[None, "non-CR/non-PD"]).timepoints[1]
    assert r.response == "PR" and r.target_response == "CR" and "non-target lesions still present" in r.reason
    assert evaluate_recist([base, {1: 0.0}], non_target=[None, "CR"]).timepoints[1].response == "CR"
    assert evaluate_recist([base, {1: 0.0}], non_target=[None, "NE"]).timepoints[1].response == "PR"
    # unequivocal non-target progression -> PD whatever the targets do
    r = evaluate_recist([base, {1: 10.0}], non_target=[None, "PD"],
                        non_target_reasons=["", "unequivocal progression of non-target lesion 4"]).timepoints[1]
    assert r.response == "PD" and r.reason == "unequivocal progression of non-target lesion 4"
    # SD targets with non-targets not all evaluated stays SD (table 1)
    assert evaluate_recist([base, {1: 29.0}], non_target=[None, "NE"]).timepoints[1].response == "SD"
    # non-target disease only (table 2)
    only = evaluate_recist([{}, {}, {}, {}], non_target=[None, "non-CR/non-PD", "CR", "NE"])
    assert [t.response for t in only.timepoints] == ["baseline", "non-CR/non-PD", "CR", "NE"]
    assert only.timepoints[1].sum_mm is None
    with pytest.raises(ValueError, match="non-target response"):
        evaluate_recist([base, {1: 10.0}], non_target=[None, "progressing"])


def test_non_targets_from_measurements_nodes_normal_below_10_mm():
    rows = [
        _row(1, 0, 40.0, 25.0), _row(4, 0, 14.0, 12.0),  # 4: pathological node, non-target
        _row(1, 1, 0.0, 0.0, present=False), _row(4, 1, 11.0, 9.5),  # node now normal (< 10 mm)
        _row(1, 2, 0.0, 0.0, present=False), _row(4, 2, 12.0, 10.5),
    ]
    s = recist_from_measurements(rows, targets=[1], nodes=[4], non_targets=[4])
    assert s.non_targets == (4,)
    t1, t2 = s.timepoints[1:]
    assert t1.non_target_response == "CR" and t1.response == "CR"
    assert t2.non_target_response == "non-CR/non-PD" and t2.response == "PR"
    s = recist_from_measurements(rows, targets=[1], nodes=[4], non_targets=[4],
                                 non_target_progression=[[], [], [4]])
    assert s.timepoints[2].response == "PD" and "non-target lesion 4" in s.timepoints[2].reason


def test_select_targets_two_per_organ_and_thick_slices():
    rows = [_row(1, 0, 30.0, 20.0), _row(2, 0, 25.0, 20.0), _row(3, 0, 20.0, 15.0), _row(4, 0, 12.0, 8.0),
            _row(5, 0, 40.0, 16.0), _row(6, 0, 35.0, 18.0), _row(7, 0, 30.0, 15.5)]
    sites = {1: "lung", 2: "lung", 3: "lung", 4: "liver", 5: "lymph node", 6: "lymph node", 7: "lymph node"}
    # lung: 1, 2 (3 is the third lung lesion); nodes (short axis) 6 (18), 5 (16), not 7; liver 4
    assert select_targets(rows, sites=sites) == [1, 2, 4, 5, 6]
    # "other" is not limited per organ
    assert select_targets(rows[:3], sites={1: "other", 2: "other", 3: "other"}) == [1, 2, 3]
    # 7 mm slices: measurable needs >= 14 mm, so the 12 mm liver lesion is out
    assert select_targets(rows, sites=sites, slice_thickness_mm=7.0) == [1, 2, 5, 6]


# ----------------------------------------------------------------- the sample study, by hand
@pytest.fixture(scope="module")
def sample_study():
    from napari_lesionlocator.core.study import Study, Timepoint
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    syn = make_synthetic_study(seed=0, size="small")
    study = Study([Timepoint(i, lab) for i, lab in syn.pairs], patient_id=syn.case)
    for rec in syn.lesions:
        study.set_lesion_info(rec.id, site="lymph node" if rec.kind == "lymph_node" else rec.organ,
                              check_rules=False)
    return study


def test_sample_study_recist_by_hand(sample_study):
    """The sample's ground truth: lesion 7 new at follow-up 1, lymph node 4 gone at follow-up 2.

    Diameters measured on the ground-truth masks (mm, long axis; short axis for the node):

    ====  ======  =====  ======  ======  ======  =====================================
    id    site    tp0    tp1     tp2     role    why
    ====  ======  =====  ======  ======  ======  =====================================
    1     lung    12.90  14.75   16.70   non-t.  third lung lesion (2 per organ)
    2     lung    30.36  35.96   40.48   target
    3     liver   34.54  29.20   24.21   target
    4     node    14.78  11.57   --      non-t.  short axis < 15 mm: not measurable
    5     lung     9.33   8.62    9.60   non-t.  long axis < 10 mm: not measurable
    6     lung    37.32  41.01   40.89   target
    7     liver   --     12.90   17.31   new     appears at follow-up 1
    ====  ======  =====  ======  ======  ======  =====================================

    Sums: tp0 30.36 + 34.54 + 37.32 = 102.22; tp1 35.96 + 29.20 + 41.01 = 106.17 (+3.9 % vs
    baseline = nadir) -> targets SD, but new lesion 7 -> PD; tp2 40.48 + 24.21 + 40.89 = 105.58
    (+3.3 % vs nadir 102.22) -> SD, non-targets 1 and 5 persist -> SD.
    """
    from napari_lesionlocator.core.recist import auto_assign_targets, recist_for_study

    study = sample_study
    assert auto_assign_targets(study) == [2, 3, 6]
    assert study.non_targets() == [1, 4, 5] and study.role(7) == "not assessed"
    rows = {(r.lesion_id, r.timepoint): r for r in study.measurements()}
    assert rows[(4, 0)].short_axis_mm == pytest.approx(14.78, abs=0.01)
    assert not rows[(4, 2)].present and not rows[(7, 0)].present
    s = recist_for_study(study)
    assert s.targets == (2, 3, 6) and s.nodes == () and s.non_targets == (1, 4, 5)
    t0, t1, t2 = s.timepoints
    assert t0.sum_mm == pytest.approx(30.36 + 34.54 + 37.32, abs=0.02)
    assert t1.sum_mm == pytest.approx(35.96 + 29.20 + 41.01, abs=0.02)
    assert t1.change_vs_baseline_pct == pytest.approx(100 * (106.17 - 102.22) / 102.22, abs=0.05)
    assert (t1.target_response, t1.non_target_response, t1.response) == ("SD", "non-CR/non-PD", "PD")
    assert t1.new_lesion_ids == (7,) and t1.reason == "new lesion 7" and not t1.provisional
    assert t2.sum_mm == pytest.approx(40.48 + 24.21 + 40.89, abs=0.02)
    assert t2.nadir_mm == pytest.approx(102.22, abs=0.02)
    assert t2.response == "SD" and t2.new_lesion_ids == () and t2.reason.startswith("+3 % from baseline")
    assert study.table_status(4, study.names[2]) == "disappeared"
    assert study.table_status(7, study.names[1]) == "new"


def test_sample_study_unverified_and_unconfirmed(sample_study):
    """The same study as a reader meets it after tracking: nothing confirmed yet."""
    from napari_lesionlocator.core.recist import auto_assign_targets, recist_for_study

    study = sample_study
    auto_assign_targets(study)
    fu1, fu2 = study.names[1:]
    study.set_review(7, fu1, "unverified")  # the new lesion proposed but not confirmed
    study.set_review(6, fu2, "unverified")  # a target still to check at follow-up 2
    s = recist_for_study(study)
    assert s.timepoints[1].response == "SD" and not s.timepoints[1].provisional
    assert s.timepoints[2].provisional and s.timepoints[2].label == "SD (provisional)"
    study.set_review(7, fu1, "new")
    study.set_review(6, fu2, "accepted")
    s = recist_for_study(study)
    assert s.timepoints[1].response == "PD" and not s.timepoints[2].provisional
    # target 3 (liver) gone at follow-up 2 and the reader agrees: 0 mm, sum 40.48 + 40.89
    study.set_review(3, fu2, "disappeared")
    s = recist_for_study(study)
    assert s.timepoints[2].sum_mm == pytest.approx(40.48 + 40.89, abs=0.02)
    study.set_review(3, fu2, "accepted")


def test_a_new_lesion_is_new_once():
    rows = [_row(1, 0, 40.0, 25.0), _row(1, 1, 40.0, 25.0), _row(7, 1, 12.0, 8.0),
            _row(1, 2, 40.0, 25.0), _row(7, 2, 14.0, 9.0)]
    s = recist_from_measurements(rows, targets=[1])
    assert [t.new_lesion_ids for t in s.timepoints] == [(), (7,), ()]
    assert [t.response for t in s.timepoints] == ["baseline", "PD", "SD"]
    # The date of progression stays the first PD; a later SD says that progression was documented.
    assert s.progression is s.timepoints[1] and s.to_dict()["progression_timepoint"] == 1
    assert "progression was already documented at follow-up 1" in s.timepoints[2].reason
    assert "already documented" not in s.timepoints[1].reason


def test_no_progression_no_note():
    rows = [_row(1, 0, 40.0, 25.0), _row(1, 1, 30.0, 20.0), _row(1, 2, 26.0, 18.0)]
    s = recist_from_measurements(rows, targets=[1])
    assert s.progression is None and s.to_dict()["progression_timepoint"] is None
    assert not any("already documented" in t.reason for t in s.timepoints)

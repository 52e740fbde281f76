"""DICOM SR (TID 1500) per timepoint: per lesion volume, long/short axis, site, tracking id/UID, time point,
the reference to its SEG segment, and the RECIST response of each follow-up; read back with highdicom."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from test_dicom_seg import _random_case  # tests/io is on sys.path (rootdir-less "prepend" import mode)

from napari_lesionlocator.core.errors import OutputExistsError
from napari_lesionlocator.core.measurements import measure_mask
from napari_lesionlocator.core.recist import RecistTimepoint, recist_from_measurements
from napari_lesionlocator.io.dicom_seg import export_dicom_study
from napari_lesionlocator.io.dicom_sr import read_dicom_sr, write_dicom_sr


def _rows(image, lesions, timepoint):
    return [measure_mask(r.mask.to_full(), image.geometry, lesion_id=lid, image=image, timepoint=timepoint)
            for lid, r in lesions.items()]


@pytest.mark.parametrize("seed", [0, 1])
def test_two_timepoints_measurements_tracking_and_recist(tmp_path, seed) -> None:
    img0, les0 = _random_case(seed, oblique=False)
    img1, les1 = _random_case(seed + 10, oblique=True)
    img1.name = "fu1"
    exp = export_dicom_study([img0, img1], [les0, les1], tmp_path, sites={2: "lung", 5: "lymph node"})
    rows0, rows1 = _rows(img0, les0, 0), _rows(img1, les1, 1)
    recist = recist_from_measurements(rows0 + rows1, targets=[2, 5], n_timepoints=2)
    paths = []
    for k, (rows, build) in enumerate(zip((rows0, rows1), exp.builds, strict=True)):
        paths.append(write_dicom_sr(tmp_path / f"tp{k}_sr.dcm", build, rows, exp.descriptions, timepoint_index=k,
                                    recist=recist.timepoints[k]))
    for k, (path, rows, build) in enumerate(zip(paths, (rows0, rows1), exp.builds, strict=True)):
        sr = hd.sr.srread(path)
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        groups = sr.content.get_volumetric_roi_measurement_groups()
        assert len(groups) == 2  # lesions 2 and 5 have voxels; the lost lesion 11 is not a volumetric ROI
        by_uid = {g.tracking_uid: g for g in groups}
        for lid in (2, 5):
            g = by_uid[exp.descriptions[lid].tracking_uid]  # the SEG's tracking UID, same at every timepoint
            values = {m.name.meaning: m.value for m in g.get_measurements()}
            row = next(r for r in rows if r.lesion_id == lid)
            assert values["Volume"] == pytest.approx(row.volume_ml * 1000, rel=1e-9)
            assert values["Long axis"] == pytest.approx(row.long_axis_mm, rel=1e-9)
            assert values["Short axis"] == pytest.approx(row.short_axis_mm, rel=1e-9)
            assert g.referenced_segment is not None  # highdicom finds the SEG reference
            assert g.reference_type.meaning == "Referenced Segment"
        back = read_dicom_sr(path)
        assert {les.tracking_id for les in back.lesions} == {"lesion-2", "lesion-5", "lesion-11"}
        les = {x.tracking_id: x for x in back.lesions}
        assert les["lesion-2"].site == "Lung" and les["lesion-5"].site == "Lymph Node"
        assert les["lesion-2"].seg_sop_instance_uid == build.dataset.SOPInstanceUID
        assert les["lesion-5"].segment_number == build.segment_of[5]
        assert not les["lesion-11"].present and les["lesion-11"].values["long_axis_mm"] == 0
        assert les["lesion-2"].time_point == ("baseline" if k == 0 else "follow-up 1")
        assert les["lesion-2"].time_point_order == k + 1
        assert les["lesion-2"].values["mean_hu"] == pytest.approx(
            next(r for r in rows if r.lesion_id == 2).mean_hu)
        assert build.dataset.SeriesInstanceUID in back.evidence_series
        if k == 0:
            assert back.response is None
        else:
            assert back.response == recist.timepoints[1].response
            assert back.sum_mm == pytest.approx(recist.timepoints[1].sum_mm)
    uids = [{x.tracking_id: x.tracking_uid for x in read_dicom_sr(p).lesions} for p in paths]
    assert uids[0] == uids[1]


@pytest.mark.parametrize("response", ["CR", "PR", "SD", "PD", "NE"])
def test_every_response_round_trips(tmp_path, response) -> None:
    img, les = _random_case(3, oblique=False)
    exp = export_dicom_study([img], [les], tmp_path)
    total = None if response == "NE" else 12.5
    tp = RecistTimepoint(1, total, None, None, 20.0, response)
    path = write_dicom_sr(tmp_path / "sr.dcm", exp.builds[0], _rows(img, les, 1), exp.descriptions,
                          timepoint_index=1, recist=tp)
    back = read_dicom_sr(path)
    assert back.response == response
    assert back.sum_mm == total
    with pytest.raises(OutputExistsError):
        write_dicom_sr(path, exp.builds[0], _rows(img, les, 1), exp.descriptions, timepoint_index=1)
    assert np.isfinite(list(back.lesions[0].values.values())).all()

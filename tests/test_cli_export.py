"""`lesionlocator export`: every format from one planned set of files, nothing overwritten silently, files
with the user's umask; the sample study exports to DICOM-SEG + SR and re-imports voxel-equal with the same
tracking ids; overlapping own masks from a segment output stay apart."""

from __future__ import annotations

import json
import os
import stat

import highdicom as hd
import numpy as np
import pytest

from napari_lesionlocator.cli import main
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.core.results import LesionMask, LesionResult
from napari_lesionlocator.io.dicom_seg import read_dicom_seg
from napari_lesionlocator.io.dicom_sr import read_dicom_sr
from napari_lesionlocator.io.images import read_label_map, write_image, write_label_map


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    from napari_lesionlocator.sample.synthetic import make_synthetic_study

    study = make_synthetic_study(seed=0, size="small")
    folder = tmp_path_factory.mktemp("sample")
    images, labels = [], []
    for img, lab in zip(study.images, study.labels, strict=True):
        images.append(write_image(img, folder / f"{img.name}.nii.gz"))
        labels.append(write_label_map(lab, folder / f"{img.name}_truth.nii.gz"))
    return study, images, labels


def test_sample_study_exports_everything_and_reimports(sample_files, tmp_path, capsys) -> None:
    study, images, labels = sample_files
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        rc = main(["export", "-i", *map(str, images), "-l", *map(str, labels), "-o", str(out), "-q",
                   "--formats", "nifti", "nrrd", "mha", "lesions", "prompts", "tables", "dicom-sr",
                   "--names", "1=RUL mass", "--sites", "1=lung", "4=lymph node", "--engine-name", "classical",
                   "--edited", "2"])
    finally:
        os.umask(old)
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    names = [img.name for img in study.images]
    for name, truth in zip(names, study.labels, strict=True):
        for suffix in (".nii.gz", ".nrrd", ".mha"):
            back = read_label_map(out / f"{name}_lesions{suffix}")
            np.testing.assert_array_equal(back.array, truth.array)
            assert back.geometry.same_grid(truth.geometry)
        for lid in truth.ids:
            m = read_label_map(out / f"{name}_lesion_{lid}.nii.gz")
            np.testing.assert_array_equal(m.array.astype(bool), truth.array == lid)
        prompts = json.loads((out / f"{name}_prompts.json").read_text())
        assert sorted(int(k) for k in prompts) == truth.ids and all("box" in v for v in prompts.values())
    assert (out / "lesion_table_lesions.csv").exists() and (out / "lesion_table_recist.csv").exists()
    # DICOM: SEG + CT series + SR per timepoint, files 0644 under umask 022
    tracking = []
    for k, (name, truth) in enumerate(zip(names, study.labels, strict=True)):
        seg_path = out / "dicom" / f"{name}_seg.dcm"
        assert stat.S_IMODE(seg_path.stat().st_mode) == 0o644
        imp = read_dicom_seg(seg_path)  # finds <name>_ct/ next to it
        assert imp.image.geometry.same_grid(truth.geometry)
        assert sorted(imp.lesions) == truth.ids
        for lid in truth.ids:
            np.testing.assert_array_equal(imp.lesions[lid].mask.to_full(), truth.array == lid)
        tracking.append({lid: d.tracking_uid for lid, d in imp.descriptions.items()})
        assert imp.descriptions[1].label == "RUL mass" and imp.descriptions[1].site == "Lung"
        assert imp.descriptions[2].algorithm_type == "MANUAL"
        assert imp.descriptions[1].algorithm_type == ("SEMIAUTOMATIC" if k == 0 else "AUTOMATIC")
        assert imp.descriptions[1].engine == "classical"
        report = read_dicom_sr(out / "dicom" / f"{name}_sr.dcm")
        assert {les.tracking_uid for les in report.lesions if les.present} >= set(tracking[-1].values())
        assert (report.response is None) == (k == 0)
    for lid in (1, 2, 3, 5, 6):  # present at every timepoint: one tracking UID throughout
        assert len({t[lid] for t in tracking}) == 1
    assert tracking[1][7] == tracking[2][7]  # the new lesion keeps its UID from its first timepoint on
    assert "dicom-seg:" in printed and "dicom-sr:" in printed

    # a second run writes nothing and exits 3; --overwrite replaces
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    rc = main(["export", "-i", str(images[0]), "-l", str(labels[0]), "-o", str(out), "-q",
               "--formats", "nifti", "dicom-seg"])
    assert rc == 3
    assert "nothing was written" in capsys.readouterr().err
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    rc = main(["export", "-i", str(images[0]), "-l", str(labels[0]), "-o", str(out), "-q",
               "--formats", "nifti", "--overwrite"])
    assert rc == 0


def test_own_masks_of_a_segment_output_stay_apart(tmp_path, capsys) -> None:
    from napari_lesionlocator.api.outputs import write_case_outputs

    g = Geometry((16, 30, 30), (2.0, 0.8, 0.8), (10.0, -5.0, 3.0))
    img = Image(np.random.default_rng(0).normal(0, 30, g.shape).astype(np.float32).round(), g, "ct")
    write_image(img, tmp_path / "ct.nii.gz")
    a = np.zeros(g.shape, bool)
    a[4:10, 5:15, 5:15] = True
    b = np.zeros(g.shape, bool)
    b[6:12, 10:20, 10:20] = True
    lesions = {1: LesionResult(1, LesionMask.from_full(g, a)), 2: LesionResult(2, LesionMask.from_full(g, b))}
    write_case_outputs(tmp_path / "seg", "ct", lesions, g)
    rc = main(["export", "-i", str(tmp_path / "ct.nii.gz"), "-l", str(tmp_path / "seg" / "ct_lesions.nii.gz"),
               "-o", str(tmp_path / "out"), "--formats", "dicom-seg", "lesions", "-q"])
    assert rc == 0, capsys.readouterr().err
    imp = read_dicom_seg(tmp_path / "out" / "dicom" / "ct_seg.dcm")
    np.testing.assert_array_equal(imp.lesions[1].mask.to_full(), a)  # not cut by lesion 2
    np.testing.assert_array_equal(imp.lesions[2].mask.to_full(), b)
    assert imp.overlaps == [(1, 2, int((a & b).sum()))]
    np.testing.assert_array_equal(read_label_map(tmp_path / "out" / "ct_lesion_1.nii.gz").array.astype(bool), a)


def test_dicom_input_is_referenced_not_copied(tmp_path, capsys) -> None:
    from napari_lesionlocator.io.dicom import read_dicom_folder, write_dicom_series

    g = Geometry((10, 24, 20), (2.5, 0.7, 0.9), (-40.0, 12.0, 7.5))
    img = Image(np.random.default_rng(1).normal(0, 30, g.shape).astype(np.float32).round(), g, "ct")
    write_dicom_series(img, tmp_path / "ct", patient_id="P7", acquisition_date="2023-05-06")
    (ct,) = read_dicom_folder(tmp_path / "ct")
    arr = np.zeros(g.shape, np.uint8)
    arr[3:6, 5:12, 4:10] = 4
    write_label_map(LabelMap(arr, ct.geometry), tmp_path / "labels.nii.gz")
    rc = main(["export", "-i", str(tmp_path / "ct"), "-l", str(tmp_path / "labels.nii.gz"), "-o",
               str(tmp_path / "out"), "--formats", "dicom-sr", "-q"])
    assert rc == 0, capsys.readouterr().err
    (seg_path,) = (tmp_path / "out" / "dicom").glob("*_seg.dcm")
    assert not list((tmp_path / "out" / "dicom").glob("*_ct"))  # the DICOM series itself is referenced
    seg = hd.seg.segread(seg_path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.metadata["series_instance_uid"]
    assert seg.PatientID == "P7"
    imp = read_dicom_seg(seg_path, tmp_path / "ct")
    np.testing.assert_array_equal(imp.labels.array, arr)
    (sr_path,) = (tmp_path / "out" / "dicom").glob("*_sr.dcm")
    assert read_dicom_sr(sr_path).lesions[0].tracking_id == "lesion-4"


def test_bad_usage(tmp_path, capsys) -> None:
    g = Geometry((4, 8, 8))
    write_image(Image(np.zeros(g.shape, np.float32), g, "a"), tmp_path / "a.nii.gz")
    assert main(["export", "-i", str(tmp_path / "a.nii.gz"), "-o", str(tmp_path / "o")]) == 2
    assert "one -l per -i" in capsys.readouterr().err
    other = Geometry((4, 8, 9))
    write_label_map(LabelMap(np.ones(other.shape, np.uint8), other), tmp_path / "l.nii.gz")
    assert main(["export", "-i", str(tmp_path / "a.nii.gz"), "-l", str(tmp_path / "l.nii.gz"),
                 "-o", str(tmp_path / "o")]) == 2


def test_export_from_the_study_model(sample_files, tmp_path) -> None:
    """What the napari review holds (a core Study with names, sites, edits) exports with them."""
    from napari_lesionlocator.cli.export import export_study_model
    from napari_lesionlocator.core.study import Study, Timepoint

    study_data, _, _ = sample_files
    study = Study([Timepoint(img, lab) for img, lab in zip(study_data.images, study_data.labels, strict=True)])
    study.set_lesion_info(1, name="RUL mass", site="lung")
    study.set_lesion_info(4, site="lymph node")
    obs = study.observation(2, study.timepoints[1].name)
    obs.provenance.record_edit()
    written = export_study_model(study, tmp_path, formats=["dicom-seg", "tables"])
    seg1 = read_dicom_seg(written["dicom-seg"][2])  # [seg0, ct0, seg1, ct1, ...]
    assert seg1.descriptions[1].label == "RUL mass" and seg1.descriptions[1].site == "Lung"
    assert seg1.descriptions[2].algorithm_type == "MANUAL"
    seg0 = read_dicom_seg(written["dicom-seg"][0])
    assert seg0.descriptions[4].site == "Lymph Node"
    assert seg0.descriptions[1].tracking_uid == seg1.descriptions[1].tracking_uid

"""DICOM-SEG export and import (highdicom): masks voxel-equal, segments and tracking ids as written,
real SEGs from dcmqi and highdicom placed on their CT, and the bad-input cases named clearly."""

from __future__ import annotations

import shutil
import stat

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from napari_lesionlocator.core.errors import InputImageError, OutputExistsError
from napari_lesionlocator.core.geometry import Geometry
from napari_lesionlocator.core.image import Image, LabelMap
from napari_lesionlocator.core.results import LesionMask, LesionResult
from napari_lesionlocator.io.dicom import read_dicom_folder, write_dicom_series
from napari_lesionlocator.io.dicom_seg import (
    SEG_SOP_CLASS_UID,
    ct_series_datasets,
    describe_lesions,
    export_dicom_study,
    find_dicom_segs,
    is_dicom_seg,
    lesion_id_from_tracking_id,
    read_dicom_seg,
    read_dicom_seg_folder,
    tracking_uid,
    write_ct_series,
    write_dicom_seg,
)


def _rotation(seed: int) -> tuple[float, ...]:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return tuple(q.reshape(-1))


def _random_case(seed: int, *, oblique: bool):
    """An image on a random grid and 3 random blob lesions, two of which overlap, one empty (lost)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers([12, 24, 28], [24, 40, 48]))
    g = Geometry(shape, spacing=tuple(rng.uniform(0.5, 3.0, 3)), origin=tuple(rng.uniform(-200, 200, 3)),
                 direction=_rotation(seed) if oblique else (1, 0, 0, 0, 1, 0, 0, 0, 1))
    img = Image(rng.normal(0, 80, shape).astype(np.float32).round(), g, f"case{seed}",
                acquisition_date="2021-03-04")
    zz, yy, xx = np.indices(shape)
    lesions = {}
    centre = np.array(shape) / 2
    for lid, off in ((2, -1.5), (5, 1.5)):
        c = centre + off + rng.uniform(-1, 1, 3)
        r = rng.uniform(4, 6)
        m = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < r**2
        lesions[lid] = LesionResult(lid, LesionMask.from_full(g, m), provenance={"engine": "classical"})
    lesions[5].provenance["edited"] = True
    lesions[11] = LesionResult(11, LesionMask.empty(g), status="lost")
    return img, lesions


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("oblique", [False, True])
def test_round_trip_voxel_equal_random_grids(tmp_path, seed, oblique) -> None:
    img, lesions = _random_case(seed, oblique=oblique)
    assert lesions[2].mask.overlap_voxels(lesions[5].mask) > 0  # overlapping masks are the point
    res = export_dicom_study([img], [lesions], tmp_path, names={2: "RUL mass"}, sites={2: "lung", 5: "lymph node"},
                             engine="classical", model="region-growing v1")
    (seg_path,) = res.seg_paths
    assert res.ct_folders[0] is not None and len(list(res.ct_folders[0].iterdir())) == img.shape[0]
    assert any("[11]" in m for m in res.messages)  # the lost lesion: no segment, reported

    # highdicom reads it back: segments, tracking ids/UIDs, algorithm types as written
    seg = hd.seg.segread(seg_path)
    assert seg.SOPClassUID == SEG_SOP_CLASS_UID
    assert seg.number_of_segments == 2
    d1, d2 = seg.get_segment_description(1), seg.get_segment_description(2)
    assert (d1.segment_label, d1.tracking_id, d1.algorithm_type.value) == ("RUL mass", "lesion-2", "SEMIAUTOMATIC")
    assert (d2.tracking_id, d2.algorithm_type.value) == ("lesion-5", "MANUAL")
    assert d1.tracking_uid == res.descriptions[2].tracking_uid
    algo = d1.algorithm_identification[0]
    assert algo.AlgorithmName == "classical" and "region-growing v1" in str(algo.AlgorithmParameters)
    assert str(d1.anatomic_regions[0].value) == "39607008"  # SNOMED CT lung
    # every CT instance is referenced; same frame of reference
    ct_files = sorted(res.ct_folders[0].iterdir())
    ct0 = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    refs = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct_files}
    assert seg.FrameOfReferenceUID == ct0.FrameOfReferenceUID

    # our reader: CT found next to the SEG, same grid, masks voxel-equal, ids from the tracking ids
    imp = read_dicom_seg(seg_path)
    assert imp.image.geometry.same_grid(img.geometry)
    np.testing.assert_array_equal(imp.image.array, img.array)
    assert sorted(imp.lesions) == [2, 5]
    for lid in (2, 5):
        np.testing.assert_array_equal(imp.lesions[lid].mask.to_full(), lesions[lid].mask.to_full())
        assert imp.descriptions[lid].tracking_uid == res.descriptions[lid].tracking_uid
    assert imp.descriptions[2].label == "RUL mass" and imp.descriptions[2].site == "Lung"
    assert imp.overlaps and imp.overlaps[0][:2] == (2, 5)
    assert any("overlap" in m for m in imp.messages)
    # the display map: later segment wins, or the earlier when asked
    shared = lesions[2].mask.to_full() & lesions[5].mask.to_full()
    assert np.all(imp.labels.array[shared] == 5)
    assert np.all(read_dicom_seg(seg_path, overlap_winner="earlier").labels.array[shared] == 2)

    # pydicom alone: the frames' pixels sum to the voxels written
    raw = pydicom.dcmread(seg_path)
    assert int(raw.pixel_array.astype(bool).sum()) == lesions[2].voxels + lesions[5].voxels


def test_study_tracking_uids_identical_at_every_timepoint(tmp_path) -> None:
    img0, les0 = _random_case(3, oblique=False)
    img1, les1 = _random_case(4, oblique=True)
    img1.name = "fu1"
    for r in les1.values():
        r.provenance.pop("edited", None)
    res = export_dicom_study([img0, img1], [les0, les1], tmp_path, patient_id="P1")
    uids = []
    for p in res.seg_paths:
        seg = hd.seg.segread(p)
        uids.append({d.tracking_id: d.tracking_uid for d in seg.SegmentSequence})
        assert seg.PatientID == "P1"
    assert uids[0] == uids[1] and set(uids[0]) == {"lesion-2", "lesion-5"}
    fu = hd.seg.segread(res.seg_paths[1])
    assert {d.SegmentAlgorithmType for d in fu.SegmentSequence} == {"AUTOMATIC"}  # tracked, not edited
    assert tracking_uid("P1|x", 2) == tracking_uid("P1|x", 2) != tracking_uid("P1|y", 2)


def test_seg_references_the_dicom_source_series(tmp_path) -> None:
    img, lesions = _random_case(5, oblique=False)
    write_dicom_series(img, tmp_path / "ct", acquisition_date="2021-03-04", patient_id="PX")
    (ct,) = read_dicom_folder(tmp_path / "ct")
    built = write_dicom_seg(ct, lesions, tmp_path / "seg.dcm",
                            descriptions=describe_lesions(lesions, study_key="k"))
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.metadata["series_instance_uid"]
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == img.shape[0]
    assert seg.StudyInstanceUID == ct.metadata["study_instance_uid"] and seg.PatientID == "PX"
    assert built.segment_of == {2: 1, 5: 2} and built.skipped == [11]
    imp = read_dicom_seg(tmp_path / "seg.dcm")  # the CT series sits in a sibling folder
    for lid in (2, 5):
        np.testing.assert_array_equal(imp.lesions[lid].mask.to_full(), lesions[lid].mask.to_full())


def test_label_map_input_and_no_silent_overwrite(tmp_path) -> None:
    img, lesions = _random_case(6, oblique=False)
    arr = np.zeros(img.shape, np.uint16)
    arr[2:5, 3:9, 4:10] = 3
    arr[6:8, 10:14, 10:20] = 300  # ids > 255 keep their number through the tracking id
    src = ct_series_datasets(img)
    write_ct_series(src, tmp_path / "ct")
    write_dicom_seg(img, LabelMap(arr, img.geometry), tmp_path / "seg.dcm", source=src)
    imp = read_dicom_seg(tmp_path / "seg.dcm")
    assert sorted(imp.lesions) == [3, 300]
    np.testing.assert_array_equal(imp.labels.array, arr)
    with pytest.raises(OutputExistsError):
        write_dicom_seg(img, LabelMap(arr, img.geometry), tmp_path / "seg.dcm", source=src)
    with pytest.raises(OutputExistsError):
        write_ct_series(src, tmp_path / "ct")
    write_dicom_seg(img, LabelMap(arr, img.geometry), tmp_path / "seg.dcm", source=src, overwrite=True)


def test_files_follow_the_umask(tmp_path) -> None:
    import os

    img, lesions = _random_case(7, oblique=False)
    old = os.umask(0o022)
    try:
        res = export_dicom_study([img], [lesions], tmp_path)
    finally:
        os.umask(old)
    mode = stat.S_IMODE(res.seg_paths[0].stat().st_mode)
    assert mode == 0o644
    assert stat.S_IMODE(next(res.ct_folders[0].iterdir()).stat().st_mode) == 0o644


def test_tracking_id_parsing() -> None:
    assert lesion_id_from_tracking_id("lesion-7") == 7
    assert lesion_id_from_tracking_id("Lesion 12") == 12
    assert lesion_id_from_tracking_id("Liver") is None
    assert lesion_id_from_tracking_id("lesion-0") is None


# ---------------------------------------------------------------- real SEGs
def test_dcmqi_liver_and_partial_overlaps_match_their_nrrd(real_data_dir) -> None:
    base = real_data_dir / "dcmqi_seg"
    liver = read_dicom_seg(base / "seg" / "liver.dcm")  # finds ../ct-3slice by itself
    assert liver.image.shape == (3, 512, 512)
    assert liver.descriptions[1].label == "Liver" and liver.lesions[1].voxels == 107098
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(base / "nrrd" / "liver_seg.nrrd"))) > 0
    np.testing.assert_array_equal(liver.lesions[1].mask.to_full(), truth)

    over = read_dicom_seg(base / "seg" / "partial_overlaps.dcm", base / "ct-3slice")
    assert [over.descriptions[i].label for i in range(1, 6)] == ["GREEN", "ORANGE", "PURPLE", "LIGHT_BLUE",
                                                                   "DARK_BLUE"]
    assert [over.lesions[i].voxels for i in range(1, 6)] == [9602, 11888, 10743, 6693, 4713]
    for k in (1, 2, 3):
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(base / "nrrd" / f"partial_overlaps-{k}.nrrd")))
        for lab in (int(v) for v in np.unique(arr) if v):
            np.testing.assert_array_equal(over.lesions[lab].mask.to_full(), arr == lab)
    stacked = np.stack([over.lesions[i].mask.to_full() for i in range(1, 6)]).sum(axis=0)
    assert int((stacked > 1).sum()) == 3106  # SOURCE.md: voxels in more than one segment
    assert over.overlaps and all("overlap" in m for m in over.messages)


@pytest.mark.parametrize(("name", "voxels", "fractional"), [
    ("seg_image_ct_binary.dcm", [638], False),
    ("seg_image_ct_binary_fractional.dcm", [638], True),
    ("seg_image_ct_true_fractional.dcm", [638], True),
    ("seg_image_ct_binary_single_frame.dcm", [1832], False),
])
def test_highdicom_segs_on_their_ct(real_data_dir, name, voxels, fractional) -> None:
    imp = read_dicom_seg(real_data_dir / "highdicom_pydicom_seg" / "seg" / name)
    assert [imp.lesions[i].voxels for i in sorted(imp.lesions)] == voxels
    assert imp.descriptions[1].label == "first segment"
    # ct2 is not a regular volume (one slice 202 mm away), CT_small is one slice: both are said
    assert any("not a regular volume" in m for m in imp.messages)
    assert any("FRACTIONAL" in m for m in imp.messages) == fractional
    # voxel-equal to highdicom's own decoding on the same slices
    seg = hd.seg.segread(real_data_dir / "highdicom_pydicom_seg" / "seg" / name)
    total = sum(int((seg.get_stored_frame(i + 1) >= (128 if fractional else 1)).sum())
                for i in range(seg.NumberOfFrames))
    assert sum(voxels) == total


def test_highdicom_overlap_seg_reports_what_it_left_out(real_data_dir) -> None:
    imp = read_dicom_seg(real_data_dir / "highdicom_pydicom_seg" / "seg" / "seg_image_ct_binary_overlap.dcm")
    assert {d.label for d in imp.descriptions.values()} == {"first segment", "second segment"}
    # segment 2 lies inside segment 1 on every slice: kept apart, reported
    a, b = imp.lesions[1].mask.to_full(), imp.lesions[2].mask.to_full()
    assert b.sum() == 12 and np.all(a[b])
    assert imp.overlaps == [(1, 2, 12)]
    assert any("left out" in m for m in imp.messages)


# ---------------------------------------------------------------- bad input
def test_missing_series_other_frame_of_reference_truncated(real_data_dir, tmp_path) -> None:
    liver = real_data_dir / "dcmqi_seg" / "seg" / "liver.dcm"
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(liver, lone / "liver.dcm")
    with pytest.raises(InputImageError, match="CT series .* is not in"):
        read_dicom_seg(lone / "liver.dcm")

    ds = pydicom.dcmread(liver)
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "other_for.dcm")
    with pytest.raises(InputImageError, match="frame of reference"):
        read_dicom_seg(tmp_path / "other_for.dcm", real_data_dir / "dcmqi_seg" / "ct-3slice")

    data = liver.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match="cut.dcm"):
        read_dicom_seg(tmp_path / "cut.dcm", real_data_dir / "dcmqi_seg" / "ct-3slice")

    ct_file = next((real_data_dir / "dcmqi_seg" / "ct-3slice").iterdir())
    with pytest.raises(InputImageError, match="not a DICOM-SEG"):
        read_dicom_seg(ct_file)
    assert is_dicom_seg(liver) and not is_dicom_seg(ct_file) and not is_dicom_seg(tmp_path / "nothing.dcm")


def test_folder_with_several_series_and_segs(real_data_dir, tmp_path) -> None:
    """CT + 2 good SEGs + a SEG on another frame of reference + a SEG without its CT + a truncated file."""
    base = real_data_dir / "dcmqi_seg"
    shutil.copytree(base / "ct-3slice", tmp_path / "ct")
    shutil.copy(base / "seg" / "liver.dcm", tmp_path / "liver.dcm")
    shutil.copy(base / "seg" / "partial_overlaps.dcm", tmp_path / "po.dcm")
    ds = pydicom.dcmread(base / "seg" / "liver.dcm")
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "wrong_for.dcm")
    shutil.copy(real_data_dir / "highdicom_pydicom_seg" / "seg" / "seg_image_ct_binary.dcm", tmp_path / "orphan.dcm")
    data = (base / "seg" / "liver.dcm").read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) // 3])
    assert {p.name for p in find_dicom_segs(tmp_path)} >= {"liver.dcm", "po.dcm", "wrong_for.dcm", "orphan.dcm"}
    res = read_dicom_seg_folder(tmp_path)
    assert sorted(s.seg_path.name for s in res.segs) == ["liver.dcm", "po.dcm"]
    assert len(res.images) == 1 and res.images[0].shape == (3, 512, 512)
    text = " | ".join(res.problems)
    assert "wrong_for.dcm" in text and "frame of reference" in text
    assert "orphan.dcm" in text and "not in" in text
    assert "truncated.dcm" in text and "truncated" in text


def test_truncated_ct_slice_is_named_and_the_rest_loads(real_data_dir, tmp_path) -> None:
    base = real_data_dir / "dcmqi_seg"
    shutil.copytree(base / "ct-3slice", tmp_path / "ct")
    shutil.copy(base / "seg" / "liver.dcm", tmp_path / "liver.dcm")
    data = (tmp_path / "ct" / "02.dcm").read_bytes()
    (tmp_path / "ct" / "02.dcm").write_bytes(data[: len(data) // 2])  # a slice cut in half
    img, lesions = _random_case(8, oblique=False)
    export_dicom_study([img], [lesions], tmp_path / "other")  # a second, intact CT + SEG
    res = read_dicom_seg_folder(tmp_path)
    assert [s.seg_path.name for s in res.segs] == [f"{img.name}_seg.dcm"]  # the intact pair still loads
    text = " | ".join(res.problems)
    assert "liver.dcm" in text and ("missing or unreadable" in text or "between its voxels" in text)
    for lid in (2, 5):
        np.testing.assert_array_equal(res.segs[0].lesions[lid].mask.to_full(), lesions[lid].mask.to_full())


def test_non_ct_series(tmp_path) -> None:
    img, lesions = _random_case(9, oblique=True)
    img.modality = "MR"
    res = export_dicom_study([img], [lesions], tmp_path / "mr")
    ct0 = pydicom.dcmread(next(res.ct_folders[0].iterdir()), stop_before_pixels=True)
    assert ct0.Modality == "MR" and ct0.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    imp = read_dicom_seg(res.seg_paths[0])
    assert imp.image.modality == "MR"
    np.testing.assert_array_equal(imp.lesions[2].mask.to_full(), lesions[2].mask.to_full())
    img.modality = "PT"
    with pytest.raises(InputImageError, match="CT or MR"):
        export_dicom_study([img], [lesions], tmp_path / "pt")
    assert not (tmp_path / "pt" / f"{img.name}_seg.dcm").exists()


def test_labelmap_seg_from_highdicom(tmp_path) -> None:
    """A LABELMAP SEG (DICOM 2024; one frame holds every segment) written by highdicom itself."""
    from pydicom.sr.codedict import codes

    img, lesions = _random_case(10, oblique=False)
    src = ct_series_datasets(img)
    write_ct_series(src, tmp_path / "ct")
    arr = np.zeros(img.shape, np.uint8)
    arr[2:5, 3:9, 4:10] = 1
    arr[6:8, 10:14, 10:20] = 2
    descs = [hd.seg.SegmentDescription(i, f"seg {i}", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion,
                                       "MANUAL") for i in (1, 2)]
    seg = hd.seg.Segmentation(src, arr, "LABELMAP", descs, hd.UID(), 5, hd.UID(), 1, "test", "test", "1", "1")
    seg.save_as(tmp_path / "labelmap.dcm")
    imp = read_dicom_seg(tmp_path / "labelmap.dcm")
    np.testing.assert_array_equal(imp.labels.array, arr)
    assert [imp.descriptions[i].label for i in (1, 2)] == ["seg 1", "seg 2"]

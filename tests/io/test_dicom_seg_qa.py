"""Rating and correcting an existing SEG (IDC AI-annotation QA): Likert 1-5 per segment with the IDC
definitions, resumable session, qa-results.csv shaped like IDC's, and the corrected SEG."""

from __future__ import annotations

import csv

import highdicom as hd
import numpy as np
import pytest
from scipy import ndimage

from napari_lesionlocator.core.errors import PromptError
from napari_lesionlocator.io.dicom_seg import read_dicom_seg
from napari_lesionlocator.io.qa import LIKERT, QA_FIXED_COLUMNS, QASession, segment_column, write_qa_results_csv


def test_likert_definitions_are_idcs() -> None:
    assert sorted(LIKERT) == [1, 2, 3, 4, 5]
    assert LIKERT[5].startswith("Strongly Agree - Use-as-is")
    assert LIKERT[1].startswith("Strongly disagree - Unusable")
    assert "start from the scratch" in LIKERT[2]


def test_rate_correct_resume_and_export(real_data_dir, tmp_path) -> None:
    base = real_data_dir / "dcmqi_seg"
    seg_path = base / "seg" / "partial_overlaps.dcm"
    s = QASession.from_seg(seg_path, base / "ct-3slice", reviewer="rad1", collection="dcmqi-test")
    assert s.segment_ids == [1, 2, 3, 4, 5] and s.names[1] == "GREEN"
    s.rate(1, 5)
    s.rate(2, 2, "misses the lower part")
    with pytest.raises(PromptError):
        s.rate(3, 6)
    with pytest.raises(PromptError):
        s.rate(9, 3)
    eroded = ndimage.binary_erosion(s.ai_lesions[2].mask.to_full(), np.ones((1, 3, 3), bool), iterations=2)
    assert 0 < eroded.sum() < s.ai_lesions[2].voxels
    s.correct(2, eroded)
    s.roi_comment = "orange too wide"
    # resumable: save half-way, load, finish
    s.save(tmp_path / "session")
    r = QASession.load(tmp_path / "session")
    assert r.ratings[2].score == 2 and r.ratings[2].comment == "misses the lower part" and r.ratings[1].score == 5
    np.testing.assert_array_equal(r.corrected[2].to_full(), eroded)
    assert r.unrated == [3, 4, 5]
    with pytest.raises(PromptError, match="no score"):
        r.export(tmp_path / "out")
    for lid in (3, 4, 5):
        r.rate(lid, 4)
    table = r.rating_table()
    assert table[1]["definition"] == LIKERT[2] and table[1]["corrected"] and table[1]["voxels"] == int(eroded.sum())
    corrected, row = r.export(tmp_path / "out")
    assert corrected is not None and corrected.name == "partial_overlaps_rad1.dcm"
    # the corrected SEG: segment 2 is the reviewer's mask and MANUAL; the others unchanged
    back = read_dicom_seg(corrected, base / "ct-3slice")
    np.testing.assert_array_equal(back.lesions[2].mask.to_full(), eroded)
    ai = read_dicom_seg(seg_path, base / "ct-3slice")
    for lid in (1, 3, 4, 5):
        np.testing.assert_array_equal(back.lesions[lid].mask.to_full(), ai.lesions[lid].mask.to_full())
    seg = hd.seg.segread(corrected)
    types = {d.segment_label: d.SegmentAlgorithmType for d in seg.SegmentSequence}
    assert types["ORANGE"] == "MANUAL" and types["GREEN"] == ai.descriptions[1].algorithm_type  # kept as the AI had it
    assert str(seg.ContentCreatorName) == "rad1^"
    # qa-results.csv: IDC's columns, one score column per segment
    csv_path = write_qa_results_csv(tmp_path / "qa-results.csv", [row])
    with open(csv_path, newline="") as fh:
        (rec,) = list(csv.DictReader(fh))
    header = list(rec)
    assert header[: len(QA_FIXED_COLUMNS)] == list(QA_FIXED_COLUMNS)
    assert rec["SeriesInstanceUID"] == ai.image.metadata["series_instance_uid"]
    assert rec["StudyInstanceUID"] == ai.image.metadata["study_instance_uid"]
    assert rec["Reviewer"] == "rad1" and rec["AISegmentation"] == "partial_overlaps.dcm"
    assert rec["CorrectedSegmentation"] == "partial_overlaps_rad1.dcm"
    assert rec[segment_column("GREEN")] == "5" and rec[segment_column("ORANGE")] == "2"
    assert "orange too wide" in rec["Do you have any comments about the AI predicted ROIs?"]
    assert "misses the lower part" in rec["Do you have any comments about the AI predicted ROIs?"]


def test_all_strongly_agree_writes_no_correction_file(real_data_dir, tmp_path) -> None:
    base = real_data_dir / "dcmqi_seg"
    s = QASession.from_seg(base / "seg" / "liver.dcm", reviewer="ne1")
    s.rate(1, 5)
    corrected, row = s.export(tmp_path)
    assert corrected is None and row["CorrectedSegmentation"] == ""
    assert row[segment_column("Liver")] == "5"
    assert not list(tmp_path.iterdir())
    # several series in one CSV: the segment columns are the union
    other = dict(row, SeriesInstanceUID="1.2.3", **{segment_column("Tumor"): "3"})
    path = write_qa_results_csv(tmp_path / "qa.csv", [row, other])
    with open(path, newline="") as fh:
        recs = list(csv.DictReader(fh))
    assert recs[0][segment_column("Tumor")] == "" and recs[1][segment_column("Tumor")] == "3"

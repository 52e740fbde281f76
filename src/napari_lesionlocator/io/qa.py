"""Rating and correcting existing segmentations: the Imaging Data Commons AI-annotation QA workflow.

A :class:`QASession` starts from a DICOM-SEG (e.g. an IDC ``ai-segmentations-dcm`` file, read with
:func:`~.dicom_seg.read_dicom_seg`) or a label map: each segment is one lesion. The reviewer gives
each segment a Likert score 1-5 with the IDC definitions (:data:`LIKERT`), optional comments, and
corrects masks where needed (:meth:`QASession.correct`). The session saves to a folder and loads
back (resumable); :meth:`QASession.export` writes

* the corrected SEG (only when something was corrected or scored below 5, as IDC does: "if the
  reviewer strongly agreed with the AI for all segments, they did not provide any correction
  file"); corrected segments are ``MANUAL``, the others keep their algorithm identification; the
  tracking UIDs are the AI SEG's;
* one row of a CSV shaped like IDC's ``qa-results.csv`` (:func:`write_qa_results_csv` merges the
  rows of several series): Collection, PatientID, StudyInstanceUID, SeriesInstanceUID, Validation,
  Reviewer, AimiProjectYear, AISegmentation, CorrectedSegmentation, one
  ``Was the AI predicted <segment> label accurate?`` column per segment (the 2024 layout), and the
  two comment columns.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputImageError, PromptError
from ..core.image import Image
from ..core.results import LesionMask, LesionResult

__all__ = ["LIKERT", "Rating", "QASession", "write_qa_results_csv", "QA_FIXED_COLUMNS", "segment_column"]

#: The IDC reviewers' Likert definitions (Imaging Data Commons AI-annotation QA, qa-results.csv).
LIKERT: dict[int, str] = {
    5: "Strongly Agree - Use-as-is (i.e., clinically acceptable, and could be used for treatment without change)",
    4: "Agree - Minor edits that are not necessary. Stylistic differences, but not clinically important. "
       "The current segmentation is acceptable",
    3: "Neither agree nor disagree - Minor edits that are necessary. Minor edits are those that the review judges "
       "can be made in less time than starting from scratch or are expected to have minimal effect on treatment "
       "outcome",
    2: "Disagree - Major edits. This category indicates that the necessary edit is required to ensure correctness, "
       "and sufficiently significant that user would prefer to start from the scratch",
    1: "Strongly disagree - Unusable. This category indicates that the quality of the automatic annotations is so "
       "bad that they are unusable.",
}

QA_FIXED_COLUMNS = ("Collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Validation", "Reviewer",
                    "AimiProjectYear", "AISegmentation", "CorrectedSegmentation")
ROI_COMMENT = "Do you have any comments about the AI predicted ROIs?"
FINDINGS_COMMENT = "Do you have any comments about the findings from the study scans?"
SESSION_FILE = "qa_session.json"


def segment_column(name: str) -> str:
    return f"Was the AI predicted {name} label accurate?"


@dataclass
class Rating:
    score: int | None = None
    comment: str = ""

    def __post_init__(self) -> None:
        if self.score is not None and (isinstance(self.score, bool) or int(self.score) not in LIKERT):
            raise PromptError(f"a Likert score is 1-5, got {self.score!r}")
        if self.score is not None:
            self.score = int(self.score)


@dataclass
class QASession:
    """One series under review: the image, the AI lesions (one per segment), ratings and corrections."""

    image: Image
    ai_lesions: dict[int, LesionResult]
    names: dict[int, str]
    reviewer: str = "reviewer"
    collection: str = ""
    ai_segmentation: str = ""  # the AI SEG's file name (qa-results' AISegmentation)
    ai_seg_path: str | None = None
    ratings: dict[int, Rating] = field(default_factory=dict)
    corrected: dict[int, LesionMask] = field(default_factory=dict)
    roi_comment: str = ""
    findings_comment: str = ""
    descriptions: dict = field(default_factory=dict)  # lesion id -> LesionDescription from the AI SEG

    # ------------------------------------------------------------ start
    @classmethod
    def from_seg(cls, seg_path: str | os.PathLike, ct=None, *, reviewer: str = "reviewer",
                 collection: str = "") -> QASession:
        """Start from a DICOM-SEG (its CT found next to it, or given)."""
        from .dicom_seg import read_dicom_seg

        imp = read_dicom_seg(seg_path, ct)
        return cls(imp.image, dict(imp.lesions), imp.names, reviewer=reviewer, collection=collection,
                   ai_segmentation=Path(seg_path).name, ai_seg_path=str(seg_path), descriptions=imp.descriptions)

    @classmethod
    def from_label_map(cls, image: Image, labels, *, names: Mapping[int, str] | None = None,
                       reviewer: str = "reviewer", source: str = "") -> QASession:
        from ..core.results import results_from_label_map

        lesions = results_from_label_map(labels)
        return cls(image, lesions, {lid: (names or {}).get(lid, f"Lesion {lid}") for lid in lesions},
                   reviewer=reviewer, ai_segmentation=source)

    # ------------------------------------------------------------ review
    @property
    def segment_ids(self) -> list[int]:
        return sorted(self.ai_lesions)

    def rate(self, lesion_id: int, score: int, comment: str = "") -> None:
        self._require(lesion_id)
        self.ratings[int(lesion_id)] = Rating(score, comment)

    def correct(self, lesion_id: int, mask: np.ndarray | LesionMask) -> None:
        """Replace a segment's mask by the reviewer's correction (full-grid bool array or a LesionMask)."""
        self._require(lesion_id)
        if not isinstance(mask, LesionMask):
            mask = LesionMask.from_full(self.image.geometry, np.asarray(mask, dtype=bool))
        self.image.geometry.require_same_grid(mask.geometry, what=f"the correction of lesion {lesion_id}")
        self.corrected[int(lesion_id)] = mask

    def _require(self, lesion_id: int) -> None:
        if int(lesion_id) not in self.ai_lesions:
            raise PromptError(f"lesion {lesion_id} is not a segment of this series (segments {self.segment_ids})")

    @property
    def unrated(self) -> list[int]:
        return [lid for lid in self.segment_ids if self.ratings.get(lid, Rating()).score is None]

    @property
    def needs_correction_file(self) -> bool:
        return bool(self.corrected) or any(r.score is not None and r.score < 5 for r in self.ratings.values())

    def current_lesions(self) -> dict[int, LesionResult]:
        """The lesions as they stand: corrected masks where the reviewer edited (provenance edited)."""
        out = {}
        for lid, r in self.ai_lesions.items():
            if lid in self.corrected:
                out[lid] = LesionResult(lid, self.corrected[lid], provenance={**r.provenance, "edited": True,
                                                                                "algorithm_type": "MANUAL"})
            else:
                out[lid] = r
        return out

    def rating_table(self) -> list[dict]:
        """One row per segment: id, name, score, its Likert definition, comment, corrected, voxels."""
        rows = []
        for lid in self.segment_ids:
            rating = self.ratings.get(lid, Rating())
            mask = self.corrected.get(lid, self.ai_lesions[lid].mask)
            rows.append({"id": lid, "name": self.names.get(lid, f"Lesion {lid}"), "score": rating.score,
                         "definition": LIKERT.get(rating.score, "") if rating.score else "",
                         "comment": rating.comment, "corrected": lid in self.corrected, "voxels": mask.voxels})
        return rows

    # ------------------------------------------------------------ resume
    def save(self, folder: str | os.PathLike) -> Path:
        """Save the review (ratings, comments, corrected masks) to ``folder``; :meth:`load` resumes it."""
        from .atomic import atomic_write_text
        from .images import write_label_map

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for lid, mask in self.corrected.items():
            write_label_map(mask.to_full().astype(np.uint8), folder / f"corrected_lesion_{lid}.nii.gz",
                            geometry=self.image.geometry, overwrite=True)
        doc = {
            "format": "napari-lesionlocator QA session 1",
            "image": self.image.source or self.image.metadata.get("folder"),
            "ai_seg_path": self.ai_seg_path,
            "ai_segmentation": self.ai_segmentation,
            "collection": self.collection,
            "reviewer": self.reviewer,
            "names": {str(k): v for k, v in self.names.items()},
            "ratings": {str(k): {"score": r.score, "comment": r.comment} for k, r in self.ratings.items()},
            "corrected": sorted(self.corrected),
            "roi_comment": self.roi_comment,
            "findings_comment": self.findings_comment,
        }
        return atomic_write_text(folder / SESSION_FILE, json.dumps(doc, indent=2) + "\n", overwrite=True)

    @classmethod
    def load(cls, folder: str | os.PathLike, ct=None) -> QASession:
        """Resume a saved review: the AI SEG is read again, ratings and corrections are put back."""
        from .images import read_label_map

        folder = Path(folder)
        try:
            doc = json.loads((folder / SESSION_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise InputImageError(f"{folder}: no readable QA session ({exc})") from None
        if not doc.get("ai_seg_path"):
            raise InputImageError(f"{folder}: the session does not name its AI SEG; start it again from the SEG")
        session = cls.from_seg(doc["ai_seg_path"], ct, reviewer=doc.get("reviewer", "reviewer"),
                               collection=doc.get("collection", ""))
        session.names.update({int(k): v for k, v in doc.get("names", {}).items()})
        for k, r in doc.get("ratings", {}).items():
            session.ratings[int(k)] = Rating(r.get("score"), r.get("comment", ""))
        for lid in doc.get("corrected", []):
            lab = read_label_map(folder / f"corrected_lesion_{lid}.nii.gz", like=session.image)
            session.correct(int(lid), lab.array.astype(bool))
        session.roi_comment = doc.get("roi_comment", "")
        session.findings_comment = doc.get("findings_comment", "")
        return session

    # ------------------------------------------------------------ export
    def qa_row(self, corrected_name: str = "") -> dict[str, str]:
        """This series' row of qa-results.csv."""
        md = self.image.metadata or {}
        row = {
            "Collection": self.collection,
            "PatientID": str(md.get("patient_id", "")),
            "StudyInstanceUID": str(md.get("study_instance_uid", "")),
            "SeriesInstanceUID": str(md.get("series_instance_uid", "")),
            "Validation": "true",
            "Reviewer": self.reviewer,
            "AimiProjectYear": "",
            "AISegmentation": self.ai_segmentation,
            "CorrectedSegmentation": corrected_name,
        }
        for lid in self.segment_ids:
            score = self.ratings.get(lid, Rating()).score
            row[segment_column(self.names.get(lid, f"Lesion {lid}"))] = "" if score is None else str(score)
        per_segment = [f"{self.names.get(lid, lid)}: {r.comment}" for lid, r in sorted(self.ratings.items())
                       if r.comment]
        row[ROI_COMMENT] = "; ".join(filter(None, [self.roi_comment, *per_segment]))
        row[FINDINGS_COMMENT] = self.findings_comment
        return row

    def export(self, out: str | os.PathLike, *, overwrite: bool = False,
               require_all_rated: bool = True) -> tuple[Path | None, dict[str, str]]:
        """Write the corrected SEG into ``out`` (when needed) and return it with this series' qa row."""
        if require_all_rated and self.unrated:
            raise PromptError(f"segment(s) {self.unrated} have no score yet (1-5); rate them or pass "
                              "require_all_rated=False")
        corrected_path = None
        if self.needs_correction_file:
            from .dicom_seg import LesionDescription, tracking_uid, write_dicom_seg

            out = Path(out)
            stem = Path(self.ai_segmentation).stem or self.image.name
            corrected_path = out / f"{stem}_{self.reviewer}.dcm"
            descs = {}
            for lid in self.segment_ids:
                d = self.descriptions.get(lid)
                base = {"label": self.names.get(lid, f"Lesion {lid}"), "site": None, "tracking_id": "",
                            "tracking_uid": tracking_uid(self.ai_segmentation or self.image.name, lid)}
                if d is not None:
                    base.update(label=self.names.get(lid, d.label), site=d.site, tracking_id=d.tracking_id,
                                tracking_uid=d.tracking_uid or base["tracking_uid"])
                if lid in self.corrected:
                    descs[lid] = LesionDescription(lid, algorithm_type="MANUAL", **base)
                else:
                    descs[lid] = LesionDescription(lid, algorithm_type=d.algorithm_type if d else "AUTOMATIC",
                                                   engine=d.engine if d else None,
                                                   engine_version=d.engine_version if d else None,
                                                   model=d.model if d else None, **base)
            lesions = {lid: r for lid, r in self.current_lesions().items() if not r.mask.is_empty}
            write_dicom_seg(self.image, lesions, corrected_path, descriptions=descs, overwrite=overwrite,
                            series_description=f"Corrected by {self.reviewer}"[:64],
                            content_creator=f"{self.reviewer}^")
        return corrected_path, self.qa_row(corrected_path.name if corrected_path else "")


def write_qa_results_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, str]], *,
                         overwrite: bool = False) -> Path:
    """qa-results.csv from the rows of several series (segment columns are the union, in first-seen order)."""
    from .atomic import atomic_write_text

    columns = list(QA_FIXED_COLUMNS)
    for row in rows:
        for key in row:
            if key not in columns and key not in (ROI_COMMENT, FINDINGS_COMMENT):
                columns.append(key)
    columns += [ROI_COMMENT, FINDINGS_COMMENT]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return atomic_write_text(Path(path), buf.getvalue(), overwrite=overwrite)

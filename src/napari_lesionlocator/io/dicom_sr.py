"""DICOM SR measurement reports (TID 1500, Comprehensive 3D SR) per timepoint, with highdicom.

One report per timepoint. For every lesion with a segment in that timepoint's SEG, a volumetric
ROI group (TID 1411) holds:

* the tracking identifier and tracking UID (the same as in the SEG, the same for the lesion at
  every timepoint), the finding type *Lesion* and its finding site;
* the time point context (TID 1502): ``baseline`` / ``follow-up <k>``, type *Baseline* or
  *Posttreatment*, and its order;
* a reference to the lesion's segment in the SEG (and the CT series it was made on);
* the measurements of :mod:`~..core.measurements`: volume (mm3), RECIST long axis and short axis
  (mm, on the axial slice where the long axis is longest), mean HU.

A lesion without voxels at this timepoint (lost, disappeared) gets a measurement group (TID 1501)
with its tracking identifiers, 0 mm axes and 0 mm3 volume. A follow-up report also carries the
RECIST 1.1 assessment (:mod:`~..core.recist`) as its own group: method *RECIST 1.1*, the sum of
target diameters (mm), and the response as the qualitative evaluation *Current Response*
(target lesion CR/PR/SD/PD; NE under a local code).

:func:`read_dicom_sr` reads a report back (our own or any TID 1500 with these concepts).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputImageError, OutputExistsError
from ..core.measurements import LesionMeasurement
from ..core.recist import RecistTimepoint
from .dicom_seg import LesionDescription, SegBuild, _save_atomic, _site_code

__all__ = ["build_dicom_sr", "write_dicom_sr", "read_dicom_sr", "SrLesion", "SrReport", "RESPONSE_CODES"]

_LOCAL = "99NLL"


def _codes():
    from pydicom.sr.codedict import codes

    return codes


def _concept(value: str, meaning: str, scheme: str = _LOCAL):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _response_code(response: str):
    codes = _codes()
    table = {
        "CR": codes.DCM.TargetLesionCompleteResponse,
        "PR": codes.DCM.TargetLesionPartialResponse,
        "SD": codes.DCM.TargetLesionStableDisease,
        "PD": codes.DCM.TargetLesionProgressiveDisease,
    }
    return table.get(response) or _concept("NE", "Not evaluable")


#: Response word -> code meaning written (for readers of the files).
RESPONSE_CODES = {"CR": "Target Lesion Complete Response", "PR": "Target Lesion Partial Response",
                  "SD": "Target Lesion Stable Disease", "PD": "Target Lesion Progressive Disease",
                  "NE": "Not evaluable"}
_RESPONSE_BY_MEANING = {v.lower(): k for k, v in RESPONSE_CODES.items()}


def _sum_concept():
    return _concept("SOD", "Sum of target lesion diameters")


def build_dicom_sr(
    seg: SegBuild,
    measurements: Sequence[LesionMeasurement],
    descriptions: Mapping[int, LesionDescription],
    *,
    timepoint_index: int = 0,
    timepoint_label: str | None = None,
    recist: RecistTimepoint | None = None,
    series_number: int = 301,
    observer: str | None = None,
):
    """Build (in memory) the TID 1500 report of one timepoint; see the module docstring.

    ``seg`` is the timepoint's SEG as built/written by :func:`~.dicom_seg.write_dicom_seg` (its
    dataset, lesion id -> segment number map and source CT headers).
    """
    import highdicom as hd
    from highdicom.sr import (
        FindingSite,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        ReferencedSegment,
        SourceSeriesForSegmentation,
        TimePointContext,
        TrackingIdentifier,
        VolumetricROIMeasurementsAndQualitativeEvaluations,
    )

    from .. import __version__

    codes = _codes()
    seg_ds = seg.dataset
    ct_series = str(seg.source[0].SeriesInstanceUID)
    label = timepoint_label or ("baseline" if timepoint_index == 0 else f"follow-up {timepoint_index}")
    tp_context = TimePointContext(
        time_point=label,
        time_point_type=codes.cid6146.Baseline if timepoint_index == 0 else codes.cid6146.Posttreatment,
        time_point_order=int(timepoint_index) + 1,
    )
    if observer:
        obs = ObserverContext(observer_type=codes.DCM.Person,
                              observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                                  name=observer))
    else:
        obs = ObserverContext(observer_type=codes.DCM.Device,
                              observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                                  uid=hd.UID(), name="napari-lesionlocator", model_name=str(__version__)))
    mm, mm3 = codes.UCUM.Millimeter, codes.UCUM.CubicMillimeter
    hu = codes.UCUM.HounsfieldUnit
    groups = []
    for row in sorted(measurements, key=lambda r: r.lesion_id):
        lid = int(row.lesion_id)
        desc = descriptions.get(lid) or LesionDescription(lid)
        tracking = TrackingIdentifier(uid=desc.tracking_uid or hd.UID(), identifier=desc.tracking_id)
        site = _site_code(desc.site)
        sites = [FindingSite(site)] if site is not None else None
        values = [Measurement(codes.SCT.Volume, float(row.volume_ml) * 1000.0, mm3),
                  Measurement(codes.SCT.LongAxis, float(row.long_axis_mm), mm),
                  Measurement(codes.SCT.ShortAxis, float(row.short_axis_mm), mm)]
        number = seg.segment_of.get(lid)
        if row.present and number is not None:
            if row.mean_hu == row.mean_hu:  # not NaN
                values.append(Measurement(codes.SCT.Mean, float(row.mean_hu), hu))
            ref = ReferencedSegment(sop_class_uid=str(seg_ds.SOPClassUID), sop_instance_uid=str(seg_ds.SOPInstanceUID),
                                    segment_number=int(number),
                                    source_series=SourceSeriesForSegmentation(ct_series))
            groups.append(VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_segment=ref, time_point_context=tp_context,
                finding_type=codes.SCT.Lesion, finding_sites=sites, measurements=values))
        else:
            groups.append(MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, time_point_context=tp_context, finding_type=codes.SCT.Lesion,
                finding_sites=sites, measurements=values,
                qualitative_evaluations=[QualitativeEvaluation(_concept("PRESENCE", "Presence"),
                                                               _concept("ABSENT", "Absent"))]))
    if recist is not None and recist.response != "baseline":
        rec_values = []
        if recist.sum_mm is not None:
            rec_values.append(Measurement(_sum_concept(), float(recist.sum_mm), mm))
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="RECIST 1.1 response"),
            time_point_context=tp_context, method=codes.cid6147.RECIST1Point1, measurements=rec_values or None,
            qualitative_evaluations=[QualitativeEvaluation(codes.DCM.CurrentResponse,
                                                           _response_code(recist.response))]))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_person_context=obs if observer else None,
                                               observer_device_context=None if observer else obs),
        procedure_reported=codes.cid100.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[seg_ds, *seg.source],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-lesionlocator",
        is_complete=True,
        series_description=f"Lesion measurements ({label})"[:64],
    )


def write_dicom_sr(path: str | os.PathLike, seg: SegBuild, measurements: Sequence[LesionMeasurement],
                   descriptions: Mapping[int, LesionDescription], *, overwrite: bool = False, **kw) -> Path:
    """Build and write one timepoint's report (atomic, user's umask, never silently replaced)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; refusing to overwrite it (use overwrite)")
    sr = build_dicom_sr(seg, measurements, descriptions, **kw)
    return _save_atomic(sr, path, overwrite=overwrite)


# ----------------------------------------------------------------- reading
@dataclass
class SrLesion:
    tracking_id: str
    tracking_uid: str
    present: bool
    values: dict[str, float] = field(default_factory=dict)  # "volume_mm3", "long_axis_mm", ...
    site: str | None = None
    segment_number: int | None = None
    seg_sop_instance_uid: str | None = None
    time_point: str | None = None
    time_point_order: int | None = None


@dataclass
class SrReport:
    lesions: list[SrLesion]
    response: str | None  # CR/PR/SD/PD/NE, None when the report has no RECIST group
    sum_mm: float | None
    evidence_series: list[str]


_NAMES = {"118565006": "volume_mm3", "103339001": "long_axis_mm", "103340004": "short_axis_mm",
          "373098007": "mean_hu", "SOD": "sum_mm"}


def _walk(items):
    for it in items or []:
        yield it
        yield from _walk(getattr(it, "ContentSequence", None))


def read_dicom_sr(path: str | os.PathLike) -> SrReport:
    """Read a TID 1500 report: per lesion (tracking id/UID) its measurements, and the RECIST response."""
    import highdicom as hd
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
        sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    except Exception as exc:  # noqa: BLE001 - unreadable: one clear line
        raise InputImageError(f"{path.name}: not a readable DICOM SR measurement report ({exc})") from None
    lesions, response, total = [], None, None
    for group in (it for it in sr.ContentSequence if getattr(it, "ValueType", "") == "CONTAINER"):
        for g in (x for x in _walk(group.ContentSequence) if getattr(x, "ValueType", "") == "CONTAINER"):
            name = g.ConceptNameCodeSequence[0].CodeValue
            if name != "125007":  # Measurement Group
                continue
            lesion = SrLesion("", "", True)
            is_recist = False
            for item in g.ContentSequence:
                code = item.ConceptNameCodeSequence[0]
                vt = item.ValueType
                if vt == "TEXT" and code.CodeValue == "112039":
                    lesion.tracking_id = str(item.TextValue)
                elif vt == "UIDREF" and code.CodeValue == "112040":
                    lesion.tracking_uid = str(item.UID)
                elif vt == "NUM" and str(code.CodeValue) in _NAMES:
                    key = _NAMES.get(str(code.CodeValue))
                    if key:
                        lesion.values[key] = float(item.MeasuredValueSequence[0].NumericValue)
                elif vt == "CODE" and code.CodeValue == "363698007":  # finding site
                    lesion.site = str(item.ConceptCodeSequence[0].CodeMeaning)
                elif vt == "CODE" and code.CodeValue == "112048":  # Current Response
                    is_recist = True
                    meaning = str(item.ConceptCodeSequence[0].CodeMeaning).lower()
                    response = _RESPONSE_BY_MEANING.get(meaning, "NE")
                elif vt == "CODE" and code.CodeValue == "PRESENCE":
                    lesion.present = str(item.ConceptCodeSequence[0].CodeValue) != "ABSENT"
                elif vt == "IMAGE" and code.CodeValue == "121191":
                    ref = item.ReferencedSOPSequence[0]
                    lesion.seg_sop_instance_uid = str(ref.ReferencedSOPInstanceUID)
                    lesion.segment_number = int(ref.ReferencedSegmentNumber)
                elif vt == "TEXT" and code.CodeValue == "C2348792":  # Time Point (TID 1502)
                    lesion.time_point = str(item.TextValue)
                elif vt == "NUM" and code.CodeValue == "126073":  # Time Point Order
                    lesion.time_point_order = int(float(item.MeasuredValueSequence[0].NumericValue))
            if is_recist:
                total = lesion.values.get("sum_mm")
                continue
            lesions.append(lesion)
    series = [str(s.SeriesInstanceUID) for s in getattr(sr, "CurrentRequestedProcedureEvidenceSequence", [])
              for s in getattr(s, "ReferencedSeriesSequence", [])]
    return SrReport(lesions, response, total, series)

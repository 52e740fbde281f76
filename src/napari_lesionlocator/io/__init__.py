"""File formats (no Qt, napari or torch): images and label maps, DICOM folders, study layouts.

Public entry points are re-exported here; SimpleITK and pydicom are imported lazily inside the
functions that need them.
"""

from __future__ import annotations

from .dicom import DicomSeriesWarning, list_dicom_series, read_dicom_folder, write_dicom_series
from .images import (
    IMAGE_SUFFIXES,
    WRITE_SUFFIXES,
    case_name,
    is_image_path,
    read_image,
    read_label_map,
    write_image,
    write_label_map,
)
from .resample import resample_label_map_to
from .study_layout import list_layout_cases, read_study, read_study_layout, write_study_layout
from .volumes import NotCTWarning, check_ct, read_volume, read_volumes

__all__ = [
    "IMAGE_SUFFIXES",
    "WRITE_SUFFIXES",
    "DicomSeriesWarning",
    "NotCTWarning",
    "case_name",
    "check_ct",
    "is_image_path",
    "list_dicom_series",
    "list_layout_cases",
    "read_dicom_folder",
    "read_image",
    "read_label_map",
    "read_study",
    "read_study_layout",
    "read_volume",
    "read_volumes",
    "resample_label_map_to",
    "write_dicom_series",
    "write_image",
    "write_label_map",
    "write_study_layout",
]

"""The header metadata kept of a DICOM image series (`Scan.dicom`), and the scan date it declares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from tracker.errors import MetatrackError

# what a SEG or SR needs to reference the source series (tracker.exports.dicom)
REFERENCE_KEYS = (
    "study_instance_uid",
    "series_instance_uid",
    "frame_of_reference_uid",
    "sop_class_uid",
    "sop_instance_uids",
    "modality",
)
# exactly what `Scan.dicom` holds: UIDs and acquisition headers, never a name, birth date, ID, accession or institution
KEPT_KEYS = (
    *REFERENCE_KEYS,
    "manufacturer",
    "manufacturer_model_name",
    "convolution_kernel",
    "slice_thickness",
    "study_date",
)
DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate")  # the scan date's sources, in order of preference


@dataclass(frozen=True)
class DicomSeries:
    """A series' kept metadata (`Scan.dicom`) and the date its headers give the scan (None: none of them)."""

    metadata: dict[str, Any]
    scan_date: date | None
    date_keyword: str | None  # which of DATE_KEYWORDS gave `scan_date`

    @property
    def modality(self) -> str:
        return str(self.metadata["modality"])


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if not isinstance(value, str | bytes | int | float):  # a multi-valued string (ConvolutionKernel may be)
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def dicom_date(text: str | None, path: Path, keyword: str) -> date | None:
    """A DA value (YYYYMMDD) as a date; None when empty; an error naming the file when malformed."""
    if not text:
        return None
    digits = text.replace(".", "")  # ACR-NEMA style YYYY.MM.DD is still met
    try:
        if len(digits) != 8 or not digits.isdigit():
            raise ValueError(text)
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise MetatrackError(f"{path}: {keyword} {text!r} is not a DICOM date (YYYYMMDD)") from None


def series_headers(files: Sequence[Path]) -> DicomSeries:
    """The kept headers of a series whose files are given in slice order (file k is slice k of the image)."""
    import pydicom

    first: Any = None
    sop_uids: list[str] = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        sop_uids.append(str(ds.get("SOPInstanceUID", "")).strip())
    first_path = Path(files[0])
    first = pydicom.dcmread(first_path, stop_before_pixels=True)
    thickness = _text(first, "SliceThickness")
    try:
        slice_thickness = float(thickness) if thickness else None
    except ValueError:
        slice_thickness = None
    study_date = dicom_date(_text(first, "StudyDate"), first_path, "StudyDate")
    metadata: dict[str, Any] = {
        "study_instance_uid": _text(first, "StudyInstanceUID"),
        "series_instance_uid": _text(first, "SeriesInstanceUID"),
        "frame_of_reference_uid": _text(first, "FrameOfReferenceUID"),
        "sop_class_uid": _text(first, "SOPClassUID"),
        "sop_instance_uids": sop_uids,
        "modality": (_text(first, "Modality") or "").upper(),
        "manufacturer": _text(first, "Manufacturer"),
        "manufacturer_model_name": _text(first, "ManufacturerModelName"),
        "convolution_kernel": _text(first, "ConvolutionKernel"),
        "slice_thickness": slice_thickness,
        "study_date": study_date.isoformat() if study_date else None,
    }
    for keyword in DATE_KEYWORDS:
        day = dicom_date(_text(first, keyword), first_path, keyword)
        if day is not None:
            return DicomSeries(metadata, day, keyword)
    return DicomSeries(metadata, None, None)

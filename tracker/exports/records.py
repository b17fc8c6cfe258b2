"""What the exports read from the database: a processed scan with its files, settings and lesions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExportLesion:
    """A lesion of a processed scan: its label in the scan's lesion label map and its track."""

    label: int
    track: int | None
    change: str | None  # tracker.records.ChangeClass value of the track at this scan
    recist_role: str | None
    organ: str | None
    volume_mm3: float
    long_axis_mm: float | None
    short_axis_mm: float | None


@dataclass(frozen=True)
class ExportScan:
    """A processed scan: files in the store, processing settings, DICOM source headers (None if not DICOM)."""

    scan_id: int
    scan_date: date
    modality: str
    source_format: str
    image: Path
    mask: Path | None
    settings: dict[str, Any]
    dicom: dict[str, Any] | None
    recist_response: str | None
    lesions: list[ExportLesion] = field(default_factory=list)

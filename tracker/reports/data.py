"""What the reports draw: plain records gathered by :mod:`tracker.workflows.reports`, no database types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SurvivalCurve:
    """A survival curve seen from one scan: S at `months` after it, with a 90 % band when one is stored."""

    scan_date: str
    months: list[float]
    survival: list[float]
    lower: list[float] | None = None
    upper: list[float] | None = None


@dataclass(frozen=True)
class SnapshotPanel:
    """One axial slice (baseline frame) at one scan: HU image, the track's lesion mask, extent in mm."""

    scan_date: str
    image: np.ndarray
    lesion: np.ndarray  # bool, same shape as image
    extent_mm: tuple[float, float, float, float]  # left, right, bottom, top, as imshow takes it
    change: str | None  # the track's change at this scan; None where the track was not seen


@dataclass(frozen=True)
class TrackSnapshots:
    number: int
    panels: list[SnapshotPanel]


@dataclass
class PatientReportData:
    """Everything a patient report shows; `timeline` is the `timeline --json` contract (``db.views.timeline``)."""

    timeline: dict[str, Any]
    endpoint: str | None
    model: dict[str, Any] | None  # name, version, kind, created_at, metrics of the model the risks come from
    curve: SurvivalCurve | None  # from the latest scored scan
    provenance: list[dict[str, Any]]  # one row per scan: settings, library versions
    snapshots: list[TrackSnapshots] = field(default_factory=list)
    generated_by: str = ""


@dataclass(frozen=True)
class CohortPatient:
    """One patient of the cohort report; days are counted from the baseline scan."""

    patient_id: str
    scan_days: list[int]
    responses: list[str | None]  # RECIST response per scan ("BL" at baseline)
    change_pct: list[float | None]  # target-sum change from baseline per scan
    new_lesion_days: list[int]
    followup_days: float | None  # to the endpoint event or censoring (None: no follow-up known)
    event: bool
    risk: float | None  # the risk at the baseline scan (model's 12-month horizon) for the tertiles


@dataclass
class CohortReportData:
    endpoint: str
    model: str | None
    risk_horizon_months: int
    patients: list[CohortPatient]
    generated_by: str = ""

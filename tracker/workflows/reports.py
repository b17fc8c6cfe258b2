"""Reports: gather a patient's or the cohort's data (``db/reports.py``), draw (``tracker.reports``), write files.

:func:`write_demo_reports` is what the demo calls: the cohort report and one patient's report into a folder.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db import reports as queries
from db.session import session_scope
from tracker.errors import MetatrackError
from tracker.reports import pages
from tracker.reports.data import CohortPatient, CohortReportData, PatientReportData, SurvivalCurve
from tracker.reports.figures import to_bytes

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tracker.store import FileStore

FIGURE_FORMATS = ("png", "pdf")
COHORT_RISK_HORIZON_MONTHS = 12


def _generated_by() -> str:
    return f"metatrack {importlib.metadata.version('metatrack')}"


def _curve(raw: dict[str, Any] | None, model: dict[str, Any] | None) -> SurvivalCurve | None:
    """The stored curve on its model's month grid (bin_months, 2 bin_months, ... horizon_months)."""
    if raw is None or not raw["survival"]:
        return None
    surv = [float(v) for v in raw["survival"]]
    model = model or {}
    step = float(model.get("bin_months") or 0.0) or float(model.get("horizon_months") or len(surv)) / len(surv)
    months = [step * (b + 1) for b in range(len(surv))]
    lower, upper = raw.get("lower"), raw.get("upper")
    return SurvivalCurve(
        scan_date=raw["scan_date"],
        months=months,
        survival=surv,
        lower=[float(v) for v in lower] if lower else None,
        upper=[float(v) for v in upper] if upper else None,
    )


def _snapshots(raw: dict[str, Any], store: FileStore) -> list[Any]:
    from tracker.reports.snapshots import ScanImages, Sighting, track_snapshots

    def path(entry: tuple[str, str]) -> Path:
        return store.find(entry[0], entry[1])

    scans = [
        ScanImages(
            scan_id=sid,
            date=f["date"],
            image=path(f["image"]),
            mask=path(f["mask"]) if f["mask"] else None,
            forward=[path(e) for e in f["forward"]],
            inverse=[path(e) for e in f["inverse"]],
        )
        for sid, f in raw["files"].items()
        if f["processed"]
    ]
    changes = {
        (les["track_id"], s["id"]): (les["volume_mm3"], les["change"])
        for s in raw["timeline"]["scans"]
        for les in s["lesions"]
    }
    tracks = {
        number: [
            Sighting(sid, label, tuple(c), *changes.get((number, sid), (0.0, None)))  # type: ignore[arg-type]
            for sid, label, c in seen
        ]
        for number, seen in raw["tracks"].items()
    }
    return track_snapshots(scans, tracks)


def patient_report_data(engine: Engine, store: FileStore, patient: str, snapshots: bool = True) -> PatientReportData:
    """Everything the patient report shows; `snapshots` False skips reading images."""
    with session_scope(engine) as s:
        raw = queries.patient_report(s, patient)
    model = raw["model"]
    return PatientReportData(
        timeline=raw["timeline"],
        endpoint=model["endpoint"] if model else None,
        model=model,
        curve=_curve(raw["curve"], model),
        provenance=raw["provenance"],
        snapshots=_snapshots(raw, store) if snapshots else [],
        generated_by=_generated_by(),
    )


def cohort_report_data(
    engine: Engine, endpoint: str, risk_horizon_months: int = COHORT_RISK_HORIZON_MONTHS
) -> CohortReportData:
    with session_scope(engine) as s:
        raw = queries.cohort_report(s, endpoint, risk_horizon_months)
    if not raw["patients"]:
        raise MetatrackError("cohort report: the database holds no scans")
    return CohortReportData(
        endpoint=raw["endpoint"],
        model=raw["model"],
        risk_horizon_months=risk_horizon_months,
        patients=[CohortPatient(**p) for p in raw["patients"]],
        generated_by=_generated_by(),
    )


def _check_folder(path: Path) -> Path:
    if not path.parent.is_dir():
        raise MetatrackError(f"{path}: folder {path.parent} does not exist")
    return path


def _write(path: Path, data: bytes) -> Path:
    """Write via a temporary file beside `path` and rename, so a failed run leaves no half-written report."""
    _check_folder(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_patient_report(engine: Engine, store: FileStore, patient: str, out: Path) -> Path:
    """The patient report as one self-contained HTML file at `out`."""
    _check_folder(out)
    return _write(out, pages.patient_html(patient_report_data(engine, store, patient)).encode("utf-8"))


def write_cohort_report(engine: Engine, out: Path, endpoint: str) -> Path:
    """The cohort report as one self-contained HTML file at `out`."""
    _check_folder(out)
    return _write(out, pages.cohort_html(cohort_report_data(engine, endpoint)).encode("utf-8"))


def file_stem(patient: str) -> str:
    """A file-name-safe form of a pseudonym (letters, digits, ``.``, ``-``, ``_``; anything else ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", patient).lstrip(".") or "patient"


def _check_format(fmt: str) -> str:
    if fmt not in FIGURE_FORMATS:
        raise MetatrackError(f"--format {fmt!r}: expected one of {', '.join(FIGURE_FORMATS)}")
    return fmt


def write_patient_figures(engine: Engine, store: FileStore, patient: str, folder: Path, fmt: str = "png") -> list[Path]:
    """Each figure of the patient report as its own PNG or PDF file in `folder` (created if missing)."""
    _check_format(fmt)
    makers = pages.patient_figures(patient_report_data(engine, store, patient))
    folder.mkdir(parents=True, exist_ok=True)
    return [
        _write(folder / f"{file_stem(patient)}-{name}.{fmt}", to_bytes(make(), fmt)) for name, make in makers.items()
    ]


def write_cohort_figures(engine: Engine, folder: Path, endpoint: str, fmt: str = "png") -> list[Path]:
    """Each figure of the cohort report as its own PNG or PDF file in `folder` (created if missing)."""
    _check_format(fmt)
    makers = pages.cohort_figures(cohort_report_data(engine, endpoint))
    folder.mkdir(parents=True, exist_ok=True)
    return [_write(folder / f"cohort-{name}.{fmt}", to_bytes(make(), fmt)) for name, make in makers.items()]


def write_demo_reports(
    engine: Engine, store: FileStore, folder: Path, endpoint: str, patient: str | None = None
) -> list[Path]:
    """The demo's reports: ``cohort.html`` and ``<patient>.html`` (default: the first patient) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    cohort = cohort_report_data(engine, endpoint)
    written = [_write(folder / "cohort.html", pages.cohort_html(cohort).encode("utf-8"))]
    name = patient or cohort.patients[0].patient_id
    written.append(write_patient_report(engine, store, name, folder / f"{file_stem(name)}.html"))
    return written

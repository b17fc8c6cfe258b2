"""`metatrack process`: run the pipeline over every unprocessed scan, then harmonise and score what changed.

Each scan is one unit of work: its context is read, the computation runs with no transaction open, and its
results are written in one transaction (transform files put into the store by the same unit leave with it when
the write fails). A failure marks that scan failed with its error (nothing of it is written) and holds back the
patient's later scans; other patients go on. After the scans, new lesion features are harmonised with the active
ComBat model and the processed patients' risk is scored with the promoted models.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db.results import load_scan_context, pending_scans, record_failure, reset_from, save_outcome
from db.session import session_scope
from tracker.pipeline import compute_scan
from tracker.records import Settings
from tracker.store import FileStore, StoreUnit

if TYPE_CHECKING:
    from sqlalchemy import Engine

OnScan = Callable[[int, str | None], None]  # (scan id or -1 for a held-back scan, error or None)


@dataclass
class ProcessReport:
    processed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    waiting: list[int] = field(default_factory=list)  # held back behind a failed earlier scan
    patients: list[str] = field(default_factory=list)
    harmonisation: dict[str, Any] | None = None  # what `harmonisation.apply_pending` did, when it ran
    scored_patients: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "processed": len(self.processed),
            "failed": {str(k): v for k, v in self.failed.items()},
            "waiting": len(self.waiting),
            "scored_patients": self.scored_patients,
        }


def process_scan(engine: Engine, store: FileStore, scan_id: int, settings: Settings, workroot: Path) -> None:
    """Process one scan whose earlier scans are all processed; raises on failure (nothing written)."""
    with session_scope(engine) as s:
        ctx = load_scan_context(s, store, scan_id)
    workroot.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workroot, prefix="scan-") as work:
        outcome = compute_scan(ctx, settings, Path(work))
        with StoreUnit(store) as files, session_scope(engine) as s:
            transforms = None
            if outcome.registration is not None:
                transforms = (
                    [files.put_file(p, _suffix(p)) for p in outcome.registration.forward],
                    [files.put_file(p, _suffix(p)) for p in outcome.registration.inverse],
                )
            save_outcome(s, scan_id, outcome, settings, ctx.scans[0].scan_id, transforms)


def _suffix(path: Path) -> str:
    from tracker.imageio import volume_suffix

    return volume_suffix(path) or path.suffix


def process_scans(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    workroot: Path,
    *,
    patient: str | None = None,
    on_scan: OnScan | None = None,
) -> ProcessReport:
    """Process every unprocessed (or failed) scan, patient by patient, in date order (no scoring)."""
    report = ProcessReport()
    with session_scope(engine) as s:
        pending = pending_scans(s, patient)
    for pid, scan_ids in pending:
        report.patients.append(pid)
        for i, sid in enumerate(scan_ids):
            try:
                process_scan(engine, store, sid, settings, workroot)
            except Exception as exc:
                msg = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
                with session_scope(engine) as s:
                    record_failure(s, sid, msg)
                report.failed[sid] = msg
                report.waiting += scan_ids[i + 1 :]
                if on_scan:
                    on_scan(sid, msg)
                    for _ in scan_ids[i + 1 :]:
                        on_scan(-1, None)
                break
            report.processed.append(sid)
            if on_scan:
                on_scan(sid, None)
    return report


def process(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    workroot: Path,
    *,
    patient: str | None = None,
    on_scan: OnScan | None = None,
) -> ProcessReport:
    """The whole `process` use case: pending scans, then harmonisation of new features, then risk scores."""
    if settings.features:
        from tracker.radiomics import load_config

        load_config(settings.feature_config)  # a bad config fails here, before any scan is touched
    report = process_scans(engine, store, settings, workroot, patient=patient, on_scan=on_scan)
    if report.processed and settings.features:
        from tracker.workflows.harmonisation import apply_pending

        report.harmonisation = apply_pending(engine, settings.feature_config)
    if report.patients:
        from tracker.workflows.rescore import score_patients_by_pseudonym

        report.scored_patients = score_patients_by_pseudonym(engine, store, report.patients)
    return report


def count_pending(engine: Engine, patient: str | None = None) -> int:
    with session_scope(engine) as s:
        return sum(len(ids) for _, ids in pending_scans(s, patient))


def reset_patient(engine: Engine, patient: str, day: date) -> int:
    """Forget a patient's results from `day` on (one transaction), ready to process again; returns the count."""
    with session_scope(engine) as s:
        return reset_from(s, patient, day)

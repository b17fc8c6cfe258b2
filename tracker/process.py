"""`metatrack process`: run the pipeline over every unprocessed scan, in date order per patient.

Each scan is one unit of work: its context is read, the computation runs with no transaction open, and its
results are written in one transaction. A failure marks that scan failed with its error (nothing of it is
written) and holds back the patient's later scans; other patients go on.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from db.models import Scan, ScanRole, ScanState
from db.results import load_context, pending_scans, record_failure, save_outcome
from db.session import session_scope
from tracker.pipeline import Settings, compute_scan
from tracker.store import FileStore


@dataclass
class ProcessReport:
    processed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    waiting: list[int] = field(default_factory=list)  # held back behind a failed earlier scan
    patients: list[str] = field(default_factory=list)


def process_scan(engine: Engine, store: FileStore, scan_id: int, settings: Settings, workroot: Path) -> None:
    """Process one scan whose earlier scans are all processed; raises on failure (nothing written)."""
    with session_scope(engine) as s:
        scan = s.get(Scan, scan_id)
        ctx = load_context(s, store, scan)
        baseline_id = ctx.scans[0].scan_id
        role = scan.role
    if role == ScanRole.BASELINE and len(ctx.scans) != 1:
        raise RuntimeError("a baseline scan must be the patient's first scan")
    workroot.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workroot, prefix="scan-") as work:
        outcome = compute_scan(ctx, settings, Path(work))
        with session_scope(engine) as s:
            scan = s.get(Scan, scan_id)
            if scan.state == ScanState.PROCESSED:
                return  # done meanwhile by another worker
            save_outcome(s, store, scan, outcome, settings, baseline_id)


def process_pending(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    workroot: Path,
    *,
    patient: str | None = None,
    on_scan: Callable[[int, str | None], None] | None = None,
) -> ProcessReport:
    """Process every unprocessed (or failed) scan, patient by patient, in date order."""
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


def count_pending(engine: Engine, patient: str | None = None) -> int:
    with session_scope(engine) as s:
        return sum(len(ids) for _, ids in pending_scans(s, patient))

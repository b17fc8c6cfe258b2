"""`metatrack process`: run the pipeline over every unprocessed scan, then harmonise and score what changed.

The unit of work is one patient's pending scans in date order (:func:`process_patient`, what a parallel driver
would run as a task). A patient is claimed before its scans are read and processed (`db.locks`): on PostgreSQL an
advisory lock per patient held on a connection of its own (a patient another run holds is skipped and reported
as held by another run); on SQLite one `process` run writes at a time (a second one waits for the lock file
beside the database, then finds the work done). The server or the kernel drops a killed run's claim.

Within a patient each scan is one transaction: its context is read, the computation runs with no transaction
open, and its results are written in one transaction (transform files put into the store by the same unit leave
with it when the write fails). A failure marks that scan failed with its error (nothing of it is written; a scan
already processed is never marked) and holds back the patient's later scans; other patients go on. A run first
sweeps what killed runs left: their work folders, temp files and orphaned transform files (`tracker.store`).
After the scans, new lesion features are harmonised with the active ComBat model and the processed patients' risk
is scored with the promoted models.
"""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db.locks import OnWait, patient_claim, process_lock
from db.repo import patient_ids
from db.results import (
    blob_hashes,
    load_scan_context,
    patient_pending_scans,
    pending_patients,
    pending_scans,
    record_failure,
    reset_from,
    save_outcome,
)
from db.session import DatabaseUnavailable, is_connection_loss, retrying, session_scope
from tracker.errors import MetatrackError
from tracker.home import private_dir
from tracker.pipeline import compute_scan
from tracker.records import Settings
from tracker.store import FileStore, StoreSweep, StoreUnit, sweep_work_dirs, work_dir_prefix, writer_suffix

if TYPE_CHECKING:
    from sqlalchemy import Engine

OnScan = Callable[[int, str | None], None]  # (scan id or -1 for a held-back or skipped scan, error or None)


@dataclass
class ProcessReport:
    processed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    waiting: list[int] = field(default_factory=list)  # held back behind a failed earlier scan
    patients: list[str] = field(default_factory=list)  # the patients this run claimed
    held: list[str] = field(default_factory=list)  # patients another run was processing: skipped
    swept: dict[str, int] = field(default_factory=dict)  # what the start-up sweep removed (non-zero counts)
    store_busy: bool = False  # the sweep found units writing and left possible orphans for a later run
    harmonisation: dict[str, Any] | None = None  # what `harmonisation.apply_pending` did, when it ran
    scored_patients: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "processed": len(self.processed),
            "failed": {str(k): v for k, v in self.failed.items()},
            "waiting": len(self.waiting),
            "held_by_another_run": list(self.held),
            "scored_patients": self.scored_patients,
        }


@dataclass
class PatientRun:
    """What :func:`process_patient` did for one patient."""

    patient: str
    held: bool = False  # claimed by another run: nothing done
    processed: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    waiting: list[int] = field(default_factory=list)


def process_scan(
    engine: Engine,
    store: FileStore,
    scan_id: int,
    settings: Settings,
    workroot: Path,
    patient_started: float | None = None,
) -> None:
    """Process one scan whose earlier scans are all processed; raises on failure (nothing written).

    ``patient_started`` (``time.monotonic()`` when its patient's unit began): the scan's timings then also record
    ``patient_elapsed_s``, the patient's time so far when this scan's computation ended.
    """
    with session_scope(engine) as s:
        ctx = load_scan_context(s, store, scan_id)
    private_dir(workroot)
    with tempfile.TemporaryDirectory(dir=workroot, prefix=work_dir_prefix(), suffix=writer_suffix()) as work:
        outcome = compute_scan(ctx, settings, Path(work))
        if patient_started is not None:
            outcome.timings["patient_elapsed_s"] = time.monotonic() - patient_started

        def save() -> None:  # one unit, safe to run again: a scan processed meanwhile is left as it is
            with StoreUnit(store) as files, session_scope(engine) as s:
                transforms = None
                if outcome.registration is not None:
                    transforms = (
                        [files.put_file(p, _suffix(p)) for p in outcome.registration.forward],
                        [files.put_file(p, _suffix(p)) for p in outcome.registration.inverse],
                    )
                derived = files.put_file(outcome.derived_mask, ".nii.gz") if outcome.derived_mask is not None else None
                save_outcome(s, scan_id, outcome, settings, ctx.scans[0].scan_id, transforms, derived)

        retrying(save, f"saving scan {scan_id}")


def mark_failed(engine: Engine, scan_id: int, error: str) -> bool:
    with session_scope(engine) as s:
        return record_failure(s, scan_id, error)


def _suffix(path: Path) -> str:
    from tracker.imageio import volume_suffix

    return volume_suffix(path) or path.suffix


def process_patient(
    engine: Engine,
    store: FileStore,
    patient_id: int,
    settings: Settings,
    workroot: Path,
    *,
    external_id: str | None = None,
    on_scan: OnScan | None = None,
) -> PatientRun:
    """Claim one patient and process its pending scans in date order; a patient claimed elsewhere is left alone.

    The pending scans are read after the claim, so scans another run finished meanwhile are not done again. A
    failed scan is marked failed (unless it is processed) and holds back the patient's later scans.
    """
    run = PatientRun(external_id or str(patient_id))
    started = time.monotonic()
    with patient_claim(engine, patient_id) as claimed:
        if not claimed:
            run.held = True
            return run
        with session_scope(engine) as s:
            scan_ids = patient_pending_scans(s, patient_id)
        for i, sid in enumerate(scan_ids):
            try:
                process_scan(engine, store, sid, settings, workroot, started)
            except Exception as exc:
                if isinstance(exc, DatabaseUnavailable) or is_connection_loss(exc):
                    raise  # the database is gone, not the scan: stop the run (a rerun picks up what is left)
                msg = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
                mark = functools.partial(mark_failed, engine, sid, msg)
                marked = retrying(mark, f"recording the failure of scan {sid}")
                if not marked:  # committed after all (the failure came after its transaction): processed
                    run.processed.append(sid)
                    if on_scan:
                        on_scan(sid, None)
                    continue
                run.failed[sid] = msg
                run.waiting += scan_ids[i + 1 :]
                if on_scan:
                    on_scan(sid, msg)
                    for _ in scan_ids[i + 1 :]:
                        on_scan(-1, None)
                break
            run.processed.append(sid)
            if on_scan:
                on_scan(sid, None)
    return run


def sweep(engine: Engine, store: FileStore, workroot: Path) -> tuple[dict[str, int], bool]:
    """Remove what killed runs left (dead runs' work folders and temp files, orphaned store objects); returns the
    non-zero counts and whether orphans were left because units kept writing."""

    def blob_rows(hashes: list[str]) -> set[str]:
        with session_scope(engine) as s:
            return blob_hashes(s, hashes)

    done: StoreSweep = store.sweep(blob_rows)
    counts = {
        "work_dirs": sweep_work_dirs(workroot),
        "incoming": done.incoming,
        "orphans": done.orphans,
        "journals": done.journals,
    }
    return {k: v for k, v in counts.items() if v}, done.busy


def process_scans(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    workroot: Path,
    *,
    patient: str | None = None,
    on_scan: OnScan | None = None,
    on_wait: OnWait | None = None,
) -> ProcessReport:
    """Sweep, then process every unprocessed (or failed) scan, patient by patient, in date order (no scoring).

    On SQLite the whole run holds the process lock (waiting for another run's, `on_wait` telling whose).
    """
    report = ProcessReport()
    with process_lock(engine, on_wait=on_wait):
        report.swept, report.store_busy = sweep(engine, store, workroot)
        with session_scope(engine) as s:
            pending = pending_patients(s, patient)
        for pk, external_id, scan_ids in pending:
            run = process_patient(engine, store, pk, settings, workroot, external_id=external_id, on_scan=on_scan)
            if run.held:
                report.held.append(external_id)
                if on_scan:
                    for _ in scan_ids:
                        on_scan(-1, None)
                continue
            report.patients.append(external_id)
            report.processed += run.processed
            report.failed.update(run.failed)
            report.waiting += run.waiting
    return report


def process(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    workroot: Path,
    *,
    patient: str | None = None,
    on_scan: OnScan | None = None,
    on_wait: OnWait | None = None,
) -> ProcessReport:
    """The whole `process` use case: pending scans, then harmonisation of new features, then risk scores.

    On SQLite all of it is one writer's (the process lock, see :func:`process_scans`).
    """
    check_settings(settings)
    with process_lock(engine, on_wait=on_wait):
        report = process_scans(engine, store, settings, workroot, patient=patient, on_scan=on_scan)
        finish_run(engine, store, settings, report)
    return report


def check_settings(settings: Settings) -> None:
    """Fail on a bad feature config before any scan is touched."""
    if settings.features:
        from tracker.radiomics import load_config

        load_config(settings.feature_config)


def finish_run(engine: Engine, store: FileStore, settings: Settings, report: ProcessReport) -> None:
    """After the scans, once per run: harmonise the new features, score the processed patients (into `report`)."""
    if report.processed and settings.features:
        from tracker.workflows.harmonisation import apply_pending

        report.harmonisation = apply_pending(engine, settings.feature_config)
    if report.patients:
        from tracker.workflows.rescore import score_patients_by_pseudonym

        report.scored_patients = score_patients_by_pseudonym(engine, store, report.patients)


def count_pending(engine: Engine, patient: str | None = None) -> int:
    with session_scope(engine) as s:
        return sum(len(ids) for _, ids in pending_scans(s, patient))


def reset_patient(engine: Engine, patient: str, day: date) -> int:
    """Forget a patient's results from `day` on (one transaction), ready to process again; returns the count.

    The patient is claimed for it: a run processing the patient is not pulled from under (refused on PostgreSQL,
    waited for on SQLite).
    """
    with session_scope(engine) as s:
        found = patient_ids(s, [patient])
    if not found:
        with session_scope(engine) as s:
            return reset_from(s, patient, day)  # raises: unknown patient
    with patient_claim(engine, found[0]) as claimed:
        if not claimed:
            raise MetatrackError(f"patient {patient!r} is being processed by another run; try again when it is done")
        with session_scope(engine) as s:
            return reset_from(s, patient, day)

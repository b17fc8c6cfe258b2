"""`metatrack process` on a Dask cluster: one task per patient, harmonisation and risk scores once at the end.

The driver (this process) sweeps, lists the pending patients and submits one task per patient
(:func:`run_patient_task`). A task gets plain data (:class:`PatientTask`: database URL, store and work folders,
patient id, settings), opens its own engine on the worker and runs :func:`tracker.workflows.process.process_patient`
there: the patient is claimed, its pending scans are processed in date order, each in its own transaction, and a
scan that fails is recorded as failed with its error, exactly as in one process.

- Where: a :class:`LocalCluster` of ``workers`` processes (``threads_per_worker`` tasks each) or an existing
  scheduler (``tcp://host:8786`` or a scheduler file). The store and the work folder are paths every worker must
  see (a shared filesystem); a SQLite database is refused when a worker runs on another host.
- SQLite: the driver holds the process lock for the whole run and its workers write under it
  (`db.locks.lock_of_driver`); PostgreSQL: each worker claims its patient (advisory lock).
- A worker that dies (killed, out of memory) while processing a patient: Dask runs the patient again on another
  worker, up to the scheduler's ``allowed-failures`` (:data:`WORKER_DEATHS_RETRIED` on a local cluster); then the
  patient's next pending scan is recorded as failed and its later scans wait. What the dead worker committed
  stays (each scan is one transaction), what it had not committed is not there, and its temp files and orphaned
  store objects are swept once the tasks are done.
- Ctrl-C (or any error in the driver) cancels the futures; a local cluster's workers are then stopped, which rolls
  back the scan each was writing. Rerunning `process` picks up exactly what is left.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db.locks import OnWait, lock_of_driver, process_lock, sqlite_file
from db.results import patient_pending_scans, pending_patients
from db.session import make_engine, retrying, session_scope
from tracker.errors import MetatrackError, one_line
from tracker.home import private_dir
from tracker.records import Settings
from tracker.store import FileStore
from tracker.workflows.process import (
    OnScan,
    PatientRun,
    ProcessReport,
    check_settings,
    finish_run,
    mark_failed,
    process_patient,
    sweep,
)

if TYPE_CHECKING:
    from distributed import Client, Future
    from sqlalchemy import Engine

WORKER_DEATHS_RETRIED = 2  # a local cluster runs a patient again after its worker died, this many times
SCHEDULER_CONNECT_S = 10.0  # how long connecting to an existing scheduler may take
WORKERS_WAIT_S = 60.0  # how long an existing cluster may take to show its first worker

# a local cluster's event-loop watchdog and system monitor, slower than Dask's 20 ms / 500 ms: on a small machine
# their polling cost a third of the idle overhead (the dashboard's CPU and memory plots update every 2 s)
QUIET_MONITORS = {"distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "2s"}

OnStart = Callable[[str, str | None], None]  # (scheduler address, dashboard link or None)


@dataclass(frozen=True)
class ClusterSpec:
    """Where `process` runs its patients: in this process, a local cluster of processes, or an existing one."""

    workers: int = 1
    threads_per_worker: int = 1
    scheduler: str | None = None  # ``tcp://host:8786`` or a scheduler file

    @property
    def in_process(self) -> bool:
        return self.scheduler is None and self.workers <= 1


@dataclass(frozen=True)
class PatientTask:
    """What a worker needs to process one patient: plain data, no connection or open file."""

    db_url: str
    store_root: str
    workroot: str
    patient_id: int
    settings: Settings
    driver_pid: int  # SQLite: the driver holds the process lock under this pid


def run_patient_task(task: PatientTask) -> PatientRun:
    """On a worker: open an engine of its own and process one patient (:func:`process_patient`)."""
    engine = make_engine(task.db_url)
    try:
        with lock_of_driver(engine, task.driver_pid):
            store = FileStore(Path(task.store_root))
            return process_patient(engine, store, task.patient_id, task.settings, Path(task.workroot))
    finally:
        engine.dispose()


def process_on_cluster(
    engine: Engine,
    store: FileStore,
    settings: Settings,
    workroot: Path,
    cluster: ClusterSpec,
    *,
    patient: str | None = None,
    on_scan: OnScan | None = None,
    on_wait: OnWait | None = None,
    on_start: OnStart | None = None,
) -> ProcessReport:
    """The `process` use case with one Dask task per patient (see the module's docstring); then harmonisation of
    the new features and risk scores, once, in this process."""
    check_settings(settings)
    with process_lock(engine, on_wait=on_wait):
        report = ProcessReport()
        report.swept, report.store_busy = sweep(engine, store, workroot)
        with session_scope(engine) as s:
            pending = pending_patients(s, patient)
        if pending:
            private_dir(workroot)
            with _client(cluster) as client:
                _check_workers(client, engine, store, workroot)
                if on_start is not None:
                    on_start(client.scheduler.address, client.dashboard_link or None)
                _run_patients(client, engine, store, settings, workroot, pending, report, on_scan)
            after, report.store_busy = sweep(engine, store, workroot)  # what killed workers left
            for what, n in after.items():
                report.swept[what] = report.swept.get(what, 0) + n
        finish_run(engine, store, settings, report)
    return report


@contextmanager
def _client(cluster: ClusterSpec) -> Iterator[Client]:
    """A client of a new local cluster (closed with the block) or of the existing scheduler."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    if cluster.scheduler is None:
        config = {"distributed.scheduler.allowed-failures": WORKER_DEATHS_RETRIED, **QUIET_MONITORS}
        with dask.config.set(config):
            local = LocalCluster(
                n_workers=cluster.workers,
                threads_per_worker=cluster.threads_per_worker,
                processes=True,
                dashboard_address=":0",  # any free port: several runs may share a machine
                silence_logs=logging.ERROR,
            )
        with local, Client(local) as client:
            yield client
        return
    where = cluster.scheduler
    kwargs: dict[str, Any] = {"scheduler_file": where} if Path(where).is_file() else {"address": where}
    if "address" in kwargs and "://" not in where:
        raise MetatrackError(
            f"--scheduler {where!r}: neither a scheduler file nor a scheduler address such as tcp://host:8786"
        )
    try:
        client = Client(**kwargs, timeout=SCHEDULER_CONNECT_S)
    except (OSError, TimeoutError) as exc:
        raise MetatrackError(f"cannot reach the Dask scheduler {where}: {one_line(str(exc))}") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=WORKERS_WAIT_S)
        except TimeoutError:
            raise MetatrackError(
                f"the Dask scheduler {where} has no worker after {WORKERS_WAIT_S:.0f} s; start workers "
                f"(dask worker {client.scheduler.address}) and run again"
            ) from None
        yield client


def _check_workers(client: Client, engine: Engine, store: FileStore, workroot: Path) -> None:
    """Refuse a SQLite database that a worker on another host would open, and folders a worker cannot see."""
    hosts: dict[str, str] = client.run(socket.gethostname)
    if engine.dialect.name == "sqlite":
        others = sorted(set(hosts.values()) - {socket.gethostname()})
        if sqlite_file(engine) is None:
            raise MetatrackError(
                "an in-memory SQLite database cannot be shared with Dask workers; use a file or PostgreSQL"
            )
        if others:
            raise MetatrackError(
                f"SQLite database {sqlite_file(engine)} cannot be shared by Dask workers on other hosts "
                f"({', '.join(others)}); use PostgreSQL (--db postgresql://USER@HOST/DATABASE)"
            )
    for folder in (store.root, workroot):
        seen: dict[str, bool] = client.run(os.path.isdir, str(folder))
        blind = sorted({hosts.get(addr, addr) for addr, ok in seen.items() if not ok})
        if blind:
            raise MetatrackError(
                f"{folder} is not reachable from the Dask workers on {', '.join(blind)}: METATRACK_HOME must be on a "
                "shared filesystem, mounted at the same path on every worker"
            )


def _worker_url(engine: Engine) -> str:
    """The engine's URL as a worker opens it (password included; a SQLite path made absolute)."""
    url = engine.url
    db = sqlite_file(engine)
    if db is not None:
        url = url.set(database=str(db.resolve()))
    return url.render_as_string(hide_password=False)


def _run_patients(
    client: Client,
    engine: Engine,
    store: FileStore,
    settings: Settings,
    workroot: Path,
    pending: list[tuple[int, str, list[int]]],
    report: ProcessReport,
    on_scan: OnScan | None,
) -> None:
    """Submit one task per patient and take their results as they complete (progress in patient-sized steps)."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    url = _worker_url(engine)
    root, work = str(store.root.resolve()), str(workroot.resolve())
    futures: dict[Future, tuple[int, str, list[int]]] = {}
    run_tag = uuid.uuid4().hex[:8]  # keys of two runs sharing a scheduler differ
    for pk, external_id, scan_ids in pending:
        task = PatientTask(url, root, work, pk, settings, os.getpid())
        # the key names the database id, not the pseudonym: keys show on the dashboard
        fut = client.submit(run_patient_task, task, key=f"metatrack-patient-{pk}-{run_tag}", pure=False)
        futures[fut] = (pk, external_id, scan_ids)
    allowed = _allowed_failures(client)
    try:
        for fut in as_completed(futures):
            pk, external_id, scan_ids = futures[fut]
            try:
                run = fut.result()
            except KilledWorker:
                run = _worker_deaths(engine, pk, allowed + 1)
            if not run.held:  # the scans a worker committed before it died count too
                run.processed = _committed(engine, pk, scan_ids)
            run.patient = external_id
            _take(report, run, scan_ids, on_scan)
    except BaseException:  # Ctrl-C, a database gone for good: no patient is started after this
        client.cancel(list(futures), force=True)
        raise


def _committed(engine: Engine, patient_id: int, scan_ids: list[int]) -> list[int]:
    """Which of the patient's scans listed as pending at the start are processed now."""
    with session_scope(engine) as s:
        left = set(patient_pending_scans(s, patient_id))
    return [sid for sid in scan_ids if sid not in left]


def _allowed_failures(client: Client) -> int:
    def read(dask_scheduler: Any) -> int:
        return int(dask_scheduler.allowed_failures)

    return int(client.run_on_scheduler(read))


def _worker_deaths(engine: Engine, patient_id: int, deaths: int) -> PatientRun:
    """Dask gave up on a patient whose workers kept dying: its next pending scan is recorded as failed."""
    run = PatientRun(str(patient_id))
    with session_scope(engine) as s:
        left = patient_pending_scans(s, patient_id)
    if not left:
        return run  # every scan was committed before the last death
    msg = f"WorkerDied: the Dask worker processing this patient died {deaths} times (killed or out of memory)"
    first = left[0]
    if retrying(lambda: mark_failed(engine, first, msg), f"recording the failure of scan {first}"):
        run.failed[first] = msg
        run.waiting = left[1:]
    return run


def _take(report: ProcessReport, run: PatientRun, scan_ids: list[int], on_scan: OnScan | None) -> None:
    """Add one patient's result to the run's report and advance the progress by its scans."""
    if run.held:
        report.held.append(run.patient)
    else:
        report.patients.append(run.patient)
        report.processed += run.processed
        report.failed.update(run.failed)
        report.waiting += run.waiting
    if on_scan is None:
        return
    for sid in run.processed:
        on_scan(sid, None)
    for sid, error in run.failed.items():
        on_scan(sid, error)
    for _ in range(len(scan_ids) - len(run.processed) - len(run.failed)):
        on_scan(-1, None)

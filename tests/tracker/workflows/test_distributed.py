"""`process` on Dask: the same results as one process, a killed worker's patient retried, a sweep safe for a data
home that workers on several hosts share.

One small cohort (3 patients, 3 scans each, 64x64x48 at 4 mm, affine registration, radiomics on) is ingested once
into a SQLite template; `reference` is what one uninterrupted in-process run makes of a copy: every scan's lesions,
tracks, RECIST and patient features from the timeline, and every lesion feature value, keyed by pseudonym, date
and label (ids and timings left out). Workers die for real: a worker plugin watches its own process's scan work
folders and SIGKILLs the process when it starts its n-th scan.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from sqlalchemy import Engine, select

from db import migrate, repo
from db.models import FeatureValue, Lesion, Patient, Scan, ScanState
from db.session import make_engine, session_scope
from tests.helpers import ingested_home, result_differences
from tracker.errors import MetatrackError
from tracker.records import Settings
from tracker.simulator import SimulationConfig
from tracker.store import GRACE_S, FileStore, host_tag, work_dir_prefix, writer_suffix
from tracker.workflows.distributed import ClusterSpec, PatientTask, process_on_cluster, run_patient_task
from tracker.workflows.ingest import ingest_many, read_manifest
from tracker.workflows.process import process, sweep
from tracker.workflows.views import patients, timeline

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed_cohort")]

N_PATIENTS, N_SCANS = 3, 9
SETTINGS = Settings(preset="affine", threads=1, seed=0)
TOLERANCE = 1e-9


# ---------------------------------------------------------------------------------------------- results


def results(engine: Engine) -> dict[str, Any]:
    """What processing made, keyed by pseudonym, scan date and lesion label: no ids, no timings."""
    out: dict[str, Any] = {}
    for p in patients(engine):
        tl = timeline(engine, p["patient_id"])
        for scan in tl["scans"]:
            key = f"{p['patient_id']}/{scan['date']}"
            scan = {k: v for k, v in scan.items() if k != "id"}
            scan["lesions"] = [{k: v for k, v in les.items() if k != "id"} for les in scan["lesions"]]
            out[key] = scan
    with session_scope(engine) as s:
        rows = s.execute(
            select(Patient.external_id, Scan.scan_date, Lesion.label, FeatureValue.region, FeatureValue.tag)
            .add_columns(FeatureValue.value)
            .join(Lesion, Lesion.id == FeatureValue.lesion_id)
            .join(Scan, Scan.id == Lesion.scan_id)
            .join(Patient, Patient.id == Scan.patient_id)
        ).all()
    out["features"] = {f"{e}/{d}/{label}/{region}/{tag}": v for e, d, label, region, tag, v in rows}
    return out


def garbage(home: Path) -> dict[str, list[str]]:
    """What killed workers may leave: work folders, store temp files, unit journals."""
    return {
        "work_dirs": sorted(p.name for p in (home / "tmp").glob("scan-*")),
        "incoming": sorted(p.name for p in (home / "store").rglob(".incoming-*")),
        "journals": sorted(p.name for p in home.glob(".store.units/*")),
    }


NO_GARBAGE: dict[str, list[str]] = {"work_dirs": [], "incoming": [], "journals": []}


# ---------------------------------------------------------------------------------------------- fixtures


@dataclass
class Home:
    path: Path
    url: str
    engine: Engine
    store: FileStore

    @property
    def workroot(self) -> Path:
        return self.path / "tmp"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data home with the cohort ingested (SQLite)."""
    root = tmp_path_factory.mktemp("distributed")
    cfg = SimulationConfig(
        n_patients=N_PATIENTS, seed=3, shape=(64, 64, 48), spacing=(4.0, 4.0, 4.0), min_followups=2, max_followups=2
    )
    return ingested_home(root, cfg, N_SCANS)


def _copy(template: Path, where: Path) -> Home:
    path = where / "home"
    shutil.copytree(template, path)
    url = f"sqlite:///{path / 'metatrack.db'}"
    return Home(path, url, make_engine(url), FileStore(path / "store"))


@pytest.fixture()
def home(template: Path, tmp_path: Path) -> Iterator[Home]:
    h = _copy(template, tmp_path)
    yield h
    h.engine.dispose()


@dataclass
class Reference:
    results: dict[str, Any]
    counts: dict[str, int]  # rows per table


@pytest.fixture(scope="module")
def reference(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    h = _copy(template, tmp_path_factory.mktemp("reference"))
    report = process(h.engine, h.store, SETTINGS, h.workroot)
    assert len(report.processed) == N_SCANS and not report.failed
    out = results(h.engine)
    assert out["features"] and all(out[k]["recist"] for k in out if k != "features" and out[k]["role"] != "baseline")
    with session_scope(h.engine) as s:
        counts = repo.table_counts(s)
    h.engine.dispose()
    return Reference(out, counts)


@pytest.fixture()
def cluster_factory() -> Iterator[Any]:
    """Starts a local cluster of worker processes (the test's own, as an existing cluster would be)."""
    started: list[LocalCluster] = []

    def start(workers: int = 2, allowed_failures: int = 2) -> LocalCluster:
        with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        started.append(cluster)
        return cluster

    yield start
    for c in started:
        c.close()


class KillAtScan(WorkerPlugin):
    """SIGKILLs its worker process when the process starts its `nth` scan (its n-th work folder appears); with a
    `marker` file only the first worker to get there dies (the marker is created first)."""

    def __init__(self, workroot: Path, nth: int, marker: Path | None = None) -> None:
        self.workroot, self.nth, self.marker = str(workroot), nth, None if marker is None else str(marker)

    def setup(self, worker: Any) -> None:
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        pid, seen = os.getpid(), set()
        prefix = f"scan-{pid}-"
        while True:
            try:
                seen |= {name for name in os.listdir(self.workroot) if name.startswith(prefix)}
            except FileNotFoundError:
                pass
            if len(seen) >= self.nth:
                if self.marker is not None:
                    try:
                        os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                    except FileExistsError:
                        return
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- same results


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_local_workers_give_the_in_process_results(
    backend: str, template: Path, reference: Reference, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    h = _copy(template, tmp_path)
    if backend == "postgresql":  # the same cohort ingested into PostgreSQL, the store beside it
        h.engine.dispose()
        url = request.getfixturevalue("pg_url")
        h = Home(tmp_path / "pg-home", url, make_engine(url), FileStore(tmp_path / "pg-home" / "store"))
        migrate.upgrade(h.engine)
        cohort = template.parent / "cohort"
        done, failed = ingest_many(h.engine, h.store, read_manifest(cohort / "manifest.csv"))
        assert not failed and len(done) == N_SCANS
    started: list[tuple[str, str | None]] = []
    report = process_on_cluster(
        h.engine,
        h.store,
        SETTINGS,
        h.workroot,
        ClusterSpec(workers=2),
        on_start=lambda sched, dash: started.append((sched, dash)),
    )
    assert len(report.processed) == N_SCANS and not report.failed and not report.held
    assert sorted(report.patients) == [f"SIM{i:03d}" for i in range(1, N_PATIENTS + 1)]
    assert started and started[0][0].startswith("tcp://")
    assert result_differences(results(h.engine), reference.results, TOLERANCE) == []
    with session_scope(h.engine) as s:
        assert repo.table_counts(s) == reference.counts
        timings = [sc.processing["timings"] for sc in s.scalars(select(Scan))]
    assert all(t["patient_elapsed_s"] > 0 for t in timings)  # the patient's time so far, per scan
    assert garbage(h.path) == NO_GARBAGE
    h.engine.dispose()


# ---------------------------------------------------------------------------------------------- worker deaths


def test_a_worker_killed_mid_patient_has_its_patient_retried(
    home: Home, reference: Reference, tmp_path: Path, cluster_factory: Any
) -> None:
    """The first worker to start its second scan (its patient's baseline committed) is SIGKILLed; Dask runs the
    patient again on a worker; the run ends with the reference's rows, none twice, nothing missing, no garbage."""
    cluster = cluster_factory(workers=2, allowed_failures=2)
    marker = tmp_path / "killed"
    with Client(cluster) as client:
        client.register_plugin(KillAtScan(home.workroot.resolve(), nth=2, marker=marker))
    report = process_on_cluster(
        home.engine, home.store, SETTINGS, home.workroot, ClusterSpec(scheduler=cluster.scheduler_address)
    )
    assert marker.exists()  # a worker did die
    assert not report.failed and len(report.processed) == N_SCANS
    assert result_differences(results(home.engine), reference.results, TOLERANCE) == []
    with session_scope(home.engine) as s:
        assert repo.table_counts(s) == reference.counts
    assert garbage(home.path) == NO_GARBAGE  # the dead worker's work folder swept at the end of the run


def test_a_patient_whose_workers_keep_dying_is_recorded_failed_and_a_rerun_finishes_it(
    home: Home, reference: Reference, cluster_factory: Any
) -> None:
    """Every worker dies at the first scan it starts: after Dask's retries the patient's first scan is failed with
    the reason, its later scans wait; a rerun in one process picks up exactly that and ends as the reference."""
    cluster = cluster_factory(workers=1, allowed_failures=1)
    with Client(cluster) as client:
        client.register_plugin(KillAtScan(home.workroot.resolve(), nth=1))
    report = process_on_cluster(
        home.engine,
        home.store,
        SETTINGS,
        home.workroot,
        ClusterSpec(scheduler=cluster.scheduler_address),
        patient="SIM002",
    )
    assert not report.processed and len(report.failed) == 1 and len(report.waiting) == 2
    (error,) = report.failed.values()
    assert error.startswith("WorkerDied:") and "died 2 times" in error
    tl = timeline(home.engine, "SIM002")
    assert [s["state"] for s in tl["scans"]] == ["failed", "ingested", "ingested"]
    assert tl["scans"][0]["error"] == error
    again = process(home.engine, home.store, SETTINGS, home.workroot)
    assert len(again.processed) == N_SCANS and not again.failed
    assert result_differences(results(home.engine), reference.results, TOLERANCE) == []
    assert garbage(home.path) == NO_GARBAGE


# ---------------------------------------------------------------------------------------------- refusals


def test_a_worker_whose_driver_no_longer_holds_the_sqlite_lock_does_nothing(home: Home) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with session_scope(home.engine) as s:
        before = repo.table_counts(s)
        pk = s.scalar(select(Patient.id).where(Patient.external_id == "SIM001"))
    assert pk is not None
    task = PatientTask(home.url, str(home.store.root), str(home.workroot), pk, SETTINGS, dead.pid)
    with pytest.raises(MetatrackError, match=rf"run \(pid {dead.pid}\) that sent this work no longer holds"):
        run_patient_task(task)
    with session_scope(home.engine) as s:
        assert repo.table_counts(s) == before
        assert set(s.scalars(select(Scan.state))) == {ScanState.INGESTED}


def test_a_scheduler_that_is_neither_a_file_nor_an_address_is_refused(home: Home) -> None:
    with pytest.raises(MetatrackError, match="neither a scheduler file nor a scheduler address"):
        process_on_cluster(home.engine, home.store, SETTINGS, home.workroot, ClusterSpec(scheduler="no-such-file"))


# ---------------------------------------------------------------------------------------------- shared home sweep


def test_the_sweep_judges_a_pid_only_on_its_own_host(home: Home) -> None:
    """Workers on several hosts share the data home: another host's temp files and work folders are left alone
    (their pid means nothing here) until the grace period; this host's dead writers' are removed at once."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other = "0" * 8 if host_tag() != "0" * 8 else "1" * 8
    home.workroot.mkdir(mode=0o700)
    here_dead = home.workroot / f"scan-{dead.pid}-a{writer_suffix()}"
    there_dead = home.workroot / f"scan-{dead.pid}-b@{other}"
    there_old = home.workroot / f"scan-{dead.pid}-c@{other}"
    mine = home.workroot / f"{work_dir_prefix()}d{writer_suffix()}"
    for d in (here_dead, there_dead, there_old, mine):
        d.mkdir()
    old = time.time() - 2 * GRACE_S
    os.utime(there_old, (old, old))
    folder = next(p for p in home.store.root.iterdir() if p.is_dir())
    incoming_here = folder / f".incoming-{dead.pid}-x{writer_suffix()}"
    incoming_there = folder / f".incoming-{dead.pid}-y@{other}"
    for f in (incoming_here, incoming_there):
        f.write_bytes(b"partial")
    swept, busy = sweep(home.engine, home.store, home.workroot)
    assert swept == {"work_dirs": 2, "incoming": 1} and not busy
    assert sorted(p.name for p in home.workroot.iterdir()) == sorted([there_dead.name, mine.name])
    assert not incoming_here.exists() and incoming_there.exists()

"""Fault suite of `process`: concurrent runs and killed runs end in the database one uninterrupted run makes.

One small cohort (3 patients, 3 scans each, 64x64x48 at 4 mm, affine registration, no radiomics) is ingested once
into a SQLite template; `reference` is the canonical dump (every table's content but ids, timestamps and
durations; foreign keys as the rows they point to) after one uninterrupted `metatrack process`. The runs are real
processes of the console script (`--db URL`, METATRACK_HOME in tmp), started together or killed with SIGKILL.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Integer, select

from db import locks, migrate
from db.models import Base, Blob, Patient, Scan, ScanRole, ScanState
from db.results import record_failure
from db.session import make_engine, session_scope
from tests.helpers import ingested_home
from tracker.errors import MetatrackError
from tracker.simulator import SimulationConfig
from tracker.store import FileStore
from tracker.workflows.ingest import ingest_many, read_manifest
from tracker.workflows.process import count_pending, reset_patient

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("concurrency_cohort")]

ROOT = Path(__file__).resolve().parents[3]
METATRACK = Path(sys.executable).with_name("metatrack")
PROCESS_ARGS = ["--no-progress", "process", "--preset", "affine", "--no-features"]
N_SCANS = 9
RANDOM_KILLS = 12  # SIGKILLs at seeded random moments, after the two aimed ones (inside a unit, mid-write)
KILL_SEED = 20240607

# a run that kills itself (SIGKILL) at a chosen point, patched into the real CLI
_DIE_IN_SAVE = """
import os, signal, sys
import tracker.workflows.process as P
real = P.save_outcome
def save_outcome(session, scan_id, outcome, settings, baseline_id, transforms=None, derived=None):
    if transforms is not None:  # a follow-up's transform files are in the store, its transaction is open
        os.kill(os.getpid(), signal.SIGKILL)
    return real(session, scan_id, outcome, settings, baseline_id, transforms, derived)
P.save_outcome = save_outcome
"""
_DIE_MID_WRITE = """
import os, shutil, signal
real = shutil.copyfile
def copyfile(src, dst, *args, **kwargs):
    out = real(src, dst, *args, **kwargs)
    if ".incoming-" in os.path.basename(str(dst)):  # the store's temp file written, not yet renamed
        os.kill(os.getpid(), signal.SIGKILL)
    return out
shutil.copyfile = copyfile
"""
# a process that holds a lock file (written with its pid) / a patient claim until it is killed
_HOLD_FLOCK = """
import fcntl, os, sys, time
f = open(sys.argv[1], "w")
fcntl.flock(f, fcntl.LOCK_EX)
f.write(str(os.getpid()))
f.flush()
print("held", flush=True)
time.sleep(60)
"""
_HOLD_CLAIM = """
import sys, time
from db.locks import patient_claim
from db.session import make_engine
claim = patient_claim(make_engine(sys.argv[1]), 7)
assert claim.__enter__()
print("held", flush=True)
time.sleep(60)
"""
_RUN_CLI = """
import sys
from cli.main import main
sys.argv = ["metatrack", *sys.argv[1:]]
main()
"""


# ---------------------------------------------------------------------------------------------- canonical dump


def canonical_dump(engine: Engine) -> dict[str, list[tuple]]:
    """Every table's rows without ids, timestamps and durations, foreign keys replaced by the rows they point to.

    Sorted, so two databases holding the same results compare equal whatever their ids and row order.
    """
    tables = [t for t in Base.metadata.sorted_tables]
    rows: dict[str, dict[Any, dict[str, Any]]] = {}
    with session_scope(engine) as s:
        for t in tables:
            pk = next(iter(t.primary_key.columns))
            rows[t.name] = {r[pk.name]: dict(r) for r in s.execute(select(t)).mappings()}
    memo: dict[tuple[str, Any], tuple] = {}

    def canon(table_name: str, key: Any) -> tuple:
        if (table_name, key) in memo:
            return memo[(table_name, key)]
        t = Base.metadata.tables[table_name]
        row = rows[table_name][key]
        out = []
        for col in t.columns:
            if _skipped(col):
                continue
            value = row[col.name]
            fks = list(col.foreign_keys)
            if fks and value is not None:
                target = fks[0].column
                if _skipped(target):  # an id: the row it names
                    value = canon(target.table.name, value)
            out.append((col.name, _scrub(table_name, col.name, value)))
        memo[(table_name, key)] = tuple(out)
        return memo[(table_name, key)]

    return {t.name: sorted((canon(t.name, k) for k in rows[t.name]), key=repr) for t in tables}


def _skipped(col: Column) -> bool:
    """Ids, timestamps and durations: what two runs with the same results may differ in."""
    if col.primary_key and isinstance(col.type, Integer):
        return True
    python_type = getattr(col.type, "impl", col.type)
    try:
        is_time = python_type.python_type is datetime
    except NotImplementedError:
        is_time = False
    return is_time or col.name.endswith("_at") or col.name == "runtime_s"


def _scrub(table: str, column: str, value: Any) -> Any:
    if table == "scans" and column == "processing" and value is not None:
        return repr(sorted(value.get("settings", {}).items()))
    if isinstance(value, dict):  # registration metrics and the like: drop the time measurements
        return repr(sorted((k, v) for k, v in value.items() if not k.endswith("_s")))
    if isinstance(value, list):
        return repr(value)
    if hasattr(value, "value"):  # enums
        return value.value
    return value


# ---------------------------------------------------------------------------------------------- fixtures


@dataclass
class Template:
    cohort: Path
    home: Path  # metatrack.db + store/ with the cohort ingested


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("concurrency")
    cfg = SimulationConfig(
        n_patients=3, seed=3, shape=(64, 64, 48), spacing=(4.0, 4.0, 4.0), min_followups=2, max_followups=2
    )
    return Template(root / "cohort", ingested_home(root, cfg, N_SCANS))


def _home(backend: str, template: Template, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    """A copy of the ingested template on ``backend``: (data home, database URL)."""
    if backend == "sqlite":
        return _sqlite_home(template, tmp_path)
    return _pg_home(template, tmp_path, request.getfixturevalue("pg_url"))


def _sqlite_home(template: Template, where: Path) -> tuple[Path, str]:
    home = where / "home"
    shutil.copytree(template.home, home)
    return home, f"sqlite:///{home / 'metatrack.db'}"


def _pg_home(template: Template, where: Path, url: str) -> tuple[Path, str]:
    home = where / "home"
    engine = make_engine(url)
    migrate.upgrade(engine)
    done, failed = ingest_many(engine, FileStore(home / "store"), read_manifest(template.cohort / "manifest.csv"))
    engine.dispose()
    assert not failed and len(done) == N_SCANS
    return home, url


@dataclass
class Reference:
    dump: dict[str, list[tuple]]
    wall_s: float  # how long the uninterrupted run took, start-up included


@pytest.fixture(scope="module")
def reference(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    home, url = _sqlite_home(template, tmp_path_factory.mktemp("reference"))
    start = time.monotonic()
    res = subprocess.run(_cli(url), env=_env(home), cwd=ROOT, capture_output=True, text=True, timeout=300)
    wall_s = time.monotonic() - start
    assert res.returncode == 0, res.stderr
    assert _processed(res.stderr) == N_SCANS
    dump = _dump(url)
    assert all(dump[t] for t in ("lesions", "lesion_tracks", "track_links", "registrations", "recist_assessments"))
    assert all(dump[t] for t in ("patient_features",))
    return Reference(dump, wall_s)


def _dump(url: str) -> dict[str, list[tuple]]:
    engine = make_engine(url)
    try:
        return canonical_dump(engine)
    finally:
        engine.dispose()


def _cli(url: str) -> list[str]:
    return [str(METATRACK), "--db", url, *PROCESS_ARGS]


def _patched_cli(url: str, patch: str) -> list[str]:
    return [sys.executable, "-c", patch + _RUN_CLI, "--db", url, *PROCESS_ARGS]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "METATRACK_DB"}
    env["METATRACK_HOME"] = str(home)
    return env


def _processed(stderr: str) -> int:
    m = re.search(r"processed (\d+) scans", stderr)
    assert m, stderr
    return int(m.group(1))


def _garbage(home: Path, url: str) -> dict[str, list[str]]:
    """What killed runs may leave: work folders, store temp files, unit journals, store objects without a row."""
    store = home / "store"
    objects = {f"{p.parent.name}{p.name[:62]}": p for p in store.glob("??/*") if not p.name.startswith(".")}
    engine = make_engine(url)
    with session_scope(engine) as s:
        rows = set(s.scalars(select(Blob.sha256)))
    engine.dispose()
    return {
        "work_dirs": sorted(p.name for p in (home / "tmp").glob("scan-*")),
        "incoming": sorted(p.name for p in store.rglob(".incoming-*")),
        "journals": sorted(p.name for p in home.glob(".store.units/*")),
        "orphans": sorted(str(p.relative_to(store)) for h, p in objects.items() if h not in rows),
    }


NO_GARBAGE = {"work_dirs": [], "incoming": [], "journals": [], "orphans": []}


# ---------------------------------------------------------------------------------------------- concurrency


def _concurrent_runs(home: Path, url: str, n: int = 3) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(_cli(url), env=_env(home), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_concurrent_runs_end_as_one_run(
    backend: str, template: Template, reference: Reference, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Three `process` runs started together: none fails, each scan is processed once, the database is one run's."""
    home, url = _home(backend, template, tmp_path, request)
    runs = _concurrent_runs(home, url)
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    assert sum(_processed(r.stderr) for r in runs) == N_SCANS  # no scan done twice
    assert _dump(url) == reference.dump
    assert _garbage(home, url) == NO_GARBAGE


# ---------------------------------------------------------------------------------------------- kills


def _aimed_kills(home: Path, url: str) -> list[dict[str, list[str]]]:
    """Two runs that kill themselves: inside a follow-up's unit (transform files stored, no commit), mid-write;
    returns what each left (the next run sweeps it)."""
    left = []
    for patch in (_DIE_IN_SAVE, _DIE_MID_WRITE):
        res = subprocess.run(_patched_cli(url, patch), env=_env(home), cwd=ROOT, capture_output=True, timeout=300)
        assert res.returncode == -signal.SIGKILL, res.stderr
        left.append(_garbage(home, url))
    return left


def _random_kills(home: Path, url: str, kills: int, seed: int, run_s: float) -> list[tuple[float, int, bool]]:
    """`kills` runs killed at seeded random moments: (delay, scans pending at the start, still running when killed).

    The moments are drawn between 20% and 90% of `run_s` (an uninterrupted run's time: start-up, then scans).
    When fewer than 3 scans are pending, the patients' follow-ups are reset first (`process --reprocess-from`'s
    workflow), so that every kill lands in a run with work to do.
    """
    rng = random.Random(seed)
    engine = make_engine(url)
    out = []
    try:
        for _ in range(kills):
            if count_pending(engine) < 3:
                with session_scope(engine) as s:
                    firsts = [(p.external_id, p.scans[1].scan_date) for p in s.scalars(select(Patient))]
                for patient, day in firsts:
                    reset_patient(engine, patient, day)
            pending = count_pending(engine)
            delay = rng.uniform(0.2, 0.9) * run_s
            p = subprocess.Popen(
                _cli(url), env=_env(home), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            time.sleep(delay)
            running = p.poll() is None
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)  # reaped: its pid is gone
            out.append((round(delay, 2), pending, running))
    finally:
        engine.dispose()
    return out


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_killed_runs_then_a_rerun_end_as_one_run_and_leave_no_garbage(
    backend: str, template: Template, reference: Reference, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    home, url = _home(backend, template, tmp_path, request)
    in_unit, mid_write = _aimed_kills(home, url)
    assert in_unit["work_dirs"] and in_unit["orphans"], in_unit  # what the issue saw
    assert mid_write["work_dirs"] and mid_write["incoming"], mid_write
    kills = _random_kills(home, url, RANDOM_KILLS, KILL_SEED, reference.wall_s)
    assert sum(running for _, _, running in kills) >= RANDOM_KILLS // 2, kills  # most kills hit a live run
    res = subprocess.run(_cli(url), env=_env(home), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert _dump(url) == reference.dump, kills
    assert _garbage(home, url) == NO_GARBAGE


# ---------------------------------------------------------------------------------------------- units


@pytest.fixture()
def one_scan(engine: Engine) -> Iterator[int]:
    with session_scope(engine) as s:
        s.add(Blob(sha256="a" * 64, kind="image", suffix=".nii.gz", size_bytes=1))
        p = Patient(external_id="P1")
        s.add(p)
        s.flush()
        scan = Scan(
            patient_id=p.id,
            scan_date=date(2024, 1, 1),
            role=ScanRole.BASELINE,
            modality="CT",
            image_sha256="a" * 64,
            source_format="nifti",
            source_name="a.nii.gz",
            size_xyz=[1, 1, 1],
            spacing_xyz=[1.0, 1.0, 1.0],
            origin_xyz=[0.0, 0.0, 0.0],
            direction=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        )
        s.add(scan)
        s.flush()
        sid = scan.id
    yield sid


def test_a_failure_never_marks_a_processed_scan(engine: Engine, one_scan: int) -> None:
    """A run's failure handler must not overwrite what another run committed (the scan stays processed)."""
    with session_scope(engine) as s:
        s.get_one(Scan, one_scan).state = ScanState.PROCESSED
    with session_scope(engine) as s:
        assert record_failure(s, one_scan, "IntegrityError: UNIQUE constraint failed") is False
    with session_scope(engine) as s:
        scan = s.get_one(Scan, one_scan)
        assert scan.state == ScanState.PROCESSED and scan.error is None
        scan.state = ScanState.INGESTED
    with session_scope(engine) as s:
        assert record_failure(s, one_scan, "boom") is True
    with session_scope(engine) as s:
        assert s.get_one(Scan, one_scan).state == ScanState.FAILED


def test_a_second_sqlite_process_run_waits_saying_who_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'mt.db'}")
    path = locks.sqlite_lock_path(engine, locks.PROCESS_LOCK_SUFFIX)
    assert path is not None
    monkeypatch.setattr(locks, "NOTIFY_EVERY_S", 0.3)
    heard: list[int | None] = []
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_FLOCK, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(MetatrackError, match=rf"another `process` run \(pid {holder.pid}\)") as err:
            with locks.process_lock(engine, wait_s=1.0, on_wait=lambda pid, _s: heard.append(pid)):
                pass
        assert "\n" not in str(err.value)
        assert heard and set(heard) == {holder.pid}
        holder.kill()  # SIGKILL: the kernel drops the lock
        holder.wait()
        with locks.process_lock(engine, wait_s=5.0):
            assert path.read_text().split() == [str(os.getpid())]
            assert path.stat().st_mode & 0o777 == 0o600
    finally:
        holder.kill()
        holder.wait()
    engine.dispose()


@pytest.mark.postgres
def test_a_patient_claim_is_exclusive_and_dies_with_its_process(pg_url: str) -> None:
    engine = make_engine(pg_url)
    with locks.patient_claim(engine, 7) as mine:
        assert mine
        with locks.patient_claim(engine, 7) as again, locks.patient_claim(engine, 8) as other:
            assert not again and other  # its own connection: even this process's second claim is refused
    with locks.patient_claim(engine, 7) as mine:
        assert mine  # released
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_CLAIM, pg_url], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with locks.patient_claim(engine, 7) as mine:
            assert not mine
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 10
        while True:
            with locks.patient_claim(engine, 7) as mine:
                if mine:
                    break
            assert time.monotonic() < deadline, "the killed process's claim outlived it"
            time.sleep(0.1)
    finally:
        holder.kill()
        holder.wait()
    engine.dispose()

"""Re-scoring: conditional risk from curves, idempotent/resumable/concurrent rescore, failures and retry."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select, update

import tracker.workflows.rescore as rescore
from db import jobs
from db.migrate import upgrade
from db.models import ClinicalEvent, EventKind, Job, JobState, PatientFeature, RiskScore
from db.registry import promote, register_model
from db.session import make_engine, session_scope
from tests.helpers import FEATURES, fill_cohort, synthetic_tables, tiny_model
from tracker.errors import MetatrackError
from tracker.scoring import DAYS_PER_MONTH, conditional_risk, curve_row_horizon, survival_at
from tracker.store import FileStore
from tracker.survival.model import interpolate_survival

AS_OF = date(2024, 6, 1)  # later than every synthetic scan (they end before mid-2023)
HORIZONS = (6, 12, 24)


def test_conditional_risk_hand_computed() -> None:
    grid = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    s = np.array([[0.9, 0.8, 0.72, 0.6, 0.5, 0.45]])
    assert conditional_risk(s, grid, np.array([0.0]), 2.0)[0] == pytest.approx(1 - 0.8)
    assert conditional_risk(s, grid, np.array([1.0]), 2.0)[0] == pytest.approx(1 - 0.72 / 0.9)
    # log-linear inside a bin: S(1.5) = sqrt(0.9 * 0.8), S(2.5) = sqrt(0.8 * 0.72)
    assert conditional_risk(s, grid, np.array([1.5]), 1.0)[0] == pytest.approx(1 - np.sqrt(0.72 / 0.9))
    assert survival_at(s, grid, np.array([0.5]))[0] == pytest.approx(np.sqrt(0.9))
    # past the grid the last bin's hazard continues: S(7) = 0.45 * (0.45 / 0.5)
    assert conditional_risk(s, grid, np.array([5.0]), 2.0)[0] == pytest.approx(1 - 0.45 * 0.9 / 0.5)
    assert curve_row_horizon([6, 12, 24]) == 12 and curve_row_horizon([3, 6]) == 3


def _setup(engine: Engine, tmp_path: Path, n: int = 30, seed: int = 11) -> tuple[FileStore, dict[str, int], object]:
    store = FileStore(tmp_path / "store")
    visits, events = synthetic_tables(n, seed=seed)
    ids = fill_cohort(engine, visits, events)
    with session_scope(engine) as s:
        register_model(s, store, tiny_model(), "gru", "metastasis")
        promote(s, "gru:1")
    return store, ids, (visits, events)


def _expected_rows(visits, events, as_of: date) -> int:
    """Scans x horizons, plus a tick per patient without a metastasis by the as-of date."""
    had_event = set(events.loc[(events["event"] == 1) & (events["event_date"] <= as_of), "patient_id"])
    ticks = sum(1 for p in visits["patient_id"].unique() if p not in had_event)
    return (len(visits) + ticks) * len(HORIZONS)


def _snapshot(engine: Engine) -> tuple[int, object, int]:
    with session_scope(engine) as s:
        return (
            s.scalar(select(func.count()).select_from(RiskScore)),
            s.scalar(select(func.max(RiskScore.computed_at))),
            s.scalar(select(func.count()).select_from(Job)),
        )


def test_rescore_idempotent_and_matches_model(engine: Engine, tmp_path: Path) -> None:
    store, ids, (visits, events) = _setup(engine, tmp_path)
    first = rescore.rescore_all(engine, store, as_of=AS_OF, batch_size=7)
    assert first["planned"] == 30 and first["jobs_done"] == 30 and first["jobs_failed"] == 0
    n_rows, computed, n_jobs = _snapshot(engine)
    assert n_rows == _expected_rows(visits, events, AS_OF) == first["rows_written"]
    second = rescore.rescore_all(engine, store, as_of=AS_OF, batch_size=7)
    assert second["planned"] == 0 and second["rows_written"] == 0
    assert rescore.plan(engine, as_of=AS_OF) == 0
    assert _snapshot(engine) == (n_rows, computed, n_jobs)
    # risks at scan dates are the model's own 1 - S(h) from each visit
    truth = tiny_model().predict_all_visits(visits[["patient_id", "time_days", *FEATURES]], HORIZONS)
    with session_scope(engine) as s:
        got = s.execute(
            select(RiskScore.patient_id, RiskScore.as_of_date, RiskScore.horizon_months, RiskScore.risk).where(
                RiskScore.scan_id.is_not(None)
            )
        ).all()
        curves = s.scalar(select(func.count()).select_from(RiskScore).where(RiskScore.curve.is_not(None)))
    assert curves == n_rows // len(HORIZONS)
    by_key = {(p, d, h): r for p, d, h, r in got}
    name_of = {v: k for k, v in ids.items()}
    visits = visits.assign(visit_index=visits.groupby("patient_id").cumcount() + 1)
    merged = truth.merge(visits[["patient_id", "visit_index", "scan_date"]], on=["patient_id", "visit_index"])
    stored = [by_key[(ids[p], d, int(h))] for p, d, h in merged[["patient_id", "scan_date", "horizon_months"]].values]
    # float32 GRU: batch composition moves results by ~1e-7 (relative)
    np.testing.assert_allclose(stored, merged["risk"], rtol=1e-5, atol=1e-7)
    assert len(by_key) == len(merged)
    assert {name_of[p] for p, _, _ in by_key} == set(ids)  # every patient of the cohort is scored


def test_calendar_tick_is_conditional_risk_from_last_visit(engine: Engine, tmp_path: Path) -> None:
    store, ids, (visits, events) = _setup(engine, tmp_path, n=12, seed=12)
    rescore.rescore_all(engine, store, as_of=AS_OF)
    free = events[events["event"] == 0]["patient_id"].iloc[0]
    sick = events[events["event"] == 1]["patient_id"].iloc[0]
    mine = visits[visits["patient_id"] == free]
    later = date.fromordinal(mine["scan_date"].max().toordinal() + 100)
    rescore.rescore_all(engine, store, as_of=later)  # a later tick for everyone still event-free
    _, surv = tiny_model().survival_all_visits(mine[["patient_id", "time_days", *FEATURES]])
    grid = tiny_model().grid_months
    t = 100 / DAYS_PER_MONTH
    with session_scope(engine) as s:
        rows = dict(
            s.execute(
                select(RiskScore.horizon_months, RiskScore.risk).where(
                    RiskScore.patient_id == ids[free], RiskScore.as_of_date == later, RiskScore.scan_id.is_(None)
                )
            ).all()
        )
        sick_ticks = s.scalar(
            select(func.count())
            .select_from(RiskScore)
            .where(RiskScore.patient_id == ids[sick], RiskScore.scan_id.is_(None))
        )
    for h in HORIZONS:
        s_t = interpolate_survival(surv[-1:], grid, t)[0]
        s_th = interpolate_survival(surv[-1:], grid, t + h)[0]
        # batch vs single-patient scoring of the averaged ensemble differs in the last float digits only
        assert rows[h] == pytest.approx(1.0 - s_th / s_t, rel=1e-7)
    assert sick_ticks == 0  # a patient with a metastasis before the as-of date gets no calendar tick


def test_changed_inputs_rescore_only_that_patient(engine: Engine, tmp_path: Path) -> None:
    store, ids, _ = _setup(engine, tmp_path, n=10, seed=13)
    rescore.rescore_all(engine, store, as_of=AS_OF)
    with session_scope(engine) as s:
        before = dict(s.execute(select(RiskScore.id, RiskScore.computed_at)).all())
        s.execute(
            update(PatientFeature)
            .where(PatientFeature.patient_id == ids["S00004"], PatientFeature.tag == "burden_log")
            .values(value=PatientFeature.value + 1.0)
        )
    assert rescore.plan(engine, as_of=AS_OF) == 1
    assert rescore.plan(engine, as_of=AS_OF) == 0  # planned twice: deduplicated
    stats = rescore.work(engine, store)
    assert stats.jobs_done == 1
    with session_scope(engine) as s:
        after = s.execute(select(RiskScore.id, RiskScore.patient_id, RiskScore.computed_at)).all()
    assert len(after) == len(before)
    changed = {p for i, p, c in after if c != before[i]}
    assert changed == {ids["S00004"]}


def test_crash_then_resume_completes_without_duplicates(engine: Engine, tmp_path: Path, monkeypatch) -> None:
    store, _, (visits, events) = _setup(engine, tmp_path, n=25, seed=14)
    real = rescore._write_batch
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("worker killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(rescore, "_write_batch", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        rescore.rescore_all(engine, store, as_of=AS_OF, batch_size=10)
    with session_scope(engine) as s:
        # the third batch, scored while the second was being written, went back to the queue with its attempt
        assert jobs.counts(s, rescore.JOB_KIND) == {"queued": 5, "running": 10, "done": 10, "failed": 0}
        attempts = s.execute(select(Job.state, Job.attempts)).all()
    assert {a for state, a in attempts if state == JobState.QUEUED} == {0}
    assert {a for state, a in attempts if state != JobState.QUEUED} == {1}
    monkeypatch.setattr(rescore, "_write_batch", real)
    # PostgreSQL keeps running jobs for the stale timeout unless asked; SQLite's lock proves the worker is gone
    stats = rescore.rescore_all(engine, store, as_of=AS_OF, batch_size=10, reclaim=engine.dialect.name != "sqlite")
    assert stats["reclaimed"] == 10 and stats["jobs_done"] == 15
    n_rows, _, n_jobs = _snapshot(engine)
    assert n_rows == _expected_rows(visits, events, AS_OF) and n_jobs == 25
    with session_scope(engine) as s:
        assert jobs.counts(s, rescore.JOB_KIND)["done"] == 25


def test_a_failed_write_stops_the_worker_and_gives_the_next_batch_back(
    engine: Engine, tmp_path: Path, monkeypatch
) -> None:
    store, _, _ = _setup(engine, tmp_path, n=30, seed=16)
    real = rescore._write_batch
    calls = {"n": 0}

    def fails_first(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(rescore, "_write_batch", fails_first)
    with pytest.raises(RuntimeError, match="disk full"):
        rescore.rescore_all(engine, store, as_of=AS_OF, batch_size=10)
    assert calls["n"] == 1  # no later batch was written after the failure
    with session_scope(engine) as s:
        # the failed batch stays running (reclaim recovers it, its attempt charged); the one scored meanwhile is
        # back in the queue as if never claimed
        assert jobs.counts(s, rescore.JOB_KIND) == {"queued": 20, "running": 10, "done": 0, "failed": 0}
        assert {a for st, a in s.execute(select(Job.state, Job.attempts)) if st == JobState.QUEUED} == {0}
        assert s.scalar(select(func.count()).select_from(RiskScore)) == 0


def test_in_memory_sqlite_rescores(tmp_path: Path) -> None:
    # each thread would open its own empty in-memory database: the batches are written in the worker's thread
    eng = make_engine("sqlite://")
    upgrade(eng)
    store, _, (visits, events) = _setup(eng, tmp_path, n=12, seed=17)
    stats = rescore.rescore_all(eng, store, as_of=AS_OF, batch_size=5)
    assert stats["jobs_done"] == 12
    assert _snapshot(eng)[0] == _expected_rows(visits, events, AS_OF)
    eng.dispose()


def test_failing_patient_fails_its_job_then_retry(engine: Engine, tmp_path: Path, monkeypatch) -> None:
    store, ids, _ = _setup(engine, tmp_path, n=8, seed=15)
    real = rescore._score_group
    bad = ids["S00002"]

    def broken(model, visits, *args, **kwargs):
        if (visits["db_patient_id"] == bad).any():
            raise ValueError("corrupt features")
        return real(model, visits, *args, **kwargs)

    monkeypatch.setattr(rescore, "_score_group", broken)
    stats = rescore.rescore_all(engine, store, as_of=AS_OF)
    assert (stats["jobs_done"], stats["jobs_failed"]) == (7, 1)
    with session_scope(engine) as s:
        failed = jobs.list_jobs(s, state="failed")
        assert len(failed) == 1 and failed[0]["payload"]["patient_id"] == bad
        assert "corrupt features" in failed[0]["error"] and failed[0]["attempts"] == 1
        assert s.scalar(select(func.count()).select_from(RiskScore).where(RiskScore.patient_id == bad)) == 0
    assert rescore.plan(engine, as_of=AS_OF) == 0  # a failed job waits for `jobs retry`
    monkeypatch.setattr(rescore, "_score_group", real)
    with session_scope(engine) as s:
        assert jobs.retry(s, all_failed=True) == 1
    assert rescore.work(engine, store).jobs_done == 1
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(RiskScore).where(RiskScore.patient_id == bad)) > 0
        with pytest.raises(MetatrackError, match="only failed"):
            jobs.retry(s, job_id=failed[0]["id"])


def test_sqlite_allows_one_worker(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'one.db'}")
    upgrade(eng)
    with jobs.worker_lock(eng), pytest.raises(MetatrackError, match="another worker"):
        rescore.work(eng, FileStore(tmp_path / "store"))
    with pytest.raises(MetatrackError, match="PostgreSQL"):
        rescore.rescore_all(eng, FileStore(tmp_path / "store"), workers=2)
    eng.dispose()


def test_score_patients_noop_without_model_then_scores_only_those(engine: Engine, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    visits, events = synthetic_tables(8, seed=16)
    ids = fill_cohort(engine, visits, events)
    free = list(events.loc[events["event"] == 0, "patient_id"])
    a, b = ids[free[0]], ids[free[1]]
    assert rescore.score_patients(engine, store, [a], as_of=AS_OF).jobs_done == 0
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        register_model(s, store, tiny_model(), "gru", "metastasis")
        promote(s, "gru")
    assert rescore.plan(engine, as_of=AS_OF) == 8  # queued for everyone ...
    stats = rescore.score_patients(engine, store, [a, b], as_of=AS_OF)
    assert stats.jobs_done == 2  # ... but only these two are worked now
    with session_scope(engine) as s:
        scored = set(s.scalars(select(RiskScore.patient_id).distinct()))
        assert scored == {a, b}
        assert jobs.counts(s)["queued"] == 6
        assert s.scalar(select(func.count()).where(RiskScore.patient_id == a, RiskScore.scan_id.is_(None))) == 3
        # an event recorded before the as-of date removes the tick: the patient is stale again
        s.add(ClinicalEvent(patient_id=a, kind=EventKind.METASTASIS, event_date=AS_OF - timedelta(1)))
    assert rescore.score_patients(engine, store, [a], as_of=AS_OF).jobs_done == 1
    with session_scope(engine) as s:
        fps = set(s.scalars(select(RiskScore.input_fingerprint).where(RiskScore.patient_id == a)))
        ticks = s.scalars(
            select(RiskScore.input_fingerprint).where(RiskScore.patient_id == a, RiskScore.scan_id.is_(None))
        )
        # the old tick rows stay (history of what was reported), the scan rows carry the new fingerprint
        assert len(fps) == 2 and len(set(ticks)) == 1


@pytest.mark.postgres
def test_concurrent_workers_postgres_each_job_once(pg_url: str, tmp_path: Path) -> None:
    eng = make_engine(pg_url)
    upgrade(eng)
    store, _, (visits, events) = _setup(eng, tmp_path, n=60, seed=17)
    stats = rescore.rescore_all(eng, store, as_of=AS_OF, workers=2, batch_size=4)
    assert stats["jobs_done"] == 60 and stats["jobs_failed"] == 0
    with session_scope(eng) as s:
        attempts = list(s.scalars(select(Job.attempts)))
        states = set(s.scalars(select(Job.state)))
        workers = set(s.scalars(select(Job.worker)))
        n_rows = s.scalar(select(func.count()).select_from(RiskScore))
        distinct = s.scalar(
            select(func.count()).select_from(
                select(RiskScore.patient_id, RiskScore.as_of_date, RiskScore.horizon_months).distinct().subquery()
            )
        )
    assert attempts == [1] * 60 and states == {JobState.DONE}
    assert n_rows == distinct == _expected_rows(visits, events, AS_OF)
    assert len(workers) == 2  # both workers claimed batches (SKIP LOCKED shares the queue), each job once
    eng.dispose()


# --- reliability: stale running jobs, PostgreSQL restarts ------------------------------------------------------


@pytest.mark.postgres
def test_running_jobs_of_a_killed_worker_are_announced(pg_url: str, tmp_path: Path) -> None:
    """On PostgreSQL a killed worker's jobs stay running until stale: the run says how many, since when, and how
    to take them back."""
    eng = make_engine(pg_url)
    upgrade(eng)
    store, _, _ = _setup(eng, tmp_path, n=10, seed=18)
    rescore.plan(eng, as_of=AS_OF)
    with session_scope(eng) as s:
        ghost = jobs.claim(s, rescore.JOB_KIND, "deadhost:4242", 4)
    with session_scope(eng) as s:
        n, since = jobs.running_since(s, rescore.JOB_KIND, newer_than_s=jobs.DEFAULT_STALE_AFTER_S)
        assert n == 4 and since is not None and since.tzinfo is not None
        assert jobs.running_since(s, rescore.JOB_KIND, newer_than_s=0)[0] == 0
    notices: list[str] = []
    stats = rescore.rescore_all(eng, store, as_of=AS_OF, notify=notices.append)
    assert stats["jobs_done"] == 6 and len(ghost) == 4
    (notice,) = notices
    assert notice.startswith(f"warning: 4 re-scoring job(s) have been running since {since:%Y-%m-%d %H:%M}")
    assert "`metatrack rescore --reclaim`" in notice and "15 minutes" in notice
    notices.clear()
    stats = rescore.rescore_all(eng, store, as_of=AS_OF, reclaim=True, notify=notices.append)
    assert stats["reclaimed"] == 4 and stats["jobs_done"] == 4 and notices == []
    eng.dispose()


class ThrowawayCluster:
    """A PostgreSQL cluster of its own (initdb + pg_ctl on a free port, run as the postgres user when root), that a
    test may stop and start; never the shared server."""

    def __init__(self, root: Path) -> None:
        import glob
        import os
        import pwd
        import shutil
        import socket

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
        found = bins[-1] if bins else shutil.which("initdb")
        if not found:
            pytest.skip("no initdb (PostgreSQL server binaries) to start a throwaway cluster")
        self.bin = Path(found).parent
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root without a postgres user: initdb refuses root")
            runuser = shutil.which("runuser")
            if runuser is None:
                pytest.skip("running as root without runuser to start initdb as postgres")
            self.as_user = [runuser, "-u", "postgres", "--"]
            os.chown(root, user.pw_uid, user.pw_gid)
        self.root = root
        self.data = root / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        import subprocess

        res = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {res.stderr.strip() or res.stdout.strip()}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def database(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture()
def throwaway_pg():
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="mt_pg_"))  # not under pytest's tmp_path: the postgres user must enter it
    cluster = None
    try:
        cluster = ThrowawayCluster(root)
        yield cluster
    finally:
        if cluster is not None:
            try:
                cluster.stop("immediate")
            except RuntimeError:
                pass  # already stopped
        shutil.rmtree(root, ignore_errors=True)


def _scores(engine: Engine) -> dict[tuple, float]:
    with session_scope(engine) as s:
        rows = s.execute(
            select(
                RiskScore.patient_id,
                RiskScore.scan_id,
                RiskScore.as_of_date,
                RiskScore.horizon_months,
                RiskScore.input_fingerprint,
                RiskScore.risk,
            )
        ).all()
    return {tuple(r[:-1]): r[-1] for r in rows}


def _same_scores(got: dict[tuple, float], want: dict[tuple, float]) -> None:
    assert got.keys() == want.keys()
    keys = list(want)
    # float32 GRU: batch composition moves results by ~1e-7 (relative)
    np.testing.assert_allclose([got[k] for k in keys], [want[k] for k in keys], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_postgres_restart_during_rescore_is_retried(throwaway_pg, tmp_path: Path, monkeypatch) -> None:
    """The server restarts while batches are claimed, read and written: the run waits, says so, and ends with
    exactly the rows of an uninterrupted run (a rerun adds nothing)."""
    import threading

    import db.scores

    ref = make_engine(throwaway_pg.database("uninterrupted"))
    upgrade(ref)
    ref_store, _, _ = _setup(ref, tmp_path / "ref", n=24, seed=21)
    rescore.rescore_all(ref, ref_store, as_of=AS_OF, batch_size=3)
    want = _scores(ref)
    ref.dispose()

    eng = make_engine(throwaway_pg.database("restarted"))
    upgrade(eng)
    store, _, _ = _setup(eng, tmp_path / "run", n=24, seed=21)
    real, calls, back = db.scores.upsert_scores, {"n": 0}, threading.Event()

    def upsert_scores(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # inside batch 2's write transaction, while batch 3 is claimed and read
            throwaway_pg.stop()
            threading.Timer(1.5, lambda: (throwaway_pg.start(), back.set())).start()
        return real(*args, **kwargs)

    monkeypatch.setattr(db.scores, "upsert_scores", upsert_scores)
    notices: list[str] = []
    stats = rescore.rescore_all(eng, store, as_of=AS_OF, batch_size=3, notify=notices.append)
    assert back.wait(30)
    assert notices and all(n.startswith("database connection lost while ") for n in notices)
    assert any("try 2 of 4 in 1 s" in n for n in notices) and all("\n" not in n for n in notices)
    assert any("while writing the scores of jobs 4..6" in n for n in notices)  # the killed transaction, again
    assert stats["jobs_failed"] == 0
    monkeypatch.setattr(db.scores, "upsert_scores", real)
    # the rerun: a claim whose commit answer was lost leaves jobs running; reclaim hands them out again
    rescore.rescore_all(eng, store, as_of=AS_OF, batch_size=3, reclaim=True)
    _same_scores(_scores(eng), want)
    with session_scope(eng) as s:
        assert jobs.counts(s, rescore.JOB_KIND) == {"queued": 0, "running": 0, "done": 24, "failed": 0}
    eng.dispose()


@pytest.mark.slow
def test_postgres_gone_during_rescore_is_one_line_then_a_rerun_completes(
    throwaway_pg, tmp_path: Path, monkeypatch
) -> None:
    """The server stops for good mid-run: after the retries the CLI prints one error line saying what was
    written, exit 1; once the server is back, `rescore --reclaim` ends with the rows of an uninterrupted run."""
    from typer.testing import CliRunner

    import db.session
    from cli.main import app

    ref = make_engine(throwaway_pg.database("uninterrupted"))
    upgrade(ref)
    ref_store, _, _ = _setup(ref, tmp_path / "ref", n=15, seed=22)
    rescore.rescore_all(ref, ref_store, as_of=AS_OF, batch_size=3)
    want = _scores(ref)
    ref.dispose()
    url = throwaway_pg.database("stopped")
    eng = make_engine(url)
    upgrade(eng)
    _setup(eng, tmp_path, n=15, seed=22)  # the model file in tmp_path/store: the CLI's data home is tmp_path
    eng.dispose()
    monkeypatch.setenv("METATRACK_HOME", str(tmp_path))
    monkeypatch.setattr(db.session, "RETRY_WAITS_S", (0.2, 0.2))
    real, calls = rescore._score_batch, {"n": 0}

    def score_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            throwaway_pg.stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(rescore, "_score_batch", score_batch)
    runner = CliRunner()
    res = runner.invoke(app, ["--db", url, "--no-progress", "rescore", "--as-of", "2024-06-01", "--batch-size", "3"])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert errors[0].startswith("error: rescore stopped: database connection lost while ")
    assert "gave up after 3 tries" in errors[0] and "were written before" in errors[0]
    assert all(ln.startswith("database connection lost while ") for ln in lines[:-1])
    assert "Traceback" not in res.output
    throwaway_pg.start()
    monkeypatch.setattr(rescore, "_score_batch", real)
    res = runner.invoke(app, ["--db", url, "--no-progress", "rescore", "--as-of", "2024-06-01", "--reclaim"])
    assert res.exit_code == 0, res.output
    eng = make_engine(url)
    _same_scores(_scores(eng), want)
    eng.dispose()

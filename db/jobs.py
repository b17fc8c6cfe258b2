"""A job queue in the database: enqueue with dedupe, claim, complete/fail/retry, reclaim jobs of lost workers.

PostgreSQL: any number of workers; a claim takes queued rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` so two
workers never take the same job. SQLite: one worker at a time, enforced by an exclusive ``flock`` on a lock file
next to the database (:func:`worker_lock`, a `db.locks.file_lock`); a second worker fails at once with a one-line error.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, case, func, select, update
from sqlalchemy.orm import Session

from db import locks
from db.models import Job, JobState
from db.types import rowcount, table_of, utcnow
from tracker.errors import MetatrackError

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_STALE_AFTER_S = 15 * 60  # a running job older than this is taken to belong to a dead worker
MAX_ERROR_CHARS = 2000
LOCK_SUFFIX = ".worker.lock"
IN_CHUNK = 5000  # values per IN (...) list
SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DATETIME storage format


def default_worker_name() -> str:
    """host:pid, unique among live workers."""
    return f"{socket.gethostname()}:{os.getpid()}"


def db_timestamp(session: Session, value: datetime) -> datetime | str:
    """A UTC timestamp as a raw driver parameter, in the form UTCDateTime stores it (naive text on SQLite)."""
    if session.get_bind().dialect.name == "sqlite":
        return value.astimezone(UTC).strftime(SQLITE_TIME_FORMAT)
    return value


def executemany(session: Session, sql: str, rows: Sequence[tuple]) -> None:
    """Run `sql` (with ? placeholders) once per row through the driver, in the session's transaction."""
    if not rows:
        return
    if session.get_bind().dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    session.connection().exec_driver_sql(sql, list(rows))


def enqueue(
    session: Session,
    kind: str,
    items: Sequence[tuple[str, dict[str, Any]]],
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> int:
    """Queue (dedupe_key, payload) jobs; returns how many were added or re-queued.

    A key that exists is left alone while queued, running or failed (failed jobs wait for `jobs retry`); a key
    whose job is done is re-queued (its output was asked for again, so it must have gone missing).
    """
    if not items:
        return 0
    table = table_of(Job)
    keys = [k for k, _ in items]
    present: dict[str, JobState] = {}
    for i in range(0, len(keys), IN_CHUNK):
        present.update(
            session.execute(
                select(table.c.dedupe_key, table.c.state).where(table.c.dedupe_key.in_(keys[i : i + IN_CHUNK]))
            ).all()
        )
    # raw executemany: SQLAlchemy's per-row parameter processing costs more than the insert itself
    now = db_timestamp(session, utcnow())
    rows = [(kind, key, json.dumps(payload), max_attempts, now) for key, payload in items]
    sql = (
        "INSERT INTO jobs (kind, dedupe_key, payload, state, attempts, max_attempts, created_at) "
        "VALUES (?, ?, ?, 'queued', 0, ?, ?) ON CONFLICT (dedupe_key) DO UPDATE SET state = 'queued', "
        "attempts = 0, error = NULL, payload = excluded.payload WHERE jobs.state = 'done'"
    )
    executemany(session, sql, rows)
    return sum(1 for k in keys if present.get(k, JobState.DONE) is JobState.DONE)


def claim(
    session: Session, kind: str, worker: str, limit: int, keys: Sequence[str] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """Mark up to `limit` queued jobs of `kind` (optionally only these dedupe keys) running for `worker`.

    Returns (id, payload), oldest first. Commit the caller's transaction right after, so other workers see the claim.
    """
    table = table_of(Job)
    ids = select(table.c.id).where(table.c.state == JobState.QUEUED, table.c.kind == kind)
    if keys is not None:
        ids = ids.where(table.c.dedupe_key.in_(list(keys)))
    ids = ids.order_by(table.c.id).limit(limit).with_for_update(skip_locked=True)
    stmt = (
        update(table)
        .where(table.c.id.in_(ids))
        .values(state=JobState.RUNNING, worker=worker, started_at=utcnow(), attempts=table.c.attempts + 1)
        .returning(table.c.id, table.c.payload)
    )
    rows = [(int(i), p) for i, p in session.execute(stmt)]
    return sorted(rows)


def _update_running(session: Session, job_ids: Sequence[int], worker: str, values: dict[str, Any]) -> int:
    """Set ``values`` on those of ``job_ids`` this worker is running; returns how many (a job reclaimed by someone
    else is not counted)."""
    if not job_ids:
        return 0
    table = table_of(Job)
    res = session.execute(
        update(table)
        .where(table.c.id.in_(list(job_ids)), table.c.worker == worker, table.c.state == JobState.RUNNING)
        .values(values)
    )
    return rowcount(res)


def complete(session: Session, job_ids: Sequence[int], worker: str) -> int:
    """Mark this worker's running jobs done; returns how many (a job reclaimed by someone else is not counted)."""
    return _update_running(session, job_ids, worker, {"state": JobState.DONE, "finished_at": utcnow(), "error": None})


def release(session: Session, job_ids: Sequence[int], worker: str) -> int:
    """Put this worker's running jobs back in the queue as if never claimed (the claim's attempt is given back);
    returns how many."""
    queued = {"state": JobState.QUEUED, "worker": None, "started_at": None, "attempts": table_of(Job).c.attempts - 1}
    return _update_running(session, job_ids, worker, queued)


def fail(session: Session, job_id: int, worker: str, error: str) -> None:
    """Mark a running job failed with its error (one line kept short); `retry` queues it again."""
    table = table_of(Job)
    session.execute(
        update(table)
        .where(table.c.id == job_id, table.c.worker == worker, table.c.state == JobState.RUNNING)
        .values(state=JobState.FAILED, finished_at=utcnow(), error=error[:MAX_ERROR_CHARS])
    )


def retry(session: Session, job_id: int | None = None, all_failed: bool = False, kind: str | None = None) -> int:
    """Queue a failed job again (or every failed job); returns how many; attempts start over."""
    if (job_id is None) == (not all_failed):
        raise MetatrackError("jobs retry: give a JOB_ID or --all-failed")
    table = table_of(Job)
    if job_id is not None:
        state = session.scalar(select(table.c.state).where(table.c.id == job_id))
        if state is None:
            raise MetatrackError(f"job {job_id} does not exist")
        if state is not JobState.FAILED:
            raise MetatrackError(f"job {job_id} is {state.value}, only failed jobs can be retried")
    q = update(table).where(table.c.state == JobState.FAILED)
    if job_id is not None:
        q = q.where(table.c.id == job_id)
    if kind is not None:
        q = q.where(table.c.kind == kind)
    res = session.execute(q.values(state=JobState.QUEUED, attempts=0, error=None, worker=None, finished_at=None))
    return rowcount(res)


def reclaim(session: Session, kind: str | None = None, older_than_s: float | None = DEFAULT_STALE_AFTER_S) -> int:
    """Give running jobs of lost workers back to the queue (None = every running job); returns how many.

    A job that has used up its attempts is marked failed instead, so a patient that kills its worker cannot loop.
    """
    table = table_of(Job)
    q = update(table).where(table.c.state == JobState.RUNNING)
    if kind is not None:
        q = q.where(table.c.kind == kind)
    if older_than_s is not None:
        q = q.where(table.c.started_at < utcnow() - timedelta(seconds=older_than_s))
    exhausted = table.c.attempts >= table.c.max_attempts
    res = session.execute(
        q.values(
            state=case((exhausted, JobState.FAILED), else_=JobState.QUEUED),
            error=case((exhausted, "worker lost while running the job (attempts used up)"), else_=None),
            worker=None,
        )
    )
    return rowcount(res)


def running_since(
    session: Session, kind: str | None = None, newer_than_s: float | None = None
) -> tuple[int, datetime | None]:
    """(how many jobs are running, when the oldest of them started); with `newer_than_s`, only those started within
    that many seconds -- the ones :func:`reclaim` with that age leaves alone, whether their worker lives or not."""
    table = table_of(Job)
    q = select(func.count(), func.min(table.c.started_at)).where(table.c.state == JobState.RUNNING)
    if kind is not None:
        q = q.where(table.c.kind == kind)
    if newer_than_s is not None:
        q = q.where(table.c.started_at >= utcnow() - timedelta(seconds=newer_than_s))
    n, oldest = session.execute(q).one()
    return int(n or 0), oldest


def counts(session: Session, kind: str | None = None) -> dict[str, int]:
    """Number of jobs per state."""
    q = select(Job.state, func.count()).group_by(Job.state)
    if kind is not None:
        q = q.where(Job.kind == kind)
    got = {s.value: int(n) for s, n in session.execute(q)}
    return {s.value: got.get(s.value, 0) for s in JobState}


def list_jobs(
    session: Session, state: str | None = None, kind: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest jobs (optionally of one state/kind) as plain dicts."""
    q = select(Job).order_by(Job.id.desc()).limit(limit)
    if state is not None:
        try:
            q = q.where(Job.state == JobState(state))
        except ValueError as exc:
            raise MetatrackError(f"--state {state!r}: use one of {[s.value for s in JobState]}") from exc
    if kind is not None:
        q = q.where(Job.kind == kind)
    return [
        {
            "id": j.id,
            "kind": j.kind,
            "state": j.state.value,
            "attempts": j.attempts,
            "worker": j.worker,
            "created_at": j.created_at,
            "finished_at": j.finished_at,
            "error": j.error,
            "payload": j.payload,
        }
        for j in session.scalars(q)
    ]


def sqlite_lock_path(engine: Engine) -> Path | None:
    """The worker lock file of a SQLite database file (None for PostgreSQL or in-memory SQLite)."""
    return locks.sqlite_lock_path(engine, LOCK_SUFFIX)


@contextmanager
def worker_lock(engine: Engine, wait: bool = False) -> Iterator[None]:
    """On SQLite, hold the single-worker lock (fail at once if taken, unless `wait`); on PostgreSQL, nothing."""
    path = sqlite_lock_path(engine)
    if path is None:
        yield
        return
    with ExitStack() as held:
        try:
            held.enter_context(locks.file_lock(path, wait_s=None if wait else 0.0))
        except locks.LockBusy as exc:
            holder = f"pid {exc.holder}" if exc.holder is not None else "another process"
            raise MetatrackError(
                f"another worker is already running on this SQLite database (lock {path}, held by {holder}); "
                "SQLite allows one worker, use PostgreSQL for several"
            ) from exc
        yield

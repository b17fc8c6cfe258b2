"""Who may write what, now: lock files beside a SQLite database and per-patient claims on PostgreSQL.

- :func:`file_lock`: an exclusive ``flock`` on a file created 0600, with the holder's pid written in it (so a
  second process can say who holds it); the kernel drops it when the holder dies, even by ``kill -9``. The rescore
  worker lock (`db.jobs.worker_lock`) and the process lock below are both this.
- :func:`process_lock`: `process` has one writer per SQLite database (``<db>.process.lock``); a second run waits,
  telling its caller every few seconds which pid holds the lock, and gives up with one line after ``wait_s``. On
  PostgreSQL it is nothing: patients are claimed one by one instead.
- :func:`patient_claim`: PostgreSQL: a session-level advisory lock per patient (``pg_try_advisory_lock``), taken
  on a connection of its own and held while the patient is processed; the server drops it when that connection
  dies, so a killed run leaves no claim behind. A patient claimed by another run is not waited for. SQLite: the
  claim is the process lock (taken here when the caller does not already hold it).
- :func:`lock_of_driver`: a Dask worker of a `process` run on SQLite writes under its driver's process lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from tracker.errors import MetatrackError

PROCESS_LOCK_SUFFIX = ".process.lock"
PROCESS_WAIT_S = 3600.0  # how long a second `process` run on the same SQLite database waits for the first
NOTIFY_EVERY_S = 5.0
POLL_S = 0.2
#: first key of the two-key advisory lock: keeps patient claims apart from any other advisory lock on the server
PATIENT_LOCK_SPACE = 0x4D540001

OnWait = Callable[[int | None, float], None]  # (holder pid or None when unknown, seconds waited so far)


class LockBusy(MetatrackError):
    """A lock file held by another process (``holder``: its pid, when it could be read)."""

    def __init__(self, path: Path, holder: int | None, waited_s: float) -> None:
        who = f"pid {holder}" if holder is not None else "another process"
        waited = f" after waiting {waited_s:.0f} s" if waited_s >= 1 else ""
        super().__init__(f"lock {path} is held by {who}{waited}")
        self.path, self.holder, self.waited_s = path, holder, waited_s


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite engine (None for PostgreSQL or in-memory SQLite)."""
    if engine.dialect.name != "sqlite":
        return None
    db = engine.url.database
    if not db or db == ":memory:":
        return None
    return Path(db)


def sqlite_lock_path(engine: Engine, suffix: str) -> Path | None:
    """``<database file><suffix>`` beside a SQLite database file (None for PostgreSQL or in-memory SQLite)."""
    db = sqlite_file(engine)
    return None if db is None else db.with_name(db.name + suffix)


def lock_holder(path: Path) -> int | None:
    """The pid written in a lock file (None when absent or unreadable)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def file_lock(
    path: Path, *, wait_s: float | None = 0.0, on_wait: OnWait | None = None, notify_every_s: float | None = None
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600) with this process's pid written in it.

    ``wait_s``: 0 fails at once, None waits as long as it takes, else at most that many seconds; ``on_wait`` is
    called about every ``notify_every_s`` (default :data:`NOTIFY_EVERY_S`) seconds while waiting. Raises
    :class:`LockBusy` when not acquired.
    """
    every = NOTIFY_EVERY_S if notify_every_s is None else notify_every_s
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a lock file an older version created world-readable
        start = time.monotonic()
        notified = start
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait_s is None and on_wait is None else fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if wait_s is not None and now - start >= wait_s:
                    raise LockBusy(path, lock_holder(path), now - start) from None
                if on_wait is not None and now - notified >= every:
                    notified = now
                    on_wait(lock_holder(path), now - start)
                time.sleep(POLL_S)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_held_lock = threading.Lock()
_held: dict[Path, int] = {}  # process locks this process holds, with their nesting depth


@contextmanager
def process_lock(
    engine: Engine, *, wait_s: float | None = PROCESS_WAIT_S, on_wait: OnWait | None = None
) -> Iterator[None]:
    """SQLite: the one-writer lock of `process` (re-entrant within a process); PostgreSQL: nothing.

    A second process waits for it (``on_wait`` every few seconds with the holder's pid) and raises a
    :class:`MetatrackError` after ``wait_s`` seconds.
    """
    path = sqlite_lock_path(engine, PROCESS_LOCK_SUFFIX)
    if path is None:
        yield
        return
    with _held_lock:
        nested = path in _held
        if nested:
            _held[path] += 1
    if nested:
        try:
            yield
        finally:
            with _held_lock:
                _held[path] -= 1
        return
    try:
        with file_lock(path, wait_s=wait_s, on_wait=on_wait):
            with _held_lock:
                _held[path] = 1
            try:
                yield
            finally:
                with _held_lock:
                    del _held[path]
    except LockBusy as exc:
        who = f"pid {exc.holder}" if exc.holder is not None else "another process"
        raise MetatrackError(
            f"another `process` run ({who}) is still writing to this SQLite database after {exc.waited_s:.0f} s "
            f"(lock {path}); try again when it has finished"
        ) from exc


@contextmanager
def lock_of_driver(engine: Engine, driver_pid: int) -> Iterator[None]:
    """In a worker process of a run whose driver (pid ``driver_pid``, same host) holds the SQLite process lock:
    count the lock as held here too for the block, so the worker's patient claims do not wait for its own driver.

    Raises a :class:`MetatrackError` when the lock file no longer names the driver (it died or finished: another
    run may be writing). PostgreSQL: nothing (patients are claimed one by one).
    """
    path = sqlite_lock_path(engine, PROCESS_LOCK_SUFFIX)
    if path is None:
        yield
        return
    holder = lock_holder(path)
    if holder != driver_pid:
        raise MetatrackError(
            f"the `process` run (pid {driver_pid}) that sent this work no longer holds {path} "
            f"(held by {'pid ' + str(holder) if holder else 'nobody'}); nothing was done"
        )
    with _held_lock:
        _held[path] = _held.get(path, 0) + 1
    try:
        yield
    finally:
        with _held_lock:
            _held[path] -= 1
            if not _held[path]:
                del _held[path]


@contextmanager
def patient_claim(engine: Engine, patient_id: int) -> Iterator[bool]:
    """Claim a patient for processing; yields False (claiming nothing) when another run holds it.

    PostgreSQL: ``pg_try_advisory_lock`` on a connection of its own (autocommit: no transaction stays open), held
    until the block ends and then released; a connection that dies takes the claim with it. SQLite: the process
    lock (waited for as :func:`process_lock` does when this process does not hold it yet); always True.
    """
    if engine.dialect.name != "postgresql":
        with process_lock(engine):
            yield True
        return
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    key = {"space": PATIENT_LOCK_SPACE, "id": int(patient_id)}
    try:
        claimed = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:space, :id)"), key))
        if not claimed:
            yield False
            return
        try:
            yield True
        finally:
            conn.scalar(text("SELECT pg_advisory_unlock(:space, :id)"), key)
    except BaseException:
        conn.invalidate()  # whatever state the claim is in, closing the session ends it
        raise
    finally:
        conn.close()

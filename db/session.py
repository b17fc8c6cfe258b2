"""Engines and sessions: the only place that builds them. One transaction per unit of work.

Also what keeps database trouble to one line: :func:`redact_url` masks passwords in any text, connection failures
become :class:`DatabaseUnavailable` (a :class:`MetatrackError` with the password masked), and :func:`retrying`
runs a unit of work again when the connection was lost (a PostgreSQL restart), saying so on stderr.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tracker.errors import MetatrackError, describe_db_error, one_line, redact_url

T = TypeVar("T")
_log = logging.getLogger("metatrack.db")

# Waits between tries when the database connection is lost (4 tries in all, 7 s of waiting): enough for a
# PostgreSQL restart or a fail-over, short enough that a server that is gone for good is reported soon.
RETRY_WAITS_S: tuple[float, ...] = (1.0, 2.0, 4.0)

# connection-level failures worth another try: the server is restarting, refusing or dropped us
_TRANSIENT_TEXT = (
    "connection refused",
    "could not connect",
    "starting up",
    "shutting down",
    "not yet accepting connections",
    "in recovery mode",
    "server closed the connection",
    "terminating connection",
    "connection reset",
    "connection timed out",
    "timeout expired",
    "could not receive data",
    "could not send data",
    "consuming input failed",
    "no such file or directory",  # the Unix socket is gone while the server restarts
)
_TRANSIENT_SQLSTATES = ("57P01", "57P02", "57P03")  # admin shutdown, crash shutdown, cannot connect now


class DatabaseUnavailable(MetatrackError):
    """The database cannot be reached (connection refused, lost, authentication failed); `transient` when another
    try may succeed (the server is restarting)."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def _transient_driver_error(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    if state is not None:
        return state.startswith("08") or state in _TRANSIENT_SQLSTATES
    message = str(exc).lower()
    return any(t in message for t in _TRANSIENT_TEXT)


def is_connection_loss(exc: BaseException) -> bool:
    """Whether `exc` is a lost or refused database connection that another try may cure (not a refused password,
    an unknown database, a constraint or a SQLite lock)."""
    if isinstance(exc, DatabaseUnavailable):
        return exc.transient
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        return exc.orig is not None and _transient_driver_error(exc.orig)
    return _transient_driver_error(exc)


def is_conflict(exc: BaseException) -> bool:
    """Whether `exc` is a unique or foreign-key violation: another writer committed the same rows first."""
    return isinstance(exc, IntegrityError)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is the database's disk being full (PostgreSQL 53100, SQLite "database or disk is full")."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    return getattr(orig, "sqlstate", None) == "53100" or "disk is full" in str(orig).lower()


def retrying(
    fn: Callable[[], T],
    what: str,
    *,
    waits: Sequence[float] | None = None,
    notify: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, tried again after each wait in `waits` (default :data:`RETRY_WAITS_S`) while it fails with a lost
    connection (:func:`is_connection_loss`); other errors propagate at once.

    `fn` must be one whole unit of work (its own transaction), safe to run again: a commit whose answer was lost
    may have happened. Each retry is announced through `notify` (default: a warning on the ``metatrack.db`` logger,
    which prints on stderr), naming `what` was being done and the wait. When the tries are used up a
    :class:`DatabaseUnavailable` says so in one line.
    """
    waits = RETRY_WAITS_S if waits is None else tuple(waits)
    say = notify or _log.warning
    for attempt in range(len(waits) + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_connection_loss(exc):
                raise
            cause = describe_db_error(exc) if not isinstance(exc, MetatrackError) else str(exc)
            if attempt == len(waits):
                raise DatabaseUnavailable(
                    f"database connection lost while {what}; gave up after {attempt + 1} tries "
                    f"over {sum(waits):g} s: {cause}"
                ) from exc
            wait = waits[attempt]
            say(f"database connection lost while {what} ({cause}); try {attempt + 2} of {len(waits) + 1} in {wait:g} s")
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def create_private_sqlite_file(path: Path) -> None:
    """Create a SQLite database file 0600 (its directory 0700) before SQLite does, which would make it 0644.

    SQLite opens an existing empty file as an empty database and gives its -wal and -shm files the database
    file's mode. The file is created with ``O_EXCL`` and an explicit mode rather than under a narrowed umask:
    the umask is process-wide, and another thread may be creating files meanwhile.
    """
    from tracker.home import private_dir

    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _connect_failure(ctx: ExceptionContext) -> BaseException | None:
    """``handle_error``: a failure to connect (no connection yet) becomes one redacted line; others pass."""
    if ctx.connection is not None or ctx.execution_context is not None or ctx.is_pre_ping:
        return None
    exc = ctx.original_exception
    engine = ctx.engine or (ctx.connection.engine if ctx.connection is not None else None)
    where = engine.url.render_as_string(hide_password=True) if engine is not None else "the database"
    return DatabaseUnavailable(
        f"cannot connect to the database {redact_url(where)}: {describe_db_error(exc)}",
        transient=_transient_driver_error(exc),
    )


def make_engine(url: str) -> Engine:
    """Create an engine for `url`; SQLite gets foreign keys, WAL and a busy timeout.

    A URL that cannot be parsed, names an unknown driver or one that is not installed raises a
    :class:`MetatrackError` (password masked); so does, later, a failure to connect (:class:`DatabaseUnavailable`).
    """
    shown = redact_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:
        # `from None`: the parser's own exception may quote the URL, password and all
        raise MetatrackError(
            f"database URL {shown!r} is not a valid SQLAlchemy URL ({redact_url(one_line(str(exc)))}); "
            "expected e.g. sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                create_private_sqlite_file(Path(parsed.database))
            engine = create_engine(parsed)
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
    except ArgumentError as exc:  # NoSuchModuleError: an unknown dialect or driver
        raise MetatrackError(
            f"database URL {shown!r}: unknown database driver {parsed.drivername!r} "
            f"({redact_url(one_line(str(exc)))}); use sqlite:/// or postgresql://"
        ) from None
    except ImportError as exc:  # the dialect is known but its driver package is not installed
        raise MetatrackError(
            f"database URL {shown!r}: the driver for {parsed.drivername!r} is not installed (no module {exc.name!r})"
        ) from None
    event.listen(engine, "handle_error", _connect_failure, retval=True)
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose work commits on success and rolls back entirely on any exception."""
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session


@contextmanager
def scratch_database(admin_url: str, prefix: str = "mt_scratch") -> Iterator[str]:
    """A new, empty PostgreSQL database beside ``admin_url``'s for the block, dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()

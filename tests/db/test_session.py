"""db.session: passwords masked in every message, bad URLs and unreachable servers as one line, the retry helper."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors as pg_errors
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from db.session import (
    DatabaseUnavailable,
    is_connection_loss,
    make_engine,
    redact_url,
    retrying,
)
from tracker.errors import MetatrackError

SECRET = "s3cr3t-Pw"


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        (f"postgresql://bob:{SECRET}@db.example:5432/onco", "postgresql://bob:***@db.example:5432/onco"),
        (f"postgresql+psycopg://bob:{SECRET}@host/x", "postgresql+psycopg://bob:***@host/x"),
        # an unescaped '@' in the password: nothing of it is left
        (f"postgresql://bob:{SECRET}@x@host/db", "postgresql://bob:***@host/db"),
        ("postgresql://bob:two words@host/db", "postgresql://bob:***@host/db"),
        # URLs SQLAlchemy cannot parse: no scheme, one slash, a bad port
        (f"bob:{SECRET}@host/db", "bob:***@host/db"),
        (f"postgresql:/bob:{SECRET}@host", "postgresql:/bob:***@host"),
        (
            f"database URL 'postgresql://bob:{SECRET}@h:np/x' is bad",
            "database URL 'postgresql://bob:***@h:np/x' is bad",
        ),
        (f"host=h password={SECRET} dbname=x", "host=h password=*** dbname=x"),
        (f"postgresql://h/x?user=bob&password={SECRET}", "postgresql://h/x?user=bob&password=***"),
        # nothing to mask
        ("postgresql://host:5432/db", "postgresql://host:5432/db"),
        ("sqlite:////tmp/metatrack.db", "sqlite:////tmp/metatrack.db"),
        ("met at 12:30, mail a@b", "met at 12:30, mail a@b"),
        ("postgresql://bob:***@h/x", "postgresql://bob:***@h/x"),  # masking twice changes nothing
    ],
)
def test_redact_url_masks_the_password_in_any_text(raw: str, masked: str) -> None:
    assert redact_url(raw) == masked


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"postgresql://bob:{SECRET}@host:notaport/x", "not a valid SQLAlchemy URL"),
        (f"bob:{SECRET}@host/x", "not a valid SQLAlchemy URL"),
        (f"nosuchdriver://bob:{SECRET}@host/x", "unknown database driver 'nosuchdriver'"),
        (f"mysql://bob:{SECRET}@host/x", "is not installed"),
    ],
)
def test_make_engine_refuses_bad_urls_without_the_password(url: str, words: str) -> None:
    with pytest.raises(MetatrackError) as info:
        make_engine(url)
    msg = str(info.value)
    assert words in msg and SECRET not in msg and "***" in msg and "\n" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no traceback quotes the URL either


def test_an_unreachable_server_is_one_masked_line() -> None:
    eng = make_engine(f"postgresql://bob:{SECRET}@127.0.0.1:1/x")
    with pytest.raises(DatabaseUnavailable) as info, eng.connect() as conn:
        conn.execute(text("SELECT 1"))
    msg = str(info.value)
    assert msg.startswith("cannot connect to the database postgresql+psycopg://bob:***@127.0.0.1:1/x")
    assert "Connection refused" in msg and SECRET not in msg and "\n" not in msg
    assert info.value.transient  # a refused connection may be a restart: worth a retry


def _lost() -> OperationalError:
    return OperationalError("SELECT 1", {}, pg_errors.AdminShutdown("terminating connection"), True)


def test_connection_loss_is_recognised() -> None:
    assert is_connection_loss(_lost())
    assert is_connection_loss(pg_errors.AdminShutdown("terminating connection"))
    assert is_connection_loss(OperationalError("x", {}, psycopg.OperationalError("server closed the connection")))
    assert not is_connection_loss(OperationalError("x", {}, psycopg.OperationalError("password authentication failed")))
    assert not is_connection_loss(IntegrityError("x", {}, psycopg.errors.UniqueViolation("duplicate key")))
    assert not is_connection_loss(ValueError("no"))
    assert not is_connection_loss(DatabaseUnavailable("role does not exist", transient=False))


def test_retrying_waits_then_succeeds_and_says_so() -> None:
    calls, said, slept = [], [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _lost()
        return "ok"

    assert retrying(flaky, "writing batch 7", notify=said.append, sleep=slept.append) == "ok"
    assert slept == [1.0, 2.0] and len(calls) == 3
    assert said[0].startswith("database connection lost while writing batch 7") and "try 2 of 4 in 1 s" in said[0]
    assert "try 3 of 4 in 2 s" in said[1]


def test_retrying_gives_up_with_one_line_and_lets_other_errors_through() -> None:
    def gone() -> None:
        raise _lost()

    with pytest.raises(DatabaseUnavailable) as info:
        retrying(gone, "claiming jobs", waits=(0.5, 0.5), notify=lambda m: None, sleep=lambda s: None)
    assert "gave up after 3 tries" in str(info.value) and "\n" not in str(info.value)
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        retrying(broken, "x", sleep=lambda s: None)
    assert calls == [1]  # not a connection loss: no second try

"""Shared fixtures: databases (SQLite and the local PostgreSQL server), an isolated data home, a CLI runner."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from db import migrate
from db.session import make_engine

PG_ADMIN_URL = os.environ.get("METATRACK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_available() -> str | None:
    """None when the PostgreSQL test server answers, else the reason it does not."""
    try:
        eng = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL test server {PG_ADMIN_URL} not reachable: {type(exc).__name__}: {exc}".splitlines()[0]


_PG_REASON = _pg_available()


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the local server, dropped afterwards."""
    if _PG_REASON:
        pytest.skip(_PG_REASON)
    name = f"mt_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL, once SQLite and once PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metatrack.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture()
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated engine on each database backend."""
    eng = make_engine(db_url)
    migrate.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated data home (METATRACK_HOME) with no METATRACK_DB override."""
    h = tmp_path / "home"
    monkeypatch.setenv("METATRACK_HOME", str(h))
    monkeypatch.delenv("METATRACK_DB", raising=False)
    return h

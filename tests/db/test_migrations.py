"""Migrations apply and revert on SQLite and PostgreSQL, and the ORM never drifts from them."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from db import migrate
from db.models import Base
from db.session import make_engine


def test_upgrade_downgrade_round_trip(db_url: str) -> None:
    eng = make_engine(db_url)
    migrate.upgrade(eng)
    assert migrate.current_revision(eng) == migrate.head_revision()
    tables = set(inspect(eng).get_table_names())
    assert set(Base.metadata.tables) <= tables
    migrate.downgrade(eng, "base")
    assert migrate.current_revision(eng) is None
    assert set(inspect(eng).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(eng)
    assert set(Base.metadata.tables) <= set(inspect(eng).get_table_names())
    eng.dispose()


def test_orm_matches_migrations(db_url: str) -> None:
    eng = make_engine(db_url)
    migrate.upgrade(eng)
    with eng.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    eng.dispose()
    assert diff == [], f"ORM models and migrations differ: {diff}"


def test_single_linear_history() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config_for_scripts())
    assert len(scripts.get_heads()) == 1
    for rev in scripts.walk_revisions():
        assert not isinstance(rev.down_revision, tuple), f"merge revision {rev.revision} breaks the linear history"

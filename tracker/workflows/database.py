"""The database itself: create or migrate the schema, report its revision."""

from __future__ import annotations

from db import migrate
from db.session import make_engine
from tracker.home import data_home, database_url


def init(db_url: str | None) -> str | None:
    """Create (or bring up to date) the database and the data home; returns the revision."""
    eng = make_engine(database_url(db_url))
    migrate.upgrade(eng)
    data_home().mkdir(parents=True, exist_ok=True)
    return migrate.current_revision(eng)


def upgrade(db_url: str | None, revision: str = "head") -> str | None:
    eng = make_engine(database_url(db_url))
    migrate.upgrade(eng, revision)
    return migrate.current_revision(eng)


def downgrade(db_url: str | None, revision: str) -> str | None:
    eng = make_engine(database_url(db_url))
    migrate.downgrade(eng, revision)
    return migrate.current_revision(eng)


def revisions(db_url: str | None) -> dict[str, str | None]:
    """The database's current revision and the newest one this metatrack knows."""
    eng = make_engine(database_url(db_url))
    return {"current": migrate.current_revision(eng), "head": migrate.head_revision()}

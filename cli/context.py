"""What every command shares: the database and the file store, opened lazily and checked once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracker.errors import MetatrackError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tracker.store import FileStore


@dataclass
class AppState:
    db_url: str | None = None
    progress: bool = True
    _engine: Engine | None = field(default=None, repr=False)

    def engine(self, *, migrate_empty: bool = True) -> Engine:
        """The database engine; an empty database is initialised, an outdated one must be upgraded first."""
        if self._engine is None:
            from db import migrate
            from db.session import make_engine
            from tracker.home import database_url

            eng = make_engine(database_url(self.db_url))  # a bad URL or driver: MetatrackError, password masked
            try:
                current = migrate.current_revision(eng)
            except MetatrackError:  # cannot connect (DatabaseUnavailable): the message names the cause, masked
                raise
            except Exception as exc:  # connected, but not a database metatrack can read (the password is not in it)
                orig = getattr(exc, "orig", None) or exc
                cause = " ".join(ln.strip() for ln in str(orig).splitlines() if ln.strip())
                raise MetatrackError(
                    f"cannot open database {eng.url.render_as_string()}: {type(orig).__name__}: {cause}"
                ) from exc
            head = migrate.head_revision()
            if current is None and migrate_empty:
                migrate.upgrade(eng)
            elif current is not None and current != head:
                raise MetatrackError(
                    f"database is at migration {current}, this metatrack needs {head}: run `metatrack db upgrade`"
                )
            self._engine = eng
        return self._engine

    def store(self) -> FileStore:
        from tracker.home import store_root
        from tracker.store import FileStore

        return FileStore(store_root())

"""Where metatrack keeps its data: the data home (file store, default SQLite database, simulated cohorts)."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "METATRACK_HOME"
DB_ENV = "METATRACK_DB"
DB_FILE = "metatrack.db"


def data_home() -> Path:
    """The data home: `$METATRACK_HOME`, else the per-user data directory (e.g. ~/.local/share/metatrack)."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_data_path

    return user_data_path("metatrack", appauthor=False)


def database_url(explicit: str | None = None) -> str:
    """The database URL: `explicit` (``--db``), else `$METATRACK_DB`, else SQLite in the data home."""
    url = explicit or os.environ.get(DB_ENV)
    if url:
        return url
    return f"sqlite:///{data_home() / DB_FILE}"


def store_root() -> Path:
    """Root of the content-addressed file store."""
    return data_home() / "store"

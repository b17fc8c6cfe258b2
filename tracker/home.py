"""Where metatrack keeps its data: the data home (file store, default SQLite database, simulated cohorts).

What metatrack creates there is private to its user: directories 0700 (:func:`private_dir`), files 0600 (the
store's objects, the SQLite database and its lock files); the user's umask can only narrow that further.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "METATRACK_HOME"
DB_ENV = "METATRACK_DB"
DB_FILE = "metatrack.db"


PRIVATE_DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """``path`` as a directory, created (with every missing parent) 0700 when absent; an existing one is left as is.

    (``Path.mkdir(parents=True, mode=...)`` gives the mode to the last directory only.)
    """
    path = Path(path)
    if path.is_dir():
        return path
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, PRIVATE_DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile by another process
    if not path.is_dir():
        raise NotADirectoryError(path)
    return path


def data_home() -> Path:
    """The data home: `$METATRACK_HOME`, else the per-user data directory (e.g. ~/.local/share/metatrack).

    Created 0700 when it does not exist yet (whichever command comes first), so that nothing a later step puts
    there is readable by others; a home that cannot be created is left to fail where it is written.
    """
    env = os.environ.get(HOME_ENV)
    if env:
        home = Path(env).expanduser().resolve()
    else:
        from platformdirs import user_data_path

        home = user_data_path("metatrack", appauthor=False)
    try:
        private_dir(home)
    except OSError:
        pass
    return home


def database_url(explicit: str | None = None) -> str:
    """The database URL: `explicit` (``--db``), else `$METATRACK_DB`, else SQLite in the data home."""
    url = explicit or os.environ.get(DB_ENV)
    if url:
        return url
    return f"sqlite:///{data_home() / DB_FILE}"


def store_root() -> Path:
    """Root of the content-addressed file store."""
    return data_home() / "store"

"""The data home and the store: private permissions, and the garbage killed runs leave swept safely."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from db.session import make_engine
from tracker.home import data_home, database_url


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_home_and_sqlite_database_are_private(home: Path) -> None:
    """The data home (and its missing parents) 0700, the SQLite file and its -wal/-shm 0600, whatever the umask."""
    import os

    old = os.umask(0o022)
    try:
        assert data_home() == home.resolve()
        engine = make_engine(database_url())
        with engine.connect() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.commit()
            db = home / "metatrack.db"
            assert _mode(home) == 0o700
            assert _mode(db) == 0o600
            for side in ("metatrack.db-wal", "metatrack.db-shm"):
                assert _mode(home / side) == 0o600, side
        engine.dispose()
    finally:
        os.umask(old)


def test_sqlite_file_in_new_nested_folder_is_private(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "mt.db"
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    engine.dispose()
    assert _mode(tmp_path / "a") == 0o700 and _mode(tmp_path / "a" / "b") == 0o700
    assert _mode(db) == 0o600


@pytest.mark.parametrize("wait", [False, True])
def test_worker_lock_file_is_private_and_names_its_holder(tmp_path: Path, wait: bool) -> None:
    from db import jobs

    engine = make_engine(f"sqlite:///{tmp_path / 'mt.db'}")
    path = jobs.sqlite_lock_path(engine)
    assert path is not None
    path.write_text("")
    path.chmod(0o644)  # as an older version left it
    import os

    with jobs.worker_lock(engine, wait=wait):
        assert _mode(path) == 0o600
        assert path.read_text().split() == [str(os.getpid())]

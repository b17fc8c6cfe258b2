"""The data home and the store: private permissions, and the garbage killed runs leave swept safely."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from db.session import make_engine
from tracker.home import data_home, database_url
from tracker.store import GRACE_S, FileStore, StoreUnit, sweep_work_dirs, work_dir_prefix

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_home_and_sqlite_database_are_private(home: Path) -> None:
    """The data home (and its missing parents) 0700, the SQLite file and its -wal/-shm 0600, whatever the umask."""
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
    with jobs.worker_lock(engine, wait=wait):
        assert _mode(path) == 0o600
        assert path.read_text().split() == [str(os.getpid())]


# ---------------------------------------------------------------------------------------------- sweeping


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _age(path: Path, seconds: float) -> Path:
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def test_work_dirs_of_gone_processes_are_swept_those_of_live_ones_kept(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    for name in (f"scan-{dead}-abc", f"scan-{live}-abc", "scan-legacyold", "scan-legacynew", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.nii.gz").write_bytes(b"x")
    _age(tmp_path / "scan-legacyold", 2 * GRACE_S)
    assert sweep_work_dirs(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"scan-{live}-abc", "scan-legacynew", "other"])
    assert work_dir_prefix() == f"scan-{live}-"


def test_incoming_files_of_gone_writers_or_past_the_grace_period_are_swept(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    obj = store.put_bytes(b"kept", ".bin")
    folder = obj.path.parent
    dead, live = _dead_pid(), os.getpid()
    names = {
        f".incoming-{dead}-aaaa": False,  # writer gone
        f".incoming-{live}-bbbb": True,  # writer alive (this process)
        ".incoming-legacyold": False,  # an older version's name, older than the grace period
        ".incoming-legacynew": True,  # ... younger: may be a live writer's
    }
    for name in names:
        (folder / name).write_bytes(b"partial")
    _age(folder / ".incoming-legacyold", 2 * GRACE_S)
    swept = store.sweep(lambda hashes: set())
    assert swept.incoming == 2 and swept.orphans == 0
    assert {n for n in names if (folder / n).exists()} == {n for n, keep in names.items() if keep}
    assert obj.path.exists()


def test_a_dead_units_objects_without_a_blob_row_are_swept(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    committed = store.put_bytes(b"committed", ".tfm")
    orphan = store.put_bytes(b"orphan", ".tfm")
    other = store.put_bytes(b"not in any journal", ".tfm")
    store.units_dir.mkdir(mode=0o700)
    journal = store.units_dir / f"{_dead_pid()}-x.journal"
    journal.write_text(f"{committed.sha256} .tfm\n{orphan.sha256} .tfm\n{'f' * 64} .tfm\n")
    asked: list[list[str]] = []

    def rows(hashes: list[str]) -> set[str]:
        asked.append(hashes)
        return {committed.sha256}

    swept = store.sweep(rows)
    assert swept.orphans == 1 and swept.journals == 1 and not swept.busy
    assert asked == [sorted([committed.sha256, orphan.sha256, "f" * 64])]
    assert committed.path.exists() and other.path.exists() and not orphan.path.exists()
    assert not journal.exists()


def test_a_unit_journals_its_new_objects_and_removes_the_journal(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    src = tmp_path / "t.tfm"
    src.write_bytes(b"transform")
    present = store.put_bytes(b"present", ".tfm")
    with StoreUnit(store) as unit:
        new = unit.put_file(src, ".tfm")
        unit.put_bytes(b"present", ".tfm")
        (journal,) = store.units_dir.glob("*.journal")
        assert journal.read_text() == f"{new.sha256} .tfm\n"  # what was already there is not its to remove
        assert journal.name.startswith(f"{os.getpid()}-")
    assert not list(store.units_dir.glob("*"))
    with pytest.raises(RuntimeError), StoreUnit(store) as unit:
        failed = unit.put_bytes(b"rolled back", ".tfm")
        raise RuntimeError("the transaction failed")
    assert not failed.path.exists() and present.path.exists() and new.path.exists()
    assert not list(store.units_dir.glob("*"))
    for p in (store.root, new.path.parent, store.units_dir):
        assert _mode(p) == 0o700, p
    assert _mode(new.path) == 0o600 and _mode(store.lock_path) == 0o600


_LIVE_UNIT = """
import sys, time
from pathlib import Path
from tracker.store import FileStore, StoreUnit
unit = StoreUnit(FileStore(Path(sys.argv[1]))).__enter__()
stored = unit.put_bytes(b"written, transaction still open", ".tfm")
print(stored.sha256, flush=True)
time.sleep(60)
"""


def test_a_live_units_objects_are_never_swept(tmp_path: Path) -> None:
    """Another process's unit wrote an object and has not committed yet: the sweeper leaves it (store busy)."""
    store = FileStore(tmp_path / "store")
    live = subprocess.Popen(
        [sys.executable, "-c", _LIVE_UNIT, str(store.root)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert live.stdout is not None
        digest = live.stdout.readline().strip()
        obj = store.path_for(digest, ".tfm")
        assert obj.exists() and list(store.units_dir.glob("*.journal"))
        swept = store.sweep(lambda hashes: set(), lock_wait_s=0.3)
        assert swept.busy and swept.orphans == 0 and obj.exists()
        live.kill()  # killed before its commit: now its object is an orphan
        live.wait()
        swept = store.sweep(lambda hashes: set())
        assert not swept.busy and swept.orphans == 1 and not obj.exists()
        assert not list(store.units_dir.glob("*"))
    finally:
        live.kill()
        live.wait()

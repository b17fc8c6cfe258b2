"""A content-addressed file store: each file is kept once, under the sha256 of its source content.

Files are private to the user (folders 0700, files 0600). Writes are atomic: the bytes go to
``ab/.incoming-<pid>-*`` and are renamed into place. A :class:`StoreUnit` (the files of one unit of work, whose
database transaction records them in ``blobs``) holds the store's lock (``.store.lock`` beside the store) shared
and, before it renames a new object into place, appends it to its journal ``.store.units/<pid>-*.journal``
(beside the store too: the store itself holds only objects); it removes the journal when it ends.

What killed runs leave is swept by the next `process` run (:func:`sweep_work_dirs`, :meth:`FileStore.sweep`):

- work folders ``scan-<pid>-*@<host>`` whose process is gone;
- ``.incoming-<pid>-*@<host>`` files whose writer is gone, or older than :data:`GRACE_S` (files of older versions
  carry no pid; a pid that was reused after a kill keeps its file at most that long);
- orphans: the objects of a unit killed before its commit. A journal left behind belongs to a dead unit whenever
  the sweeper holds the store's lock exclusively (a live unit holds it shared), so then its objects that have no
  ``blobs`` row are removed. Only journalled objects are candidates (the store is never scanned against the
  database), so a store that another database shares keeps that database's files; the one exposure left is a
  unit of the other database killed between its commit and its journal's removal.

``<host>`` (:func:`host_tag`) names the writer's machine: when workers on several hosts share a data home (a Dask
cluster on a shared filesystem), a pid is only checked on its own host; another host's files are garbage only
past :data:`GRACE_S` (a shared filesystem must also honour ``flock`` across hosts for the store's lock: NFSv4 does,
Lustre and BeeGFS when mounted with ``flock``). Names without a host (older versions) count as this host's.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from tracker.errors import MetatrackError
from tracker.home import private_dir

CHUNK = 1 << 20
INCOMING_PREFIX = ".incoming-"
JOURNAL_SUFFIX = ".journal"
WORK_PREFIX = "scan-"
GRACE_S = 3600.0  # age after which a temp file is garbage even if a process with its writer's pid runs
LOCK_WAIT_S = 2.0  # how long the sweeper waits for the store's units to pause before leaving orphans for later
_PID_NAME = re.compile(r"^(?:\.incoming-|scan-)(\d+)-")
_HOST_NAME = re.compile(r"@([0-9a-f]{8})$")

BlobRows = Callable[[list[str]], set[str]]  # which of these hashes have a `blobs` row


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.cache
def host_tag() -> str:
    """This machine in writers' file names: 8 hex digits of the sha256 of its host name."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def writer_suffix() -> str:
    """The suffix of this process's temp files and work folders (``@<host>``), so a sweeper on another host that
    shares the data home leaves them to their own host."""
    return f"@{host_tag()}"


def _owner_pid(name: str) -> int | None:
    """The writer's pid in a temp name, when the writer ran on this host (None: no pid, or another host's)."""
    m = _PID_NAME.match(name)
    host = _HOST_NAME.search(name)
    if m is None or (host is not None and host.group(1) != host_tag()):
        return None
    return int(m.group(1))


def _is_garbage(path: Path, grace_s: float, now: float) -> bool:
    """A temp file/folder whose writer (on this host) is gone, or that is older than the grace period."""
    pid = _owner_pid(path.name)
    if pid is not None and not pid_alive(pid):
        return True
    try:
        return now - path.lstat().st_mtime > grace_s
    except FileNotFoundError:
        return False


def _incoming_temp(folder: Path) -> tuple[int, str]:
    """A new temp file (0600) for an object about to enter ``folder``, named for its writer."""
    return tempfile.mkstemp(dir=folder, prefix=f"{INCOMING_PREFIX}{os.getpid()}-", suffix=writer_suffix())


def work_dir_prefix() -> str:
    """The prefix of this process's scan work folders (``scan-<pid>-``), so a later run knows when they are dead."""
    return f"{WORK_PREFIX}{os.getpid()}-"


def sweep_work_dirs(workroot: Path, grace_s: float = GRACE_S) -> int:
    """Remove the scan work folders under `workroot` of processes that are gone; returns how many."""
    if not workroot.is_dir():
        return 0
    now, n = time.time(), 0
    for entry in workroot.iterdir():
        if entry.name.startswith(WORK_PREFIX) and entry.is_dir() and _is_garbage(entry, grace_s, now):
            shutil.rmtree(entry, ignore_errors=True)
            n += 1
    return n


@dataclass
class StoreSweep:
    """What :meth:`FileStore.sweep` removed; `busy` when units kept writing and orphans were left for later."""

    incoming: int = 0
    orphans: int = 0
    journals: int = 0
    busy: bool = False


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_files(paths: Iterable[Path]) -> str:
    """The content hash of one file (its sha256) or of a series (sha256 over the files' hashes, in order)."""
    paths = list(paths)
    if len(paths) == 1:
        return sha256_file(paths[0])
    h = hashlib.sha256()
    for p in paths:
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    path: Path
    size_bytes: int
    already_present: bool
    suffix: str


Journal = Callable[[str, str], None]  # (sha256, suffix) of an object about to be renamed into the store


class FileWriter(Protocol):
    """What writes into the store: the store itself, or a :class:`StoreUnit` that takes back a failed unit's files."""

    def put_file(self, src: Path, suffix: str, sha256: str | None = None) -> StoredFile: ...

    def put_bytes(self, data: bytes, suffix: str) -> StoredFile: ...


class FileStore:
    """Files under ``root/ab/cdef...<suffix>``; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def lock_path(self) -> Path:
        """The store's lock file, beside the store (``.store.lock``: the store holds only objects)."""
        return self.root.parent / f".{self.root.name}.lock"

    @property
    def units_dir(self) -> Path:
        """Where units journal their new objects, beside the store (``.store.units/``)."""
        return self.root.parent / f".{self.root.name}.units"

    @contextlib.contextmanager
    def locked(self, shared: bool, wait_s: float | None = None) -> Iterator[bool]:
        """Hold the store's lock (shared: a unit writing; exclusive: the sweeper); yields False when ``wait_s``
        passed without it (None: wait as long as it takes)."""
        private_dir(self.lock_path.parent)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            deadline = None if wait_s is None else time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, mode if deadline is None else mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def sweep(self, blob_rows: BlobRows, grace_s: float = GRACE_S, lock_wait_s: float = LOCK_WAIT_S) -> StoreSweep:
        """Remove dead writers' temp files and dead units' orphans (see the module's docstring)."""
        out = StoreSweep()
        now = time.time()
        for sub in self.root.iterdir() if self.root.is_dir() else ():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                if entry.name.startswith(INCOMING_PREFIX) and _is_garbage(Path(entry.path), grace_s, now):
                    Path(entry.path).unlink(missing_ok=True)
                    out.incoming += 1
        units = self.units_dir
        if not units.is_dir() or not any(units.glob(f"*{JOURNAL_SUFFIX}")):
            return out
        with self.locked(shared=False, wait_s=lock_wait_s) as alone:
            if not alone:
                out.busy = True
                return out
            # no unit is running: every journal here is one whose unit died before it could remove it
            journals = sorted(units.glob(f"*{JOURNAL_SUFFIX}"))
            entries: dict[str, set[str]] = {}
            for j in journals:
                for line in j.read_text().splitlines():
                    digest, _, suffix = line.partition(" ")
                    if re.fullmatch(r"[0-9a-f]{64}", digest):
                        entries.setdefault(digest, set()).add(suffix)
            known = blob_rows(sorted(entries)) if entries else set()
            for digest, suffixes in sorted(entries.items()):
                if digest in known:
                    continue  # its unit committed before it died
                for suffix in suffixes:
                    p = self.path_for(digest, suffix)
                    if p.exists():
                        p.unlink()
                        out.orphans += 1
            for j in journals:
                j.unlink(missing_ok=True)
                out.journals += 1
        return out

    def path_for(self, sha256: str, suffix: str) -> Path:
        return self.root / sha256[:2] / f"{sha256[2:]}{suffix}"

    def find(self, sha256: str, suffix: str) -> Path:
        """The stored file for a hash; raises when it is missing."""
        p = self.path_for(sha256, suffix)
        if not p.exists():
            raise MetatrackError(f"store: object {sha256[:12]}{suffix} is missing under {self.root}")
        return p

    def put_file(
        self, src: Path, suffix: str, sha256: str | None = None, *, before_rename: Journal | None = None
    ) -> StoredFile:
        """Copy `src` into the store under `sha256` (default: its own hash); a present object is not rewritten.

        ``before_rename(sha256, suffix)`` runs when a new object is about to appear (a unit's journal).
        """
        digest = sha256 or sha256_file(src)
        dest = self.path_for(digest, suffix)
        if dest.exists():
            return StoredFile(digest, dest, dest.stat().st_size, True, suffix)
        private_dir(dest.parent)
        fd, tmp = _incoming_temp(dest.parent)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            if before_rename is not None:
                before_rename(digest, suffix)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return StoredFile(digest, dest, dest.stat().st_size, False, suffix)

    def put_bytes(self, data: bytes, suffix: str, *, before_rename: Journal | None = None) -> StoredFile:
        """Store bytes under their own sha256 (``before_rename`` as for :meth:`put_file`)."""
        digest = hashlib.sha256(data).hexdigest()
        dest = self.path_for(digest, suffix)
        if dest.exists():
            return StoredFile(digest, dest, len(data), True, suffix)
        private_dir(dest.parent)
        fd, tmp = _incoming_temp(dest.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            if before_rename is not None:
                before_rename(digest, suffix)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return StoredFile(digest, dest, len(data), False, suffix)


class StoreUnit:
    """The files one unit of work adds to the store; on failure they leave with it.

    Use it around the unit's database transaction (``with StoreUnit(store) as files, session_scope(engine)``):
    when the transaction fails, the objects this unit wrote (not those that were already present) are removed,
    so a rolled-back unit leaves the store as it was. While it is open it holds the store's lock shared and
    journals each new object before it appears, so that a sweeper can tell a killed unit's orphans.
    """

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.added: list[Path] = []
        self._lock: contextlib.AbstractContextManager[bool] | None = None
        self._journal_fd: int | None = None
        self._journal_path: Path | None = None

    def put_file(self, src: Path, suffix: str, sha256: str | None = None) -> StoredFile:
        return self._keep(self.store.put_file(src, suffix, sha256, before_rename=self._journal))

    def put_bytes(self, data: bytes, suffix: str) -> StoredFile:
        return self._keep(self.store.put_bytes(data, suffix, before_rename=self._journal))

    def _journal(self, sha256: str, suffix: str) -> None:
        if self._journal_fd is None:
            folder = private_dir(self.store.units_dir)
            self._journal_path = folder / f"{os.getpid()}-{uuid.uuid4().hex}{JOURNAL_SUFFIX}"
            self._journal_fd = os.open(self._journal_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.write(self._journal_fd, f"{sha256} {suffix}\n".encode())

    def keep_on_failure(self) -> None:
        """Leave this unit's files in the store even if it fails: another writer may have committed the same
        content meanwhile and refer to it (a stray object is harmless and the sweep finds it, a missing one is not).
        """
        self.added.clear()

    def _keep(self, stored: StoredFile) -> StoredFile:
        if not stored.already_present:
            self.added.append(stored.path)
        return stored

    def __enter__(self) -> StoreUnit:
        self._lock = self.store.locked(shared=True)
        self._lock.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is not None:
                for p in self.added:
                    p.unlink(missing_ok=True)
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
            if self._journal_path is not None:
                self._journal_path.unlink(missing_ok=True)
                self._journal_path = None
        finally:
            if self._lock is not None:
                self._lock.__exit__(None, None, None)
                self._lock = None

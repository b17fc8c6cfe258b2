"""A content-addressed file store: each file is kept once, under the sha256 of its source content."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from tracker.errors import MetatrackError

CHUNK = 1 << 20


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


class FileWriter(Protocol):
    """What writes into the store: the store itself, or a :class:`StoreUnit` that takes back a failed unit's files."""

    def put_file(self, src: Path, suffix: str, sha256: str | None = None) -> StoredFile: ...

    def put_bytes(self, data: bytes, suffix: str) -> StoredFile: ...


class FileStore:
    """Files under ``root/ab/cdef...<suffix>``; writes are atomic (temp file, then rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str, suffix: str) -> Path:
        return self.root / sha256[:2] / f"{sha256[2:]}{suffix}"

    def find(self, sha256: str, suffix: str) -> Path:
        """The stored file for a hash; raises when it is missing."""
        p = self.path_for(sha256, suffix)
        if not p.exists():
            raise MetatrackError(f"store: object {sha256[:12]}{suffix} is missing under {self.root}")
        return p

    def put_file(self, src: Path, suffix: str, sha256: str | None = None) -> StoredFile:
        """Copy `src` into the store under `sha256` (default: its own hash); a present object is not rewritten."""
        digest = sha256 or sha256_file(src)
        dest = self.path_for(digest, suffix)
        if dest.exists():
            return StoredFile(digest, dest, dest.stat().st_size, True, suffix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".incoming-")
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return StoredFile(digest, dest, dest.stat().st_size, False, suffix)

    def put_bytes(self, data: bytes, suffix: str) -> StoredFile:
        """Store bytes under their own sha256."""
        digest = hashlib.sha256(data).hexdigest()
        dest = self.path_for(digest, suffix)
        if dest.exists():
            return StoredFile(digest, dest, len(data), True, suffix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return StoredFile(digest, dest, len(data), False, suffix)


class StoreUnit:
    """The files one unit of work adds to the store; on failure they leave with it.

    Use it around the unit's database transaction (``with StoreUnit(store) as files, session_scope(engine)``):
    when the transaction fails, the objects this unit wrote (not those that were already present) are removed,
    so a rolled-back unit leaves the store as it was.
    """

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.added: list[Path] = []

    def put_file(self, src: Path, suffix: str, sha256: str | None = None) -> StoredFile:
        return self._keep(self.store.put_file(src, suffix, sha256))

    def put_bytes(self, data: bytes, suffix: str) -> StoredFile:
        return self._keep(self.store.put_bytes(data, suffix))

    def _keep(self, stored: StoredFile) -> StoredFile:
        if not stored.already_present:
            self.added.append(stored.path)
        return stored

    def __enter__(self) -> StoreUnit:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            for p in self.added:
                p.unlink(missing_ok=True)

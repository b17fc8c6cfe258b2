"""The model cache: keyed by file sha256, reads once, checks the hash, thread-safe; the registry's deprecated
loaders delegate to it."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine

from db import registry
from db.session import session_scope
from tracker.errors import MetatrackError
from tracker.store import FileStore
from tracker.survival import SurvivalModelConfig, train_landmark_cox
from tracker.survival.cache import cached_model, clear_cache
from tracker.survival.toy import ToyCohortConfig, toy_cohort


@pytest.fixture(scope="module")
def blob() -> bytes:
    visits, events, _ = toy_cohort(ToyCohortConfig(n_patients=40), seed=4)
    return train_landmark_cox(visits, events, SurvivalModelConfig(), max_landmarks=2).to_bytes()


def test_reads_once_per_hash_and_checks_the_hash(blob: bytes) -> None:
    clear_cache()
    sha = hashlib.sha256(blob).hexdigest()
    reads = []

    def read() -> bytes:
        reads.append(1)
        return blob

    first = cached_model(sha, read)
    assert cached_model(sha, read) is first and len(reads) == 1
    assert first.kind == "landmark-cox"
    with pytest.raises(MetatrackError, match="damaged"):
        cached_model("0" * 64, lambda: blob)


def test_threads_get_one_model(blob: bytes) -> None:
    clear_cache()
    sha = hashlib.sha256(blob).hexdigest()
    got, barrier = [], threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        got.append(cached_model(sha, lambda: blob))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(m is got[0] for m in got)


def test_registry_keeps_no_model_loader(blob: bytes, engine: Engine, tmp_path: Path) -> None:
    from tracker.survival import model_from_bytes

    store = FileStore(tmp_path / "store")
    with session_scope(engine) as s:
        mv = registry.register_model(s, store, model_from_bytes(blob), "cox", "death")
        assert mv.hyperparameters["kind"] == "landmark-cox" and mv.hyperparameters["max_landmarks"] == 2
    with session_scope(engine) as s:
        mv = registry.get_version(s, "cox")
        assert registry.model_file_bytes(store, mv) == blob
        new = cached_model(mv.file_sha256, lambda: registry.model_file_bytes(store, mv))
        assert cached_model(mv.file_sha256, lambda: registry.model_file_bytes(store, mv)) is new
    assert not any(hasattr(registry, name) for name in ("_CACHE", "load_file", "load_model"))

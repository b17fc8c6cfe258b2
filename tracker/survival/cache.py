"""A process-wide cache of loaded models keyed by their file's sha256 (model files are immutable, so a hash names
one model for good). Thread-safe; pure: the caller says how to read the bytes (e.g. from the file store)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

from tracker.errors import MetatrackError
from tracker.survival.kinds import model_from_bytes
from tracker.survival.protocol import SurvivalModel

_CACHE: dict[str, SurvivalModel] = {}
_LOCK = threading.Lock()


def cached_model(sha256: str, read: Callable[[], bytes]) -> SurvivalModel:
    """The model whose file has hash ``sha256``, loaded with ``read()`` on first use, then from the cache.

    The bytes must hash to ``sha256`` (a damaged or mislabelled file raises). Two threads asking for the same new
    model at once may both load it; both get the one that was cached first.
    """
    key = sha256.lower()
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    data = read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != key:
        raise MetatrackError(f"model file {key[:12]}: its bytes hash to {digest[:12]}; the file is damaged")
    model = model_from_bytes(data)
    with _LOCK:
        return _CACHE.setdefault(key, model)


def clear_cache() -> None:
    """Forget every cached model (tests; a long-lived process that wants its memory back)."""
    with _LOCK:
        _CACHE.clear()

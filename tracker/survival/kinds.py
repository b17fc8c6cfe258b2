"""The table of survival model kinds and the one reader of model files.

Each kind names (lazily, so that reading a Cox model never imports torch) the function that trains it, with the
inputs of :func:`tracker.survival.model.train_model` (visits, events, cfg, seed=, progress=), and the function
that rebuilds it from its open model zip. :func:`model_from_bytes` reads the ``kind`` from the file's header and
dispatches; a header without ``kind`` (every file written before kinds existed) is an "rnn".
"""

from __future__ import annotations

import importlib
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tracker.errors import MetatrackError
from tracker.survival.model_io import MODEL_JSON, header_kind

if TYPE_CHECKING:
    from tracker.survival.protocol import SurvivalModel


@dataclass(frozen=True)
class ModelKind:
    """A registrable model kind: where its trainer and its file reader live ("module:function")."""

    name: str
    trainer: str
    reader: str
    description: str

    @staticmethod
    def _resolve(ref: str) -> Callable[..., Any]:
        module, _, func = ref.partition(":")
        return getattr(importlib.import_module(module), func)

    def train(self, visits: Any, events: Any, cfg: Any, **kwargs: Any) -> SurvivalModel:
        """Train a model of this kind (keyword arguments as for ``train_model``: seed, progress)."""
        return self._resolve(self.trainer)(visits, events, cfg, **kwargs)

    def read(self, header: dict[str, Any], zf: zipfile.ZipFile) -> SurvivalModel:
        """Rebuild a model of this kind from its header and open zip."""
        return self._resolve(self.reader)(header, zf)


MODEL_KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind(
            "rnn",
            "tracker.survival.model:train_model",
            "tracker.survival.model_io:rnn_from_zip",
            "GRU ensemble, discrete-time survival from every visit prefix",
        ),
        ModelKind(
            "landmark-cox",
            "tracker.survival.landmark_cox:train_landmark_cox",
            "tracker.survival.landmark_cox:landmark_cox_from_zip",
            "one Cox fit per landmark visit on the latest values, their changes and years since baseline",
        ),
        ModelKind(
            "blend",
            "tracker.survival.blend:train_blend",
            "tracker.survival.blend:combined_from_zip",
            "RNN and landmark Cox survival curves mixed, the weight per landmark chosen by inner CV, recalibrated",
        ),
        ModelKind(
            "auto",
            "tracker.survival.blend:train_auto",
            "tracker.survival.blend:combined_from_zip",
            "per landmark landmark-cox, rnn or blend, picked by inner patient-grouped CV (recorded why), recalibrated",
        ),
    )
}


def model_kind(name: str) -> ModelKind:
    """The kind called ``name``; an unknown name raises, listing the known ones."""
    try:
        return MODEL_KINDS[name]
    except KeyError:
        raise MetatrackError(f"model kind {name!r} is unknown; known kinds: {sorted(MODEL_KINDS)}") from None


def model_from_bytes(data: bytes) -> SurvivalModel:
    """A model of any kind from its file bytes (the kind comes from the ``model.json`` header; none -> "rnn")."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            header = json.loads(zf.read(MODEL_JSON))
            if not isinstance(header, dict):
                raise ValueError(f"{MODEL_JSON} is not a JSON object")
            return model_kind(header_kind(header)).read(header, zf)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise MetatrackError(f"risk model bytes: not a metatrack risk model ({exc})") from exc

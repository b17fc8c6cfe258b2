"""Model files: a zip holding ``model.json`` (a header with ``kind`` and ``format_version``, config, standardisation,
metadata) and, for the RNN kind, one .npy per weight tensor.

No pickle: loading never executes code from the file. Entries carry a fixed timestamp, so the same model always
gives the same bytes. Files written before model kinds existed (RNN format_version 1 and 2) have no ``kind`` in
their header and are read as kind "rnn". :func:`tracker.survival.kinds.model_from_bytes` reads any kind.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tracker.errors import MetatrackError
from tracker.survival.config import SurvivalModelConfig
from tracker.survival.data import Standardizer

if TYPE_CHECKING:
    from tracker.survival.model import RiskModel

MODEL_JSON = "model.json"
WEIGHTS_DIR = "weights/"
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
LEGACY_KIND = "rnn"  # the kind of a file whose header has none


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_model_zip(header: dict[str, Any], extra: Sequence[tuple[str, bytes]] = ()) -> bytes:
    """The zip of a model: ``model.json`` (the header, keys sorted) first, then the extra entries."""
    entries = [(MODEL_JSON, json.dumps(header, sort_keys=True).encode()), *extra]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME), payload, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def header_kind(header: dict[str, Any]) -> str:
    """The model kind a header names ("rnn" for files written before kinds existed)."""
    return str(header.get("kind", LEGACY_KIND))


def check_version(header: dict[str, Any], readable: tuple[int, ...]) -> int:
    """The header's format_version, which must be one of ``readable``."""
    version = header.get("format_version")
    if version not in readable:
        raise MetatrackError(
            f"risk model bytes: {header_kind(header)} format_version {version!r}, this metatrack reads {list(readable)}"
        )
    return int(version)


def standardizer_to_json(stats: Standardizer) -> dict[str, Any]:
    """Features, means and standard deviations as JSON lists (floats round-trip exactly through JSON)."""
    return {
        "features": list(stats.features),
        "mean": [float(v) for v in stats.mean],
        "std": [float(v) for v in stats.std],
    }


def standardizer_from_json(header: dict[str, Any]) -> Standardizer:
    """Inverse of :func:`standardizer_to_json`."""
    return Standardizer(
        tuple(header["features"]), np.asarray(header["mean"], dtype=np.float64), np.asarray(header["std"], np.float64)
    )


def rnn_to_bytes(model: RiskModel) -> bytes:
    """Serialise an RNN model; floats go through JSON's shortest round-trip repr, weights as raw float32 arrays."""
    from tracker.survival.model import FORMAT_VERSION

    header = {
        "kind": model.kind,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        **standardizer_to_json(model.standardizer),
        "n_inputs": model.net.n_inputs,
        "n_members": len(model.net.members),
        "weights": list(model.net.state_dict().keys()),
        "metadata": model.metadata,
    }
    weights = [
        (f"{WEIGHTS_DIR}{name}.npy", _npy_bytes(t.detach().cpu().numpy())) for name, t in model.net.state_dict().items()
    ]
    return write_model_zip(header, weights)


def rnn_from_zip(header: dict[str, Any], zf: zipfile.ZipFile) -> RiskModel:
    """Rebuild an RNN model from its open zip (format_version 1: one network, 2: an ensemble)."""
    import torch

    from tracker.survival.model import FORMAT_VERSION, RiskModel
    from tracker.survival.rnn import EnsembleNet, RiskNet

    version = check_version(header, (1, FORMAT_VERSION))
    state = {
        name: torch.from_numpy(np.load(io.BytesIO(zf.read(f"{WEIGHTS_DIR}{name}.npy")), allow_pickle=False))
        for name in header["weights"]
    }
    cfg = SurvivalModelConfig.from_dict(header["config"])
    if version == 1:  # one network, weights at the top level
        state = {f"members.0.{name}": t for name, t in state.items()}
        cfg = dataclasses.replace(cfg, n_ensemble=1)
    n_members = int(header.get("n_members", 1))
    shape = (header["n_inputs"], cfg.hidden_size, cfg.n_bins, cfg.dropout)
    net = EnsembleNet([RiskNet(*shape) for _ in range(n_members)])
    net.load_state_dict(state)
    net.eval()
    return RiskModel(cfg, standardizer_from_json(header), net, header["metadata"])


def model_to_bytes(model: Any) -> bytes:
    """Any model kind's file (its own ``to_bytes``)."""
    return model.to_bytes()


def model_from_bytes(data: bytes) -> Any:
    """Any model kind from its file: see :func:`tracker.survival.kinds.model_from_bytes`."""
    from tracker.survival.kinds import model_from_bytes as read

    return read(data)

"""RiskModel <-> bytes: a zip holding JSON (config, standardisation, metadata) and one .npy per weight tensor.

No pickle: loading never executes code from the file. Entries carry a fixed timestamp, so the same model always
gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np

from tracker.errors import MetatrackError
from tracker.survival.config import SurvivalModelConfig
from tracker.survival.data import Standardizer
from tracker.survival.model import FORMAT_VERSION, RiskModel

MODEL_JSON = "model.json"
WEIGHTS_DIR = "weights/"
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
READABLE_VERSIONS = (1, FORMAT_VERSION)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def model_to_bytes(model: RiskModel) -> bytes:
    """Serialise a model; floats go through JSON's shortest round-trip repr, weights as raw float32 arrays."""
    header = {
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "features": list(model.standardizer.features),
        "mean": [float(v) for v in model.standardizer.mean],
        "std": [float(v) for v in model.standardizer.std],
        "n_inputs": model.net.n_inputs,
        "n_members": len(model.net.members),
        "weights": list(model.net.state_dict().keys()),
        "metadata": model.metadata,
    }
    entries = [(MODEL_JSON, json.dumps(header, sort_keys=True).encode())]
    entries += [
        (f"{WEIGHTS_DIR}{name}.npy", _npy_bytes(t.detach().cpu().numpy())) for name, t in model.net.state_dict().items()
    ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME), payload, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def model_from_bytes(data: bytes) -> RiskModel:
    """Rebuild a model written by :func:`model_to_bytes`."""
    import torch

    from tracker.survival.rnn import EnsembleNet, RiskNet

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            header = json.loads(zf.read(MODEL_JSON))
            state = {
                name: torch.from_numpy(np.load(io.BytesIO(zf.read(f"{WEIGHTS_DIR}{name}.npy")), allow_pickle=False))
                for name in header["weights"]
            }
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise MetatrackError(f"risk model bytes: not a metatrack risk model ({exc})") from exc
    version = header.get("format_version")
    if version not in READABLE_VERSIONS:
        raise MetatrackError(
            f"risk model bytes: format_version {version!r}, this metatrack reads {list(READABLE_VERSIONS)}"
        )
    cfg = SurvivalModelConfig.from_dict(header["config"])
    if version == 1:  # one network, weights at the top level
        state = {f"members.0.{name}": t for name, t in state.items()}
        cfg = dataclasses.replace(cfg, n_ensemble=1)
    stats = Standardizer(
        tuple(header["features"]), np.asarray(header["mean"], dtype=np.float64), np.asarray(header["std"], np.float64)
    )
    n_members = int(header.get("n_members", 1))
    shape = (header["n_inputs"], cfg.hidden_size, cfg.n_bins, cfg.dropout)
    net = EnsembleNet([RiskNet(*shape) for _ in range(n_members)])
    net.load_state_dict(state)
    net.eval()
    return RiskModel(cfg, stats, net, header["metadata"])

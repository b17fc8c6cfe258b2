"""The segmentation network (MONAI U-Net), the trained model and its file.

A model file is a zip: ``model.json`` (a header with ``"kind": "segmentation"``, ``format_version``, the network's
settings, the working spacing, patch, intensity window, detection thresholds and metadata) and ``weights.pt``
(the state dict, read back with ``torch.load(weights_only=True)``: no pickled objects). Entries carry a fixed
timestamp, so the same model gives the same bytes.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tracker.errors import MetatrackError
from tracker.segmentation import SEGMENTATION_KIND

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.pt"
FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def build_net(channels: Sequence[int], num_res_units: int) -> torch.nn.Module:
    """A 3-D MONAI U-Net: one input channel (the windowed image), one output (lesion logit), stride 2 per level,
    batch norm (the sliding windows at inference see the training statistics, not their own)."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=tuple(int(c) for c in channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=int(num_res_units),
        norm="batch",
    )


@dataclass
class SegmentationModel:
    """A trained lesion segmentation model: the network and what its input and output need.

    ``work_spacing`` (z, y, x mm) and ``patch`` (voxels) are the working grid and the sliding window; ``window``
    (lo, hi) the intensity window; ``threshold`` and ``min_volume_mm3`` the detection settings chosen on the
    validation patients (see :func:`tracker.segmentation.components.lesion_components`).
    """

    net: Any
    channels: list[int]
    num_res_units: int
    work_spacing: list[float]
    patch: list[int]
    window: list[float]
    threshold: float
    min_volume_mm3: float
    overlap: float = 0.25
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return SEGMENTATION_KIND

    @property
    def features(self) -> list[str]:
        """A segmentation model reads an image, no feature columns."""
        return []

    def predict_probability(
        self, image: np.ndarray, spacing_zyx: Sequence[float], device: str | None = None
    ) -> np.ndarray:
        """Lesion probability (float32) on the image's own grid: ``image`` (z, y, x) resampled to the working
        spacing, windowed, sliding-window inference, the probability resampled back."""
        import torch

        from tracker.segmentation.inference import from_working_grid, scale_window, sliding_probability, to_working_grid

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net.to(dev).eval()
        volume = scale_window(
            to_working_grid(np.asarray(image, dtype=np.float32), spacing_zyx, self.work_spacing), self.window
        )
        prob = sliding_probability(self.net, volume, self.patch, 2 ** (len(self.channels) - 1), self.overlap, dev)
        self.net.to("cpu")
        return from_working_grid(prob, self.work_spacing, spacing_zyx, np.shape(image))

    def header(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "channels": list(self.channels),
            "num_res_units": self.num_res_units,
            "work_spacing": list(self.work_spacing),
            "patch": list(self.patch),
            "window": list(self.window),
            "threshold": float(self.threshold),
            "min_volume_mm3": float(self.min_volume_mm3),
            "overlap": float(self.overlap),
            "metadata": self.metadata,
        }

    def to_bytes(self) -> bytes:
        import torch

        weights = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, weights)
        entries = [(MODEL_JSON, json.dumps(self.header(), sort_keys=True).encode()), (WEIGHTS, weights.getvalue())]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, payload in entries:
                zf.writestr(
                    zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIME), payload, compress_type=zipfile.ZIP_DEFLATED
                )
        return buf.getvalue()


def segmentation_model_from_bytes(data: bytes) -> SegmentationModel:
    """A model from its file (see the module docstring); anything else raises a one-line MetatrackError."""
    import torch

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            header = json.loads(zf.read(MODEL_JSON))
            weights = zf.read(WEIGHTS) if isinstance(header, dict) and header.get("kind") == SEGMENTATION_KIND else b""
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise MetatrackError(f"segmentation model bytes: not a metatrack model file ({exc})") from exc
    kind = header.get("kind", "rnn") if isinstance(header, dict) else None
    if kind != SEGMENTATION_KIND:
        raise MetatrackError(f"model file: a {kind!r} model, not a segmentation model")
    if header.get("format_version") != FORMAT_VERSION:
        raise MetatrackError(
            f"segmentation model bytes: format_version {header.get('format_version')!r}, "
            f"this metatrack reads [{FORMAT_VERSION}]"
        )
    net = build_net(header["channels"], header["num_res_units"])
    net.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
    net.eval()
    return SegmentationModel(
        net=net,
        channels=list(header["channels"]),
        num_res_units=int(header["num_res_units"]),
        work_spacing=[float(v) for v in header["work_spacing"]],
        patch=[int(v) for v in header["patch"]],
        window=[float(v) for v in header["window"]],
        threshold=float(header["threshold"]),
        min_volume_mm3=float(header["min_volume_mm3"]),
        overlap=float(header.get("overlap", 0.25)),
        metadata=dict(header.get("metadata", {})),
    )


@functools.lru_cache(maxsize=4)
def read_segmentation_model(path: Path) -> SegmentationModel:
    """The model in a file (cached: a model file in the store never changes)."""
    return segmentation_model_from_bytes(Path(path).read_bytes())

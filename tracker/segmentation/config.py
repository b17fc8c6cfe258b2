"""What training reads: the examples (plain arrays) and the settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracker.errors import MetatrackError

LOSSES = ("dice_ce", "dice_focal")


@dataclass(frozen=True)
class SegmentationExample:
    """One labelled scan: image (z, y, x) intensities, its voxel spacing (z, y, x) mm and the lesion label map
    (0 background, one label per lesion). ``digest`` names the scan's content (image and mask sha256) for the
    model's data fingerprint."""

    patient: str
    image: np.ndarray
    spacing_zyx: tuple[float, float, float]
    lesions: np.ndarray
    digest: str = ""


@dataclass(frozen=True)
class SegmentationConfig:
    """Settings of :func:`tracker.segmentation.training.train_segmentation` (the CLI defaults)."""

    patch_mm: float = 96.0  # cube side of a training patch
    max_patch_voxels: int = 64  # the working spacing is never finer than patch_mm / this
    max_epochs: int = 30
    min_epochs: int = 15
    patience: int = 3  # validation checks without improvement before stopping
    val_every: int = 5  # epochs between validation checks
    samples_per_scan: int = 16  # patches drawn from each training scan per epoch (4 learnt nothing in 12 epochs)
    pos_neg: tuple[float, float] = (2.0, 1.0)  # lesion-centred : background-centred patches
    batch_size: int = 4
    learning_rate: float = 5e-3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 1
    val_fraction: float = 0.2  # of the patients (at least one), for early stopping and thresholds
    window_percentiles: tuple[float, float] = (25.0, 75.0)  # of the voxels inside lesions
    window_margin_iqr: float = 2.0  # the window's margin beyond those percentiles, in lesion-intensity IQRs
    loss: str = "dice_ce"  # "dice_ce" or "dice_focal"; Dice over the whole batch (a background patch has none)
    flips: bool = True
    overlap: float = 0.25  # sliding-window overlap
    min_diameter_mm: float = 10.0  # lesions this large (equivalent-sphere diameter) count for detection metrics
    max_fp_per_scan: float = 0.5
    # the false-positive rate a threshold is held to is its upper confidence bound at this level (Poisson): few
    # validation scans allow few false positives (8 scans: at most 1 for 0.5 per scan; 100 scans: 40)
    fp_bound_confidence: float = 0.8
    thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    min_volumes_mm3: tuple[float, ...] = (0.0, 30.0, 60.0, 120.0, 250.0)
    threads: int = 2  # torch CPU threads while training (fixed: results depend on it)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patch_mm <= 0:
            raise MetatrackError(f"segmentation patch {self.patch_mm} mm: expected a positive size")
        if self.max_epochs < 1 or self.min_epochs < 0:
            raise MetatrackError(f"segmentation epochs {self.max_epochs}: expected at least 1")
        if self.loss not in LOSSES:
            raise MetatrackError(f"segmentation loss {self.loss!r}: expected one of {', '.join(LOSSES)}")
        if not 0.0 <= self.fp_bound_confidence < 1.0:
            raise MetatrackError(f"segmentation fp_bound_confidence {self.fp_bound_confidence}: expected 0 <= c < 1")
        if len(self.channels) < 2:
            raise MetatrackError(f"segmentation channels {self.channels}: expected at least 2 levels")

    @property
    def stride(self) -> int:
        """The network's total down-sampling factor: patch sides are multiples of it."""
        return int(2 ** (len(self.channels) - 1))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

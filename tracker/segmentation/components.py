"""Lesion components of a probability map: connected regions above a threshold, their volume and confidence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity, as the lesion masks are read


@dataclass(frozen=True)
class Component:
    """One candidate lesion: its label in the returned map, volume (mm3) and confidence in [0, 1] (the mean
    probability of its voxels)."""

    label: int
    volume_mm3: float
    confidence: float


def lesion_components(
    probability: np.ndarray, spacing_zyx: Sequence[float], *, threshold: float, min_volume_mm3: float
) -> tuple[np.ndarray, list[Component]]:
    """The int32 label map (1..n, largest component first) of the 26-connected components of ``probability >
    threshold`` of at least ``min_volume_mm3``, and one :class:`Component` per label."""
    from scipy import ndimage

    prob = np.asarray(probability, dtype=np.float32)
    labels, n = ndimage.label(prob > threshold, structure=CONNECTIVITY)
    out = np.zeros(prob.shape, dtype=np.int32)
    if n == 0:
        return out, []
    voxel_mm3 = float(np.prod(np.asarray(spacing_zyx, dtype=np.float64)))
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    sums = np.asarray(ndimage.sum_labels(prob, labels, index=np.arange(1, n + 1)), dtype=np.float64)
    keep = [i for i in np.argsort(-counts, kind="stable") if counts[i] * voxel_mm3 >= min_volume_mm3]
    lookup = np.zeros(n + 1, dtype=np.int32)
    found = []
    for new, i in enumerate(keep, start=1):
        lookup[i + 1] = new
        conf = float(np.clip(sums[i] / counts[i], 0.0, 1.0))
        found.append(Component(new, float(counts[i] * voxel_mm3), conf))
    out[...] = lookup[labels]
    return out, found


def equivalent_diameter_mm(volume_mm3: float) -> float:
    """The diameter of the sphere of this volume."""
    return float((6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0))

"""Bright spheres in noise: the learnable task the segmentation tests train on (shared by their modules)."""

from __future__ import annotations

import numpy as np

from tracker.segmentation.config import SegmentationConfig, SegmentationExample

SPACING = (4.0, 4.0, 4.0)
SHAPE = (24, 32, 32)
CFG = SegmentationConfig(
    patch_mm=64.0,
    channels=(4, 8, 16),
    max_epochs=10,
    samples_per_scan=4,
    min_epochs=10,
    val_every=5,
    learning_rate=1e-2,
    val_fraction=0.25,
    min_volumes_mm3=(0.0, 100.0),
    thresholds=(0.3, 0.5, 0.7),
)


def sphere_scan(rng: np.random.Generator, n_spheres: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Noise (sd 10) with spheres of radius 8-14 mm 40 units brighter, and their labels 1..n."""
    image = rng.normal(0.0, 10.0, SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, np.int16)
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)], indexing="ij")
    for k in range(1, n_spheres + 1):
        centre = [rng.uniform(20.0, n * s - 20.0) for n, s in zip(SHAPE, SPACING, strict=True)]
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < rng.uniform(8.0, 14.0) ** 2
        labels[inside] = k
        image[inside] += 40.0
    return image, labels


def cohort(n_patients: int, scans: int, seed: int) -> list[SegmentationExample]:
    rng = np.random.default_rng(seed)
    return [SegmentationExample(f"P{p}", *_pair(sphere_scan(rng))) for p in range(n_patients) for _ in range(scans)]


def _pair(scan: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    return scan[0], SPACING, scan[1]

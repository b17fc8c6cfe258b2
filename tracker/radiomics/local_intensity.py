"""IBSI local intensity features: local and global intensity peak (mean in a 1 cm³ sphere)."""

from __future__ import annotations

import math

import numpy as np

from tracker.radiomics.preprocess import PEAK_RADIUS_MM


def sphere_kernel(spacing: tuple[float, float, float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean kernel of the voxels whose centres lie within ``radius_mm`` of the central voxel's centre."""
    half = [math.floor(radius_mm / s) for s in spacing]
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return zz**2 + yy**2 + xx**2 <= radius_mm**2 + 1e-9


def local_intensity_features(
    image: np.ndarray, int_mask: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float]:
    """Local peak (sphere mean around the ROI's brightest voxel, the highest if tied) and global peak.

    The sphere mean uses every image voxel in the sphere, inside the ROI or not; where the sphere leaves the
    image, the mean is over the voxels inside the image.
    """
    from scipy.signal import fftconvolve

    if not int_mask.any():
        return {}
    kernel = sphere_kernel(spacing).astype(np.float64)
    sums = fftconvolve(image, kernel, mode="same")[int_mask]
    half = np.array(kernel.shape) // 2
    idx = np.argwhere(int_mask)
    if np.all(idx.min(axis=0) >= half) and np.all(idx.max(axis=0) < np.array(image.shape) - half):
        counts = float(kernel.sum())  # every sphere lies inside the array
    else:
        counts = np.round(fftconvolve(np.ones_like(image), kernel, mode="same")[int_mask])
    roi_means = sums / counts
    roi_vals = image[int_mask]
    brightest = roi_vals == roi_vals.max()
    return {"loc_peak_loc": float(roi_means[brightest].max()), "loc_peak_glob": float(roi_means.max())}

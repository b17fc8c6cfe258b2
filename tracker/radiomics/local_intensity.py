"""IBSI local intensity features: local and global intensity peak (mean in a 1 cm³ sphere)."""

from __future__ import annotations

import functools
import math

import numpy as np

from tracker.radiomics.fftsize import even_fast_len
from tracker.radiomics.preprocess import PEAK_RADIUS_MM, bounding_box


def sphere_kernel(spacing: tuple[float, float, float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean kernel of the voxels whose centres lie within ``radius_mm`` of the central voxel's centre."""
    half = [math.floor(radius_mm / s) for s in spacing]
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return zz**2 + yy**2 + xx**2 <= radius_mm**2 + 1e-9


def sphere_sums(
    array: np.ndarray, kernel: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Sums of ``array`` (zero beyond its edges) under ``kernel`` centred on every voxel of the box ``lo..hi``.

    ``kernel`` must be symmetric along each axis (odd sizes). A circular convolution is exact at an output
    voxel when its window does not wrap onto data: the period is the smallest even fast length >= the array
    and >= hi + half + 1 and N + half - lo per axis (N + 2 half in general, N in the usual case of a margin of
    at least ``half`` around the box). The kernel is even, so its spectrum is real: the type-I DCT of its
    non-negative octant.

    Returns
    -------
    sums on the box, and the box's slices into ``array``.
    """
    from scipy import fft

    half = np.array(kernel.shape) // 2
    period = [
        even_fast_len(max(n, int(b) + h + 1, n + h - int(a), 2 * h + 2))
        for n, a, b, h in zip(array.shape, lo, hi, half, strict=True)
    ]
    even = np.ascontiguousarray(kernel, dtype=np.float64)
    spectrum = _kernel_spectrum(tuple(period), even.tobytes(), even.shape)
    conv = fft.irfftn(fft.rfftn(array, period) * spectrum, period)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
    return conv[box], box


@functools.lru_cache(maxsize=4)
def _kernel_spectrum(period: tuple[int, ...], kernel_bytes: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Real spectrum (rfft layout) of an even kernel on the grid of ``period``: the type-I DCT of its
    non-negative octant, mirrored along the full axes. Cached: it depends on the period and kernel only."""
    from scipy import fft

    kernel = np.frombuffer(kernel_bytes, dtype=np.float64).reshape(shape)
    half = np.array(shape) // 2
    octant = np.zeros([p // 2 + 1 for p in period])
    octant[: half[0] + 1, : half[1] + 1, : half[2] + 1] = kernel[half[0] :, half[1] :, half[2] :]
    spectrum = fft.dctn(octant, type=1)
    spectrum = np.concatenate([spectrum, spectrum[-2:0:-1]], axis=0)
    spectrum = np.concatenate([spectrum, spectrum[:, -2:0:-1]], axis=1)
    spectrum.setflags(write=False)
    return spectrum


def local_intensity_features(
    image: np.ndarray, int_mask: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float]:
    """Local peak (sphere mean around the ROI's brightest voxel, the highest if tied) and global peak.

    The sphere mean uses every image voxel in the sphere, inside the ROI or not; where the sphere leaves the
    image, the mean is over the voxels inside the image.
    """
    if not int_mask.any():
        return {}
    kernel = sphere_kernel(spacing).astype(np.float64)
    half = np.array(kernel.shape) // 2
    lo, hi = bounding_box(int_mask)
    # only voxels within a kernel radius of the ROI's box are read: transform that part of the image only
    start = np.maximum(lo - half, 0)
    stop = np.minimum(hi + half, np.array(image.shape) - 1)
    part = tuple(slice(int(a), int(b) + 1) for a, b in zip(start, stop, strict=True))
    sums, local = sphere_sums(np.asarray(image[part], dtype=np.float64), kernel, lo - start, hi - start)
    box = tuple(slice(p.start + s.start, p.start + s.stop) for p, s in zip(part, local, strict=True))
    inside = int_mask[box]
    sums = sums[inside]
    if np.all(lo >= half) and np.all(hi < np.array(image.shape) - half):
        counts = float(kernel.sum())  # every sphere lies inside the array
    else:
        counts = np.round(sphere_sums(np.ones(image.shape), kernel, lo, hi)[0][inside])
    roi_means = sums / counts
    roi_vals = image[box][inside]
    brightest = roi_vals == roi_vals.max()
    return {"loc_peak_loc": float(roi_means[brightest].max()), "loc_peak_glob": float(roi_means.max())}

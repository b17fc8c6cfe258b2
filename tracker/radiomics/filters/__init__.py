"""IBSI 2 convolutional filters (Whybra et al., arXiv:2006.05470): response maps of a (z, y, x) volume.

``apply_filter`` runs the filter a ``filter:`` spec names on the whole volume; ``response_in_box`` gives the
response in a box (e.g. around an ROI) from a crop that carries enough real neighbours (``filter_margin``), so a
small lesion in a large scan is filtered cheaply and, for the spatial filters, exactly as the whole volume would
be.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from tracker.radiomics.filters.boundary import padded_box
from tracker.radiomics.filters.spatial import (
    filter_axes,
    gabor_filter,
    laws_filter,
    laws_kernels,
    log_filter,
    mean_filter,
)
from tracker.radiomics.filters.wavelets import (
    WAVELET_LOW_PASS,
    band_filter_box,
    fourier_filter,
    padded_size,
    riesz_half,
    separable_wavelet,
    simoncelli_band,
    simoncelli_half,
)

FilterFunction = Callable[[np.ndarray, tuple[float, ...], dict[str, Any]], np.ndarray]
#: padding (voxels) around a volume before a Fourier-domain filter with a non-periodic boundary, half of it for a
#: 3D Simoncelli filter (without it the consensus Riesz maps 9.b.1 and 10.b.1 are missed by up to 2 % of their
#: range; phase-2 id 8.A's quartile coefficient of dispersion, whose denominator is near 0, needs the 32 voxels)
FOURIER_PAD = 32
#: a margin that reaches every image's edge (callers clip it to the image)
WHOLE_IMAGE = 1 << 30


def _padded_shape(shape: tuple[int, ...], axes: tuple[int, ...], margin: int) -> tuple[int, ...]:
    if not margin:
        return shape
    return tuple(padded_size(n, margin) if ax in axes else n for ax, n in enumerate(shape))


def _with_riesz(image: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """The Riesz transform of order ``riesz_order`` of a response map (IBSI 2 tests 9 and 10), if one is set."""
    order = spec.get("riesz_order")
    if order is None:
        return image
    axes = filter_axes(spec)
    margin = 0 if spec["boundary"] == "periodic" else FOURIER_PAD
    transfer = riesz_half(_padded_shape(image.shape, axes, margin), axes, tuple(order))
    return fourier_filter(image, spec, transfer, margin)


def _log(image: np.ndarray, spacing: tuple[float, ...], spec: dict[str, Any]) -> np.ndarray:
    return _with_riesz(log_filter(image, spacing, spec), spec)


def _simoncelli_pad(spec: dict[str, Any]) -> int:
    # 3D volumes are padded half as much: the FFT's size is most of the cost, and phase 2 (8.B, 9.B) holds
    return 0 if spec["boundary"] == "periodic" else FOURIER_PAD // (1 if spec["mode"] == "2D" else 2)


def _simoncelli(image: np.ndarray, spacing: tuple[float, ...], spec: dict[str, Any]) -> np.ndarray:
    margin = _simoncelli_pad(spec)
    axes = filter_axes(spec)
    transfer = simoncelli_half(_padded_shape(image.shape, axes, margin), axes, int(spec["level"]))
    return _with_riesz(fourier_filter(image, spec, transfer, margin), spec)


#: filter kind -> function computing its response map on a whole volume
FILTERS: dict[str, FilterFunction] = {
    "mean": mean_filter,
    "log": _log,
    "laws": laws_filter,
    "gabor": gabor_filter,
    "wavelet": separable_wavelet,
    "simoncelli": _simoncelli,
}


def apply_filter(
    image: np.ndarray, spacing: tuple[float, ...], spec: dict[str, Any], margin: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """Response map (float64, same shape) of ``image`` under the filter ``spec`` (a validated ``filter:`` section).

    Parameters
    ----------
    image : (z, y, x) intensities
    spacing : (z, y, x) voxel size in mm
    spec : the filter settings (``kind``, ``mode``, ``boundary`` and the kind's parameters)
    margin : voxels at each (z, y, x) edge that are context only: a filter may leave their response uncomputed
        (the Gabor filter does, as it costs most) or other than at the image's edge (a wavelet's composed stages)
    """
    image = np.asarray(image, dtype=np.float64)
    spacing_mm = tuple(float(s) for s in spacing)
    if spec["kind"] == "gabor":
        return gabor_filter(image, spacing_mm, spec, margin)
    if spec["kind"] == "wavelet":
        return separable_wavelet(image, spacing_mm, spec, margin)
    return FILTERS[spec["kind"]](image, spacing_mm, spec)


def filter_margin(spec: dict[str, Any], spacing: tuple[float, ...]) -> tuple[int, int, int]:
    """Voxels of real neighbours per (z, y, x) side a response needs; for the Fourier filters (Simoncelli,
    Riesz), whose kernels are not compact, a reach where the kernel has decayed in 3D and whole slices in 2D
    (cheap there; the fragile quartile coefficient of dispersion of IBSI 2 phase-2 id 8.A needs them)."""
    kind = spec["kind"]
    if spec["mode"] == "2D" and (kind == "simoncelli" or spec.get("riesz_order") is not None):
        return (0, WHOLE_IMAGE, WHOLE_IMAGE)
    axes = filter_axes(spec)
    reach_mm = [0.0, 0.0, 0.0]
    reach_vox = 0
    if kind == "mean":
        reach_vox = int(spec["support"]) // 2
    elif kind == "log":
        reach_mm = [float(spec["truncate"]) * float(spec["sigma_mm"]) + s for s in spacing]
    elif kind == "laws":
        reach_vox = max(k.size // 2 for k in laws_kernels(spec["kernel"], len(axes)))
        if spec.get("energy_distance") is not None:
            reach_vox += int(spec["energy_distance"])
    elif kind == "gabor":
        reach = 4.0 * float(spec["sigma_mm"]) / min(float(spec["gamma"]), 1.0)
        reach_mm = [reach + s for s in spacing]
    elif kind == "wavelet":
        taps = WAVELET_LOW_PASS[spec["wavelet"]].size
        reach_vox = sum(2 ** (j - 1) * taps for j in range(1, int(spec["level"]) + 1))
    elif kind == "simoncelli":
        reach_vox = FOURIER_PAD // 2 * 2 ** (int(spec["level"]) - 1)
    if spec.get("riesz_order") is not None:
        reach_vox += FOURIER_PAD // 2
    out = [0, 0, 0]
    for ax in axes:
        out[ax] = reach_vox + math.ceil(reach_mm[ax] / float(spacing[ax]))
    return (out[0], out[1], out[2])


def response_in_box(
    image: np.ndarray, spacing: tuple[float, ...], spec: dict[str, Any], lo: tuple[int, ...], hi: tuple[int, ...]
) -> np.ndarray:
    """Response map of ``image`` in the box ``[lo, hi)``, computed from that box grown by ``filter_margin`` (the
    image's boundary condition fills what lies outside the image).

    Exact for the spatial filters; near the image's edge a wavelet of level >= 2 differs slightly, as the whole
    volume's filter pads each stage's output while the box pads the input once.
    """
    margin = filter_margin(spec, spacing)
    if spec["kind"] == "simoncelli" and spec.get("riesz_order") is None:
        return _simoncelli_in_box(image, spec, lo, hi, margin)
    big_lo = tuple(a - m for a, m in zip(lo, margin, strict=True))
    big_hi = tuple(b + m for b, m in zip(hi, margin, strict=True))
    if spec["kind"] == "simoncelli" or spec.get("riesz_order") is not None:
        # the Fourier filters pad the volume under its boundary condition themselves
        big_lo = tuple(max(0, a) for a in big_lo)
        big_hi = tuple(min(n, b) for b, n in zip(big_hi, image.shape, strict=True))
        margin = (lo[0] - big_lo[0], lo[1] - big_lo[1], lo[2] - big_lo[2])
    crop = padded_box(np.asarray(image, dtype=np.float64), big_lo, big_hi, spec["boundary"])
    out = apply_filter(crop, spacing, spec, margin)
    return out[tuple(slice(m, m + (b - a)) for m, a, b in zip(margin, lo, hi, strict=True))]


def _simoncelli_in_box(
    image: np.ndarray, spec: dict[str, Any], lo: tuple[int, ...], hi: tuple[int, ...], reach: tuple[int, ...]
) -> np.ndarray:
    """``response_in_box`` of a Simoncelli filter from one transform (``band_filter_box``) of the box grown by the
    reach and the padding: real neighbours where the image has them, the boundary condition only within the
    padding beyond its edges; a box that spans the image is transformed as ``apply_filter`` transforms the image.

    The reach and the padding are both needed: a third less misses phase-2 ids 8.B and 9.B (their medians, near
    0, move by several tolerances), and real neighbours in the padding keep 8.B's median further inside its
    tolerance than a mirrored crop.
    """
    from scipy import fft

    pad = _simoncelli_pad(spec)
    axes = filter_axes(spec)
    big_lo, big_hi = list(lo), list(hi)
    for ax in axes:
        big_lo[ax] = max(lo[ax] - reach[ax] - pad, -pad)
        big_hi[ax] = min(hi[ax] + reach[ax] + pad, image.shape[ax] + pad)
        if pad:  # the extra voxels of a fast transform length on the far side, as padded_size places them
            big_hi[ax] = big_lo[ax] + fft.next_fast_len(big_hi[ax] - big_lo[ax], real=True)
    crop = padded_box(np.asarray(image), tuple(big_lo), tuple(big_hi), spec["boundary"], np.float32)
    band = simoncelli_band(crop.shape, axes, int(spec["level"]))
    box = tuple(slice(a - b0, c - b0) for a, c, b0 in zip(lo, hi, big_lo, strict=True))
    return band_filter_box(crop, axes, band, box)

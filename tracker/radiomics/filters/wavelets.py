"""IBSI 2 wavelets: undecimated separable wavelets (Haar, Daubechies, Coiflet) and the non-separable Simoncelli
wavelet, with an optional Riesz transform; same calling convention as ``spatial``."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from tracker.radiomics.filters.boundary import SCIPY_MODE, padded_box
from tracker.radiomics.filters.rotations import ROTATIONS_2D, ROTATIONS_3D, axis_maps
from tracker.radiomics.filters.spatial import filter_axes

# decomposition low-pass filters (PyWavelets 1.9 ``dec_lo``); the high-pass is the quadrature mirror (``_high_pass``)
WAVELET_LOW_PASS: dict[str, np.ndarray] = {
    "haar": np.array([0.7071067811865476, 0.7071067811865476]),
    "db2": np.array([-0.12940952255126037, 0.2241438680420134, 0.8365163037378079, 0.48296291314453416]),
    "db3": np.array(
        [
            0.03522629188570953,
            -0.08544127388202666,
            -0.13501102001025458,
            0.45987750211849154,
            0.8068915093110925,
            0.33267055295008263,
        ]
    ),
    "coif1": np.array(
        [
            -0.015655728135791993,
            -0.07273261951252645,
            0.3848648468648578,
            0.8525720202116004,
            0.3378976624574818,
            -0.07273261951252645,
        ]
    ),
}


def _high_pass(low: np.ndarray) -> np.ndarray:
    n = low.size
    return np.array([(-1) ** (k + 1) * low[n - 1 - k] for k in range(n)])


def _convolve(a: np.ndarray, kernel: np.ndarray, factor: int, axis: int, mode: str, reverse: bool) -> np.ndarray:
    """``a`` convolved along ``axis`` with ``kernel`` dilated by ``factor`` (``factor - 1`` zeros between taps, a
    trous), centred on tap ``n // 2`` of the ``n`` taps at every level, as the IBSI 2 consensus maps are;
    ``reverse``: the kernel mirrored about that centre (what filtering the axis-reversed image amounts to)."""
    from scipy import ndimage

    dilated = np.zeros((kernel.size - 1) * factor + 1)
    dilated[::factor] = kernel
    centre = (kernel.size // 2) * factor
    if reverse:
        dilated, centre = dilated[::-1], dilated.size - 1 - centre
    return ndimage.convolve1d(a, dilated, axis=axis, mode=mode, origin=centre - dilated.size // 2)


def separable_wavelet(
    image: np.ndarray, spacing: tuple[float, ...], spec: dict[str, Any], margin: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """Undecimated wavelet response of sub-band ``subband`` (letters for x, y[, z]) at ``level``; the levels
    before it apply the low-pass filter on every axis. Rotation invariance pools over the right-angle rotations
    as kernel rearrangements (axes permuted and mirrored), each distinct one filtered once.

    Where ``margin`` (voxels at each edge that are context only) covers the filter's reach, each axis's stages,
    and the two directions an average pools, are one convolution with their composed kernel (the same response
    away from the edges, where each stage's boundary padding would differ).
    """
    from scipy import ndimage

    axes = filter_axes(spec)
    mode = SCIPY_MODE[spec["boundary"]]
    low = WAVELET_LOW_PASS[spec["wavelet"]]
    bands = spec["subband"]
    if len(bands) != len(axes):
        raise ValueError(f"wavelet sub-band '{bands}': expected {len(axes)} letters of L and H")
    band_of = dict(zip(sorted(axes, reverse=True), bands, strict=True))  # letters for x, y, z: axes 2, 1, 0
    level = int(spec["level"])
    reach = sum(2 ** (j - 1) * low.size for j in range(1, level + 1))
    composed = all(margin[ax] >= reach for ax in axes)

    def staged(a: np.ndarray, ax: int, band: str, reverse: bool, mode: str = mode) -> np.ndarray:
        # one axis's part of the separable filter: the earlier levels' low-pass, then the band at this level
        for j in range(1, level):
            a = _convolve(a, low, 2 ** (j - 1), ax, mode, reverse)
        return _convolve(a, low if band == "L" else _high_pass(low), 2 ** (level - 1), ax, mode, reverse)

    kernels: dict[tuple[str, tuple[bool, ...]], np.ndarray] = {}

    def kernel(band: str, directions: tuple[bool, ...]) -> np.ndarray:
        # the stages' impulse response (mean over the directions), trimmed to an odd length about its centre
        if (band, directions) not in kernels:
            impulse = np.zeros(2 * reach + 1)
            impulse[reach] = 1.0
            h = np.mean([staged(impulse, 0, band, r, "constant") for r in directions], axis=0)
            hit = np.flatnonzero(h)
            half = max(reach - hit[0], hit[-1] - reach)
            kernels[band, directions] = h[reach - half : reach + half + 1]
        return kernels[band, directions]

    def along(a: np.ndarray, ax: int, band: str, reverse: bool) -> np.ndarray:
        if composed:
            return ndimage.convolve1d(a, kernel(band, (reverse,)), axis=ax, mode=mode)
        return staged(a, ax, band, reverse)

    def both_directions(a: np.ndarray, ax: int, band: str) -> np.ndarray:
        if composed:
            return ndimage.convolve1d(a, kernel(band, (False, True)), axis=ax, mode=mode)
        return (staged(a, ax, band, False) + staged(a, ax, band, True)) / 2.0

    if not spec["rotation_invariant"]:
        plain = image
        for ax in axes:
            plain = along(plain, ax, band_of[ax], False)
        return plain
    maps = axis_maps(ROTATIONS_2D if spec["mode"] == "2D" else ROTATIONS_3D)
    # what a rearrangement filters with: each axis's band and direction; grouped by the bands' placement
    groups: dict[tuple[str, ...], dict[tuple[bool, ...], int]] = {}
    for mapping in maps:
        placement = tuple(band_of[mapping[ax][0]] for ax in axes)
        directions = tuple(mapping[ax][1] for ax in axes)
        group = groups.setdefault(placement, {})
        group[directions] = group.get(directions, 0) + 1
    out: np.ndarray | None = None
    for placement, flips in groups.items():
        if spec["pooling"] == "average" and len(flips) == 2 ** len(axes) and len(set(flips.values())) == 1:
            # every direction combination equally often: the mean factorises over the axes (the 1D filters along
            # different axes commute), one mean of two directions per axis instead of 2 ** n volumes
            r = image
            for ax, band in zip(axes, placement, strict=True):
                r = both_directions(r, ax, band)
            parts = [(r, sum(flips.values()))]
        else:
            parts = []
            for flip, count in flips.items():
                r = image
                for ax, band, reverse in zip(axes, placement, flip, strict=True):
                    r = along(r, ax, band, reverse)
                parts.append((r, count))
        for r, count in parts:
            if spec["pooling"] == "max":
                out = r if out is None else np.maximum(out, r)
            else:
                r = r * (count / len(maps))
                out = r if out is None else out + r
    assert out is not None
    return out


def _frequencies(
    shape: tuple[int, ...], axes: tuple[int, ...], mirrored: bool = False, half: int | None = None
) -> list[np.ndarray]:
    """Angular frequencies along ``axes`` in FFT order, broadcastable to ``shape``; ``mirrored``: at index -k
    (mod n) instead of k; ``half``: only the first ``n // 2 + 1`` indices along axis ``half`` (rfftn's grid).

    The IBSI 2 consensus maps sample [-pi, pi] at n evenly spaced points, both ends included (the usual FFT grid,
    2 pi k / n, misses the level-2 and level-3 Simoncelli maps by 3 % and 8 % of their range).
    """
    out = []
    for ax in axes:
        n = shape[ax]
        w = np.fft.ifftshift(np.linspace(-math.pi, math.pi, n)) if n > 1 else np.zeros(1)
        if mirrored:
            w = w[(-np.arange(n)) % n]
        if ax == half:
            w = w[: n // 2 + 1]
        view = [1] * len(shape)
        view[ax] = w.size
        out.append(w.reshape(view))
    return out


def _simoncelli(freqs: list[np.ndarray], level: int) -> np.ndarray:
    """The Simoncelli band-pass, cos(pi / 2 log2(2 r / pi)) for pi / 4 < r <= pi (r: the frequency radius scaled
    by 2^(level - 1)), in single precision as the transforms it multiplies, written in r^2 (no square root)."""
    r2: np.ndarray | None = None
    for w in freqs:
        w2 = (w * w * 4.0 ** (level - 1)).astype(np.float32)
        r2 = w2 if r2 is None else r2 + w2
    assert r2 is not None
    lo, hi = np.float32((math.pi / 4.0) ** 2), np.float32(math.pi**2)
    # pi / 2 log2(2 r / pi) = pi / (4 ln 2) ln(4 r^2 / pi^2)
    arg = np.log(np.clip(r2, lo, hi) * np.float32(4.0 / math.pi**2))
    arg *= np.float32(math.pi / (4.0 * math.log(2.0)))
    out = np.cos(arg)
    out[(r2 <= lo) | (r2 > hi)] = 0.0
    return out


def simoncelli_transfer(shape: tuple[int, ...], axes: tuple[int, ...], level: int) -> np.ndarray:
    """Fourier transfer function of the Simoncelli band-pass wavelet at ``level`` (IBSI 2)."""
    return _simoncelli(_frequencies(shape, axes), level)


def riesz_transfer(shape: tuple[int, ...], axes: tuple[int, ...], order: tuple[int, ...]) -> np.ndarray:
    """Fourier transfer function of the Riesz transform of ``order`` (one integer per axis, for x, y[, z])."""
    freqs = _frequencies(shape, tuple(sorted(axes, reverse=True)))
    norm = np.sqrt(sum(w**2 for w in freqs))
    total = sum(order)
    scale = math.sqrt(math.factorial(total) / math.prod(math.factorial(k) for k in order))
    out: np.ndarray = np.ones((1,) * len(shape), dtype=np.complex128) * scale
    for w, k in zip(freqs, order, strict=True):
        out = out * (-1j * w) ** k
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(norm > 0, out / norm**total, 0.0)
    return out


@functools.lru_cache(maxsize=8)
def simoncelli_half(shape: tuple[int, ...], axes: tuple[int, ...], level: int) -> np.ndarray:
    """``half_spectrum`` of ``simoncelli_transfer``, evaluated on the half grid only; cached per shape
    (read-only)."""
    last = axes[-1]
    out = _simoncelli(_frequencies(shape, axes, half=last), level)
    out += _simoncelli(_frequencies(shape, axes, mirrored=True, half=last), level)
    out *= np.float32(0.5)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=8)
def simoncelli_band(
    shape: tuple[int, ...], axes: tuple[int, ...], level: int
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """``simoncelli_half`` where it can be non-zero: per axis of ``axes`` the indices of the half grid within the
    band's reach (|w| 2^(level - 1) <= pi on the grid or its mirror), and the transfer function on their product
    grid; cached per shape (read-only). Level 2 keeps an eighth of the grid."""
    last = axes[-1]
    plain = _frequencies(shape, axes, half=last)
    mirror = _frequencies(shape, axes, mirrored=True, half=last)
    keep = []
    for w, m in zip(plain, mirror, strict=True):
        reach = np.minimum(np.abs(w), np.abs(m)).ravel() * 2 ** (level - 1)
        keep.append(np.flatnonzero(reach <= math.pi * (1.0 + 1e-12)))
    out = _simoncelli([np.take(w, k, axis=ax) for ax, w, k in zip(axes, plain, keep, strict=True)], level)
    out += _simoncelli([np.take(m, k, axis=ax) for ax, m, k in zip(axes, mirror, keep, strict=True)], level)
    out *= np.float32(0.5)
    out.flags.writeable = False
    for k in keep:
        k.flags.writeable = False
    return tuple(keep), out


def _gather(a: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    return a if index.size == a.shape[axis] else np.take(a, index, axis=axis)


def _scatter(a: np.ndarray, index: np.ndarray, axis: int, n: int) -> np.ndarray:
    """``a`` placed at ``index`` along ``axis`` of length ``n``, zeros elsewhere."""
    if index.size == n:
        return a
    shape = list(a.shape)
    shape[axis] = n
    out = np.zeros(shape, dtype=a.dtype)
    at: list[slice | np.ndarray] = [slice(None)] * a.ndim
    at[axis] = index
    out[tuple(at)] = a
    return out


def band_filter_box(
    image: np.ndarray, axes: tuple[int, ...], band: tuple[tuple[np.ndarray, ...], np.ndarray], box: tuple[slice, ...]
) -> np.ndarray:
    """``fourier_filter`` of ``image`` (periodic, no padding) by a transfer function that is zero off ``band``
    (``simoncelli_band``), returned in ``box`` only: the one-dimensional transforms run axis by axis, the
    forward ones only over the band's lines, the inverse ones only over the box's lines (single precision)."""
    from scipy import fft

    keep, transfer = band
    last = axes[-1]
    n_last = image.shape[last]
    inside = tuple(slice(None) if ax in axes else box[ax] for ax in range(image.ndim))
    spectrum = _gather(fft.rfft(image[inside].astype(np.float32, copy=False), axis=last), keep[-1], last)
    for ax, k in zip(axes[-2::-1], keep[-2::-1], strict=True):
        spectrum = _gather(fft.fft(spectrum, axis=ax, overwrite_x=True), k, ax)
    spectrum *= transfer
    for ax, k in zip(axes[:-1], keep[:-1], strict=True):
        spectrum = fft.ifft(_scatter(spectrum, k, ax, image.shape[ax]), axis=ax, overwrite_x=True)
        spectrum = spectrum[tuple(box[ax] if a == ax else slice(None) for a in range(image.ndim))]
    out = fft.irfft(_scatter(spectrum, keep[-1], last, n_last // 2 + 1), n=n_last, axis=last)
    return out[tuple(box[last] if a == last else slice(None) for a in range(image.ndim))].astype(np.float64)


@functools.lru_cache(maxsize=8)
def riesz_half(shape: tuple[int, ...], axes: tuple[int, ...], order: tuple[int, ...]) -> np.ndarray:
    """``half_spectrum`` of ``riesz_transfer``, cached per shape (read-only)."""
    return half_spectrum(riesz_transfer(shape, axes, order), axes)


def half_spectrum(transfer: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The part of ``transfer`` that the real part of a real image's filtering sees, (T(w) + conj T(-w)) / 2, on
    ``rfftn``'s half grid: the real part of ``ifftn(fftn(x) * T)`` is ``irfftn(rfftn(x) * half)``, at half the
    cost. (The IBSI 2 frequency grid is not symmetric, so T itself is not Hermitian.)"""
    mirrored = np.roll(np.flip(transfer, axes), 1, axes)
    half = (transfer + np.conj(mirrored)) / 2.0
    keep = [slice(None)] * transfer.ndim
    keep[axes[-1]] = slice(0, transfer.shape[axes[-1]] // 2 + 1)
    out = np.ascontiguousarray(half[tuple(keep)])
    out.flags.writeable = False
    return out


def fourier_filter(image: np.ndarray, spec: dict[str, Any], half: np.ndarray, margin: int) -> np.ndarray:
    """Real part of ``image`` filtered by a transfer function (``half``: its ``half_spectrum`` for the padded
    shape) after padding ``margin``."""
    from scipy import fft

    axes = filter_axes(spec)
    lo = [margin if ax in axes else 0 for ax in range(image.ndim)]
    padded = image
    if margin:
        hi = [padded_size(n, margin) - n - margin if ax in axes else 0 for ax, n in enumerate(image.shape)]
        padded = padded_box(image, tuple(-w for w in lo), tuple(n + w for n, w in zip(image.shape, hi, strict=True)),
                            spec["boundary"])  # fmt: skip
    shape = tuple(padded.shape[ax] for ax in axes)
    # single precision: the transforms cost half, and the response keeps ~7 significant digits
    spectrum = fft.rfftn(padded.astype(np.float32, copy=False), axes=axes)
    spectrum *= half.astype(np.complex64 if np.iscomplexobj(half) else np.float32, copy=False)
    out = fft.irfftn(spectrum, s=shape, axes=axes)
    return out[tuple(slice(w, w + n) for w, n in zip(lo, image.shape, strict=True))].astype(np.float64)


def padded_size(n: int, margin: int) -> int:
    """Length of an axis of ``n`` voxels padded by at least ``margin`` on both sides, rounded up to a size the FFT
    is fast for (the extra voxels go to the far side)."""
    from scipy import fft

    return int(fft.next_fast_len(n + 2 * margin, real=True))

"""IBSI 2 boundary conditions: padding by index mapping, so that a crop of an image carries exactly the values a
filter of the whole image would see (real neighbours inside the image, the boundary rule outside it)."""

from __future__ import annotations

import numpy as np

#: IBSI 2 boundary condition -> scipy.ndimage mode
SCIPY_MODE = {"constant": "constant", "nearest": "nearest", "periodic": "wrap", "mirror": "reflect"}


def axis_index(start: int, stop: int, n: int, boundary: str) -> np.ndarray:
    """Source indices of positions ``start`` .. ``stop - 1`` along an axis of length ``n``; -1 where the position
    lies outside the image under the constant (zero) boundary."""
    idx = np.arange(start, stop)
    if boundary == "periodic":
        return idx % n
    if boundary == "nearest":
        return np.clip(idx, 0, n - 1)
    if boundary == "mirror":
        m = idx % (2 * n)
        return np.where(m >= n, 2 * n - 1 - m, m)
    return np.where((idx >= 0) & (idx < n), idx, -1)


def padded_box(image: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...], boundary: str) -> np.ndarray:
    """``image[lo:hi]`` for a box that may reach outside the image, filled by the boundary condition.

    Parameters
    ----------
    image : array of any dimension
    lo, hi : first and one-past-last index per axis (may be negative or beyond the shape)
    boundary : ``constant`` (zero), ``nearest``, ``periodic`` or ``mirror`` (edge voxel repeated: d c b a | a b c d)
    """
    indices = [axis_index(a, b, n, boundary) for a, b, n in zip(lo, hi, image.shape, strict=True)]
    if boundary != "constant":
        return image[np.ix_(*indices)]
    inside = [i >= 0 for i in indices]
    out = np.zeros(tuple(len(i) for i in indices), dtype=image.dtype)
    sub = image[np.ix_(*[i[m] for i, m in zip(indices, inside, strict=True)])]
    out[np.ix_(*[np.flatnonzero(m) for m in inside])] = sub
    return out


def pad(image: np.ndarray, margin: tuple[int, ...], boundary: str) -> np.ndarray:
    """``image`` padded by ``margin`` voxels on both sides of each axis under ``boundary``."""
    lo = tuple(-m for m in margin)
    hi = tuple(n + m for n, m in zip(image.shape, margin, strict=True))
    return padded_box(image, lo, hi, boundary)

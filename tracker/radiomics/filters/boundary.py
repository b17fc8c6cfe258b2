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


def padded_box(
    image: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...], boundary: str, dtype: type | None = None
) -> np.ndarray:
    """``image[lo:hi]`` for a box that may reach outside the image, filled by the boundary condition (a new array).

    Parameters
    ----------
    image : array of any dimension
    lo, hi : first and one-past-last index per axis (may be negative or beyond the shape)
    boundary : ``constant`` (zero), ``nearest``, ``periodic`` or ``mirror`` (edge voxel repeated: d c b a | a b c d)
    dtype : the output's type (default: the image's); the part of the image the box reads is cast first
    """
    indices = [axis_index(a, b, n, boundary) for a, b, n in zip(lo, hi, image.shape, strict=True)]
    if any(not (i >= 0).any() for i in indices):
        return np.zeros(tuple(len(i) for i in indices), dtype=dtype or image.dtype)
    used = tuple(slice(int(i[i >= 0].min()), int(i.max()) + 1) for i in indices)
    out = image[used].astype(dtype or image.dtype)
    # one axis at a time: whole slabs first, single voxels last, each gather on what is left
    for ax, (idx, part) in enumerate(zip(indices, used, strict=True)):
        outside = idx < 0
        local = np.where(outside, 0, idx - part.start)
        if local.size != out.shape[ax] or not np.array_equal(local, np.arange(local.size)):
            out = np.take(out, local, axis=ax)
        if outside.any():
            zero: list[slice | np.ndarray] = [slice(None)] * out.ndim
            zero[ax] = outside
            out[tuple(zero)] = 0
    return out


def pad(image: np.ndarray, margin: tuple[int, ...], boundary: str) -> np.ndarray:
    """``image`` padded by ``margin`` voxels on both sides of each axis under ``boundary``."""
    lo = tuple(-m for m in margin)
    hi = tuple(n + m for n, m in zip(image.shape, margin, strict=True))
    return padded_box(image, lo, hi, boundary)

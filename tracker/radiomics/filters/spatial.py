"""IBSI 2 spatial filters: mean, Laplacian of Gaussian, Laws kernels (with energy maps) and Gabor.

Every function takes a float64 (z, y, x) volume, its (z, y, x) spacing in mm and a filter spec (the validated
``filter:`` section of a radiomics config) and returns the response map of the whole volume under the spec's
boundary condition. In ``2D`` mode the filter runs in each axial (y, x) slice.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from tracker.radiomics.filters.boundary import SCIPY_MODE, pad
from tracker.radiomics.filters.rotations import ROTATIONS_2D, ROTATIONS_3D, Rotation, axis_maps

# Laws 1D kernels, normalised to unit length as in the IBSI 2 manual
LAWS_KERNELS: dict[str, np.ndarray] = {
    "L3": np.array([1.0, 2.0, 1.0]) / math.sqrt(6.0),
    "E3": np.array([-1.0, 0.0, 1.0]) / math.sqrt(2.0),
    "S3": np.array([-1.0, 2.0, -1.0]) / math.sqrt(6.0),
    "L5": np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / math.sqrt(70.0),
    "E5": np.array([-1.0, -2.0, 0.0, 2.0, 1.0]) / math.sqrt(10.0),
    "S5": np.array([-1.0, 0.0, 2.0, 0.0, -1.0]) / math.sqrt(6.0),
    "W5": np.array([-1.0, 2.0, 0.0, -2.0, 1.0]) / math.sqrt(10.0),
    "R5": np.array([1.0, -4.0, 6.0, -4.0, 1.0]) / math.sqrt(70.0),
}
_LAWS_PART = re.compile(r"[LESWR][35]")


def filter_axes(spec: dict[str, Any]) -> tuple[int, ...]:
    """Array axes a filter runs along: (1, 2) in 2D (y, x of each slice), (0, 1, 2) in 3D."""
    return (1, 2) if spec["mode"] == "2D" else (0, 1, 2)


def mean_filter(image: np.ndarray, spacing: tuple[float, ...], spec: dict[str, Any]) -> np.ndarray:
    """Mean over a cube (square in 2D) of ``support`` voxels per side."""
    from scipy import ndimage

    size = [1, 1, 1]
    for ax in filter_axes(spec):
        size[ax] = int(spec["support"])
    return ndimage.uniform_filter(image, size=size, mode=SCIPY_MODE[spec["boundary"]])


def log_filter(image: np.ndarray, spacing: tuple[float, ...], spec: dict[str, Any]) -> np.ndarray:
    """Laplacian of Gaussian, scale ``sigma_mm``, kernel cut at ``truncate`` standard deviations.

    The sum over axes of the second derivative along one axis and the Gaussian along the others, with the
    passes they share computed once (7 one-dimensional passes in 3D instead of 9; they commute, so the same
    response)."""
    from scipy import ndimage

    axes = filter_axes(spec)
    mode = SCIPY_MODE[spec["boundary"]]
    sigma = [float(spec["sigma_mm"]) / float(s) for s in spacing]

    def gauss(a: np.ndarray, ax: int, order: int) -> np.ndarray:
        return ndimage.gaussian_filter1d(a, sigma[ax], axis=ax, order=order, mode=mode, truncate=spec["truncate"])

    # with axes (..., a, b), b the last: d2_b G_a + G_b d2_a, then over each earlier axis c:
    # result = d2_c (G_a G_b x) + G_c (result so far)
    b = axes[-1]
    smooth = gauss(image, b, 0)
    out = gauss(image, b, 2)
    for ax in reversed(axes[:-1]):
        out = gauss(out, ax, 0) + gauss(smooth, ax, 2)
        smooth = gauss(smooth, ax, 0) if ax != axes[0] else smooth
    return np.asarray(out, dtype=np.float64)


def laws_kernels(name: str, n_axes: int) -> list[np.ndarray]:
    """The 1D kernels of a Laws combination such as ``E5L5S5``: the first along x, then y, then z."""
    parts = _LAWS_PART.findall(name)
    if "".join(parts) != name or len(parts) != n_axes:
        raise ValueError(f"Laws kernel '{name}': expected {n_axes} of L3 E3 S3 L5 E5 S5 W5 R5, e.g. E5L5S5")
    return [LAWS_KERNELS[p] for p in parts]


def _rotated_kernel_sets(kernels: dict[int, np.ndarray], rotations: list[Rotation]) -> list[tuple[dict, list[int]]]:
    """The distinct separable kernels that the right-angle ``rotations`` of an odd-length separable kernel
    (``kernels``: array axis -> 1D kernel) give, each with the signs it appears with.

    A rotation permutes the axes and reverses some; a reversed symmetric kernel is itself, a reversed
    antisymmetric one its negative. Pooling over these is pooling over the rotated images, at a fraction of
    the cost (E5L5S5: 6 kernels instead of 24 rotations).
    """
    groups: dict[tuple, tuple[dict, list[int]]] = {}
    for mapping in axis_maps(rotations):
        placed: dict[int, np.ndarray] = {}
        sign = 1
        for ax in kernels:
            src, reverse = mapping[ax]
            k = kernels[src][::-1] if reverse else kernels[src]
            if reverse and np.array_equal(k, -kernels[src]):
                k, sign = kernels[src], -sign
            placed[ax] = k
        key = tuple((ax, placed[ax].tobytes()) for ax in sorted(placed))
        groups.setdefault(key, (placed, []))[1].append(sign)
    return list(groups.values())


def laws_filter(image: np.ndarray, spacing: tuple[float, ...], spec: dict[str, Any]) -> np.ndarray:
    """Laws kernel response, optionally pooled over right-angle rotations, optionally as an energy map."""
    from scipy import ndimage

    axes = filter_axes(spec)
    mode = SCIPY_MODE[spec["boundary"]]
    # kernel i runs along x, y, z: array axes 2, 1, 0
    kernels = dict(zip(sorted(axes, reverse=True), laws_kernels(spec["kernel"], len(axes)), strict=True))

    def response(a: np.ndarray, placed: dict[int, np.ndarray]) -> np.ndarray:
        for ax, k in placed.items():
            a = ndimage.convolve1d(a, k, axis=ax, mode=mode)
        return a

    if spec["rotation_invariant"]:
        rotations = ROTATIONS_2D if spec["mode"] == "2D" else ROTATIONS_3D
        out: np.ndarray | None = None
        for placed, signs in _rotated_kernel_sets(kernels, rotations):
            r = response(image, placed)
            if spec["pooling"] == "max":
                r = np.abs(r) if min(signs) < 0 < max(signs) else r * signs[0]
                out = r if out is None else np.maximum(out, r)
            else:
                r *= sum(signs) / len(rotations)
                out = r if out is None else out + r
        assert out is not None
    else:
        out = response(image, kernels)
    if spec.get("energy_distance") is not None:
        size = [1, 1, 1]
        for ax in axes:
            size[ax] = 2 * int(spec["energy_distance"]) + 1
        out = ndimage.uniform_filter(np.abs(out), size=size, mode=mode)
    return out


def gabor_kernel(
    sigma: float, wavelength: float, gamma: float, theta: float, spacing: tuple[float, float]
) -> np.ndarray:
    """Complex 2D Gabor kernel on a (y, x) grid of ``spacing`` mm (IBSI 2: axes rotated by ``theta``)."""
    # the Gaussian envelope's widest axis is sigma / min(gamma, 1); cut at 4 of those
    reach = 4.0 * sigma / min(gamma, 1.0)
    ry, rx = (math.floor(reach / s + 0.5) for s in spacing)
    y, x = np.mgrid[-ry : ry + 1, -rx : rx + 1].astype(np.float64)
    y *= spacing[0]
    x *= spacing[1]
    xt = x * math.cos(theta) + y * math.sin(theta)
    yt = -x * math.sin(theta) + y * math.cos(theta)
    envelope = np.exp(-(xt**2 + (gamma * yt) ** 2) / (2.0 * sigma**2))
    return envelope * np.exp(1j * 2.0 * math.pi * xt / wavelength)


def _gabor_planes(
    image: np.ndarray, spacing: tuple[float, float], spec: dict[str, Any], thetas: list[float], margin: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """Mean modulus over ``thetas`` of the Gabor response in every (axis 1, axis 2) plane of ``image``.

    ``margin`` voxels at each in-plane edge are context only: the response is returned from the first voxel the
    kernel can reach without more padding (its position in ``image`` is the second value returned). The kernel's
    extent does not depend on theta, so the padded image is transformed once for all orientations.
    """
    from scipy import fft

    kernels = [gabor_kernel(spec["sigma_mm"], spec["wavelength_mm"], spec["gamma"], t, spacing) for t in thetas]
    ky, kx = kernels[0].shape
    py, px = max(0, ky // 2 - margin[0]), max(0, kx // 2 - margin[1])
    padded = pad(image, (0, py, px), spec["boundary"])
    ny, nx = padded.shape[1] - ky + 1, padded.shape[2] - kx + 1  # the "valid" part of the convolution
    shape = (fft.next_fast_len(padded.shape[1]), fft.next_fast_len(padded.shape[2]))
    spectrum = fft.fft2(padded, s=shape, axes=(1, 2))
    out = np.zeros((image.shape[0], ny, nx), dtype=np.float64)
    for kernel in kernels:
        # a circular convolution of the transform's size is exact on the valid part
        full = fft.ifft2(spectrum * fft.fft2(kernel, s=shape)[None], axes=(1, 2))
        out += np.abs(full[:, ky - 1 : ky - 1 + ny, kx - 1 : kx - 1 + nx])
    return out / len(thetas), (ky // 2 - py, kx // 2 - px)


def gabor_filter(
    image: np.ndarray, spacing: tuple[float, ...], spec: dict[str, Any], margin: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """Modulus of the Gabor response in the axial plane; rotation invariant: averaged over ``theta_step_deg``
    orientations and, with ``orthogonal_planes``, over the axial, coronal and sagittal planes.

    Voxels within ``margin`` of the volume's edges are context only (their response is not computed).
    """
    if spec["rotation_invariant"]:
        step = math.radians(spec["theta_step_deg"])
        # the modulus at theta + pi equals that at theta (the kernel is conjugated), so half a turn suffices
        thetas = [k * step for k in range(round(math.pi / step))]
    else:
        thetas = [math.radians(spec["theta_deg"])]
    planes = [(0, 1, 2)]
    if spec["mode"] == "3D" and spec["orthogonal_planes"]:
        planes += [(1, 0, 2), (2, 0, 1)]
    out = np.zeros(image.shape, dtype=np.float64)
    for normal, a, b in planes:
        # only the slices inside the margin along the plane's normal are needed
        moved = np.transpose(image, (normal, a, b))[margin[normal] : image.shape[normal] - margin[normal]]
        sp = (float(spacing[a]), float(spacing[b]))
        plane, (oa, ob) = _gabor_planes(np.ascontiguousarray(moved), sp, spec, thetas, (margin[a], margin[b]))
        view = np.transpose(out, (normal, a, b))
        view[
            margin[normal] : image.shape[normal] - margin[normal], oa : oa + plane.shape[1], ob : ob + plane.shape[2]
        ] += plane
    return out / len(planes)

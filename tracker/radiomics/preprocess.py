"""IBSI 1 image processing: normalisation, resampling, rounding, mask threshold, re-segmentation, bins.

All arrays are (z, y, x); spacings are (z, y, x) in mm. The image is cropped to the ROI's bounding box plus a
margin before interpolation, so that small lesions in large scans stay cheap; the crop does not change the
IBSI grid (the new grid is defined over the whole image, with grid centres aligned, IBSI manual 2.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracker.errors import MetatrackError
from tracker.harmonisation import zscore_stats

#: radius (mm) of the 1 cm³ sphere used by the local intensity features
PEAK_RADIUS_MM = (3.0 / (4.0 * math.pi) * 1000.0) ** (1.0 / 3.0)
_SPLINE_ORDER = {"nearest": 0, "linear": 1, "cubic": 3}
# extra source voxels kept around the crop so that the cubic spline prefilter sees the same data as on the
# whole image (its influence decays as 0.268^n: < 1e-7 after 12 voxels)
_PREFILTER_PAD = 12
# tolerance for deciding that n * s_a / s_b is a whole number of voxels
_GRID_EPS = 1e-6


@dataclass
class Prepared:
    """The ROI after IBSI image processing.

    Attributes
    ----------
    image : float64 array on the (possibly resampled) grid, cropped around the ROI
    morph_mask : morphological mask (after interpolation and partial-volume threshold)
    int_mask : intensity mask (morph_mask after re-segmentation)
    spacing : (z, y, x) mm of the grid
    """

    image: np.ndarray
    morph_mask: np.ndarray
    int_mask: np.ndarray
    spacing: tuple[float, float, float]


def grid_axis(n_a: int, s_a: float, s_b: float | None) -> tuple[int, float, float]:
    """New grid along one axis: (n_b, offset, step) so that new index j sits at old index offset + j * step.

    The number of new voxels is ceil(n_a s_a / s_b); the grids share their centre (IBSI manual 2.4).
    """
    if s_b is None or math.isclose(s_a, s_b, rel_tol=1e-9):
        return n_a, 0.0, 1.0
    n_b = math.ceil(n_a * s_a / s_b - _GRID_EPS)
    step = s_b / s_a
    offset = ((n_a - 1) - (n_b - 1) * step) / 2.0
    return n_b, offset, step


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive index bounds of the non-zero voxels (by projections: cheap on whole-body volumes)."""
    lo, hi = [], []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        lo.append(hit[0])
        hi.append(hit[-1])
    return np.array(lo), np.array(hi)


def prepare(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, ...],
    cfg: dict[str, Any],
    body_mask: np.ndarray | None = None,
) -> Prepared:
    """Apply the configuration's image processing to ``image`` within ``mask``.

    Parameters
    ----------
    image, mask : (z, y, x) arrays of the same shape; ``mask`` is boolean (non-zero = ROI)
    spacing : (z, y, x) voxel size in mm
    cfg : validated configuration (``load_config``)
    body_mask : optional (z, y, x) boolean mask of the body; z-score normalisation takes its mean and SD there
        (over the whole image when None)
    """
    img = np.asarray(image)
    roi = np.asarray(mask).astype(bool, copy=False)
    # work in float64 on the crop only; z-score statistics come from the body (or the whole image)
    shift, scale = 0.0, 1.0
    if cfg["normalisation"] == "zscore":
        ref = img if body_mask is None else img[body_mask]
        where = "whole image" if body_mask is None else "body mask"
        shift, scale = zscore_stats(ref, f"radiomics z-score: intensities in the {where}")

    def crop(sl: tuple[slice, ...]) -> np.ndarray:
        return (img[sl].astype(np.float64) - shift) / scale

    lo, hi = bounding_box(roi)
    res = cfg["resampling"]
    new_spacing = res["spacing"] if res is not None else [None, None, None]
    grids = [grid_axis(img.shape[ax], float(spacing[ax]), new_spacing[ax]) for ax in range(3)]
    # a filter's response in the ROI needs its kernel's reach of real neighbours on the new grid
    reach = (0, 0, 0)
    if cfg.get("filter") is not None:
        from tracker.radiomics.filters import filter_margin

        reach = filter_margin(cfg["filter"], tuple(float(spacing[ax]) * grids[ax][2] for ax in range(3)))
    shape_b, offsets, steps, starts, stops = [], [], [], [], []
    for ax in range(3):
        n_b, off, step = grids[ax]
        s_b = float(spacing[ax]) * step
        margin = math.ceil(PEAK_RADIUS_MM / s_b) + 1 + reach[ax]
        j_lo = max(0, math.floor((lo[ax] - 1 - off) / step) - margin)
        j_hi = min(n_b - 1, math.ceil((hi[ax] + 1 - off) / step) + margin)
        shape_b.append(n_b)
        offsets.append(off)
        steps.append(step)
        starts.append(j_lo)
        stops.append(j_hi + 1)
    out_spacing = (float(spacing[0]) * steps[0], float(spacing[1]) * steps[1], float(spacing[2]) * steps[2])
    if res is None or all(s == 1.0 and o == 0.0 for s, o in zip(steps, offsets, strict=True)):
        sl = tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))
        grid_img, grid_mask = crop(sl), roi[sl].copy()
    else:
        order = _SPLINE_ORDER[res["interpolator"]]
        m_order = _SPLINE_ORDER[res["mask_interpolator"]]
        pad = _PREFILTER_PAD if order > 1 or m_order > 1 else 2
        src_sl, local_off = [], []
        for ax in range(3):
            c0 = offsets[ax] + starts[ax] * steps[ax]
            c1 = offsets[ax] + (stops[ax] - 1) * steps[ax]
            a = max(0, math.floor(c0) - pad)
            b = min(img.shape[ax], math.ceil(c1) + pad + 1)
            src_sl.append(slice(a, b))
            local_off.append(c0 - a)
        src_sl_t = tuple(src_sl)
        out_shape = tuple(b - a for a, b in zip(starts, stops, strict=True))
        grid_img = resample(crop(src_sl_t), local_off, steps, out_shape, order)
        pv = resample_mask(roi[src_sl_t], local_off, steps, out_shape, m_order)
        grid_mask = pv >= res["mask_threshold"] - 1e-9
    if cfg["round_intensities"]:
        grid_img = np.round(grid_img)
    int_mask = resegment(grid_img, grid_mask, cfg["resegmentation"])
    return Prepared(grid_img, grid_mask, int_mask, out_spacing)


def _axis_taps(n_in: int, n_out: int, offset: float, step: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, (n_out, order + 1) each, of a 1-D B-spline interpolation of order 1 or 3 at
    positions ``offset + j * step``, as ``ndimage.affine_transform`` with mode ``nearest`` takes them (linear
    clamps the position into the axis; cubic reads coefficients of an edge-padded axis, see ``axis_matrix``)."""
    c = offset + step * np.arange(n_out)
    if order == 1:
        c = np.clip(c, 0.0, n_in - 1.0)
        first = np.clip(np.floor(c).astype(np.intp), 0, max(n_in - 2, 0))
        t = c - first
        weights = np.stack([1.0 - t, t], axis=1)
        index = np.stack([first, first + 1], axis=1)
    else:
        first = np.floor(c).astype(np.intp)
        t = c - first
        u = 1.0 - t
        t2, t3 = t * t, t * t * t
        weights = np.stack([u * u * u, 4.0 - 6.0 * t2 + 3.0 * t3, 1.0 + 3.0 * (t + t2 - t3), t3], axis=1) / 6.0
        index = first[:, None] + np.arange(-1, 3)[None, :]
    return np.clip(index, 0, n_in - 1), weights


def axis_matrix(n_in: int, n_out: int, offset: float, step: float, order: int) -> np.ndarray:
    """The (n_out, n_in) matrix of a 1-D spline interpolation (order 1 or 3, edge values extended) at positions
    ``offset + j * step``: for cubic, the prefilter of the axis padded by ``_PREFILTER_PAD`` edge voxels (as scipy
    pads for mode ``nearest``) and the four taps, folded into one linear map."""
    from scipy import ndimage

    if order == 1:
        index, weights = _axis_taps(n_in, n_out, offset, step, 1)
        out = np.zeros((n_out, n_in))
        np.add.at(out, (np.arange(n_out)[:, None], index), weights)
        return out
    pad = _PREFILTER_PAD
    n_pad = n_in + 2 * pad
    source = np.clip(np.arange(n_pad) - pad, 0, n_in - 1)
    # column j of the prefilter of the identity: the spline coefficients of a unit impulse at padded index j
    prefilter = ndimage.spline_filter1d(np.eye(n_pad), 3, axis=0, output=np.float64, mode="nearest")
    index, weights = _axis_taps(n_pad, n_out, offset + pad, step, 3)
    taps = np.zeros((n_out, n_pad))
    np.add.at(taps, (np.arange(n_out)[:, None], index), weights)
    padded = taps @ prefilter
    out = np.zeros((n_out, n_in))
    np.add.at(out.T, source, padded.T)  # the padded voxels are copies of the edge voxels
    # the prefilter's influence decays as 0.268^k: drop what cannot change a float64 sum
    out[np.abs(out) < 1e-18 * np.abs(out).max()] = 0.0
    return out


def _along_axis(a: np.ndarray, m: np.ndarray, ax: int) -> np.ndarray:
    """``a`` with axis ``ax`` mapped by the matrix ``m`` (new[j] = sum_i m[j, i] a[i]), in blocks of output rows
    over the columns each block uses (the interpolation matrices are banded)."""
    shape = list(a.shape)
    shape[ax] = m.shape[0]
    out = np.empty(shape)
    block = 16 if m.shape[1] > 64 else m.shape[0]
    for j0 in range(0, m.shape[0], block):
        rows = m[j0 : j0 + block]
        used = np.flatnonzero(rows.any(axis=0))
        i0, i1 = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
        rows = rows[:, i0:i1]
        if ax == 0:
            part = a[i0:i1].reshape(i1 - i0, -1)
            out[j0 : j0 + rows.shape[0]] = (rows @ part).reshape(rows.shape[0], *a.shape[1:])
        elif ax == a.ndim - 1:
            out[..., j0 : j0 + rows.shape[0]] = a[..., i0:i1] @ rows.T
        else:
            moved = np.moveaxis(a, ax, -2)[..., i0:i1, :]
            np.moveaxis(out, ax, -2)[..., j0 : j0 + rows.shape[0], :] = rows @ moved
    return out


def resample(
    image: np.ndarray, offsets: list[float], steps: list[float], out_shape: tuple[int, ...], order: int
) -> np.ndarray:
    """``image`` interpolated at index ``offsets[ax] + j * steps[ax]`` along each axis (spline ``order`` 0, 1 or
    3, edge values extended): ``ndimage.affine_transform`` with a diagonal matrix and mode ``nearest`` (equal to
    ~1e-14), computed as one matrix product per axis (``axis_matrix``: the B-spline and its prefilter are tensor
    products) instead of 4^3 taps per voxel after a prefilter of the padded volume.

    An axis with step 1 and a whole-number offset inside the image is only cut (a spline reproduces its nodes).
    """
    from scipy import ndimage

    if order == 0:
        return ndimage.affine_transform(
            image, np.diag(steps), offset=offsets, output_shape=out_shape, order=0, mode="nearest"
        )
    out = np.asarray(image, dtype=np.float64)
    moving, cut = [], []
    for ax in range(out.ndim):
        first = round(offsets[ax])
        if steps[ax] == 1.0 and offsets[ax] == first and 0 <= first <= out.shape[ax] - out_shape[ax]:
            cut.append(slice(first, first + out_shape[ax]))
        else:
            moving.append(ax)
            cut.append(slice(None))
    out = out[tuple(cut)]
    # the most shrinking axis first: the later products run on less data
    for ax in sorted(moving, key=lambda a: out_shape[a] / image.shape[a]):
        out = _along_axis(out, axis_matrix(out.shape[ax], out_shape[ax], offsets[ax], steps[ax], order), ax)
    return np.ascontiguousarray(out)


def resample_mask(
    mask: np.ndarray, offsets: list[float], steps: list[float], out_shape: tuple[int, ...], order: int
) -> np.ndarray:
    """``resample`` of a boolean mask (as float64 partial volumes); linear: only the new voxels whose taps reach
    the mask's bounding box are interpolated (the others are 0; a cubic spline reaches further, and nearest
    neighbours' ties could round the other way on a shifted grid)."""
    if order != 1 or not mask.any():
        return resample(mask.astype(np.float64), offsets, steps, out_shape, order)
    lo, hi = bounding_box(mask)
    out = np.zeros(out_shape)
    src, dst, offs = [], [], []
    for ax in range(mask.ndim):
        # new voxels at positions within one voxel of the box (or beyond the image's edge the box touches: the
        # edge voxel extends), and the source voxels their taps read
        j0 = 0 if lo[ax] == 0 else max(0, math.floor((lo[ax] - 1 - offsets[ax]) / steps[ax]))
        j1 = out_shape[ax] if hi[ax] == mask.shape[ax] - 1 else math.ceil((hi[ax] + 1 - offsets[ax]) / steps[ax]) + 1
        j1 = max(min(j1, out_shape[ax]), j0)
        a = max(0, int(lo[ax]) - 1)
        b = min(mask.shape[ax], int(hi[ax]) + 2)
        src.append(slice(a, b))
        dst.append(slice(j0, j1))
        offs.append(offsets[ax] + j0 * steps[ax] - a)
    shape = tuple(d.stop - d.start for d in dst)
    if all(shape):
        out[tuple(dst)] = resample(mask[tuple(src)].astype(np.float64), offs, steps, shape, order)
    return out


def filtered(prep: Prepared, spec: dict[str, Any], families: list[str] | None = None) -> Prepared:
    """``prep`` cut to its ROI's box, its image replaced by the response map of the ``filter:`` section ``spec``
    (IBSI 2 phase 2: the filter runs on the interpolated, rounded image; the masks, re-segmented on the
    unfiltered intensities, are kept). With ``loc`` among the ``families`` the box keeps the local peak's margin.

    ``prepare`` kept the filter's reach of real neighbours around the ROI, so the response in the ROI is that of
    the whole image (see ``filters.response_in_box``), except near the image's edges with a periodic boundary
    (the crop wraps, not the image) or a wavelet of level >= 2.
    """
    from tracker.radiomics.filters import apply_filter, response_in_box

    if not prep.morph_mask.any():
        return Prepared(apply_filter(prep.image, prep.spacing, spec), prep.morph_mask, prep.int_mask, prep.spacing)
    first, last = bounding_box(prep.morph_mask)
    keep = [math.ceil(PEAK_RADIUS_MM / s) + 1 if families and "loc" in families else 1 for s in prep.spacing]
    lo = tuple(max(0, int(a) - k) for a, k in zip(first, keep, strict=True))
    hi = tuple(min(n, int(b) + 1 + k) for b, k, n in zip(last, keep, prep.image.shape, strict=True))
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    response = response_in_box(prep.image, prep.spacing, spec, lo, hi)
    return Prepared(response, prep.morph_mask[sl], prep.int_mask[sl], prep.spacing)


def resegment(image: np.ndarray, mask: np.ndarray, reseg: dict[str, Any]) -> np.ndarray:
    """Intensity mask: ``mask`` restricted to the range, then to mean ± k SD of what is left (IBSI 2.6)."""
    out = mask.copy()
    rng = reseg.get("range")
    if rng is not None:
        if rng[0] is not None:
            out &= image >= rng[0]
        if rng[1] is not None:
            out &= image <= rng[1]
    k = reseg.get("outlier_sd")
    if k is not None and out.any():
        vals = image[out]
        mu, sd = vals.mean(), vals.std()
        out &= (image >= mu - k * sd) & (image <= mu + k * sd)
    return out


def lower_bound(cfg: dict[str, Any], disc: dict[str, Any], values: np.ndarray) -> float:
    """Fixed-bin-size lower bound: explicit, else the re-segmentation range minimum, else the ROI minimum."""
    if disc.get("lower_bound") is not None:
        return float(disc["lower_bound"])
    rng = cfg["resegmentation"]["range"]
    if rng is not None and rng[0] is not None:
        return float(rng[0])
    return float(values.min())


def discretise(values: np.ndarray, disc: dict[str, Any], cfg: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Grey levels 1..n of ``values`` (the ROI intensities) and the number of levels n.

    With method ``none`` the intensities must already be positive integers (e.g. the digital phantom).
    """
    method = disc["method"]
    if values.size == 0:
        return values.astype(np.int64), 1
    if method == "fixed_bin_size":
        levels = np.floor((values - lower_bound(cfg, disc, values)) / disc["bin_width"]).astype(np.int64) + 1
        return levels, int(levels.max())
    if method == "fixed_bin_number":
        n = int(disc["n_bins"])
        vmin, vmax = values.min(), values.max()
        if vmax == vmin:
            return np.ones(values.shape, dtype=np.int64), n
        levels = np.floor(n * (values - vmin) / (vmax - vmin)).astype(np.int64) + 1
        levels[values >= vmax] = n
        return levels, n
    levels = np.round(values).astype(np.int64)
    if levels.min() < 1 or not np.allclose(levels, values):
        raise MetatrackError(
            f"discretisation method 'none' needs positive integer intensities, got range "
            f"[{values.min():g}, {values.max():g}]; use fixed_bin_size or fixed_bin_number"
        )
    return levels, int(levels.max())


def filter_volume(
    image: np.ndarray, spacing: tuple[float, ...], cfg: dict[str, Any]
) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """Response map of a whole volume under a config with a ``filter:`` section, on the config's grid.

    The volume goes through the config's normalisation, resampling and rounding (as ``prepare`` does for an ROI
    covering everything), then the filter.

    Returns
    -------
    response : float64 (z, y, x) array on the new grid
    spacing : (z, y, x) mm of the new grid
    first_index : continuous (z, y, x) index in ``image`` of the new grid's first voxel (its origin)
    """
    spec = cfg.get("filter")
    if spec is None:
        raise MetatrackError(f"radiomics config {cfg.get('name')!r} has no filter: section")
    img = np.asarray(image)
    whole = np.ones(img.shape, dtype=bool)
    res = cfg["resampling"]
    new_spacing = res["spacing"] if res is not None else [None, None, None]
    first = tuple(grid_axis(img.shape[ax], float(spacing[ax]), new_spacing[ax])[1] for ax in range(3))
    prep = filtered(prepare(img, whole, spacing, {**cfg, "filter": None}), spec)
    return prep.image, prep.spacing, (first[0], first[1], first[2])

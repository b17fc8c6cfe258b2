"""Neighbourhood grey tone difference matrix (NGTDM, IBSI family ``ngt``), distance 1.

Neighbours outside the ROI are ignored; voxels without any ROI neighbour do not contribute.
"""

from __future__ import annotations

import warnings

import numpy as np

from tracker.radiomics.texture.aggregate import batch_mean
from tracker.radiomics.texture.neighbourhood import Neighbourhood

PREFIX = "ngt"
DIRECTIONAL = False
FEATURE_NAMES: tuple[str, ...] = ("coarseness", "contrast", "busyness", "complexity", "strength")
# IBSI: coarseness is set to this value when sum(p_i s_i) is 0 (a perfectly homogeneous ROI).
COARSENESS_MAX = 1.0e6


def _neighbour_sums(grid: np.ndarray, mode: str) -> np.ndarray:
    """Sum over the 26 (3D) or 8 in-plane (2D) neighbours of every voxel, zero beyond the array (exact)."""
    out = grid.astype(np.int64)
    for axis in (0, 1, 2) if mode == "3D" else (1, 2):
        shape = list(out.shape)
        shape[axis] += 2
        padded = np.zeros(shape, dtype=out.dtype)
        inner = [slice(None)] * 3
        inner[axis] = slice(1, -1)
        padded[tuple(inner)] = out
        cut = [slice(None)] * 3
        parts = []
        for start in range(3):
            cut[axis] = slice(start, start + grid.shape[axis])
            parts.append(padded[tuple(cut)])
        out = parts[0] + parts[1] + parts[2]
    return out - grid


def ngtdm_matrices(hood: Neighbourhood) -> tuple[np.ndarray, np.ndarray]:
    """Per-group ``(s, n)``, each of shape (n_slices, N_g): summed |i - neighbourhood mean| and counts."""
    n_g, n_s = hood.n_levels, hood.n_groups
    idx = hood.roi_index
    total = _neighbour_sums(hood.level_grid, hood.mode).ravel()[idx]
    count = _neighbour_sums(hood.roi, hood.mode).ravel()[idx]
    has = count > 0
    idx, total, count = idx[has], total[has], count[has]
    lv = hood.level[idx].astype(np.float64)
    diff = np.abs(lv - total.astype(np.float64) / count.astype(np.float64))
    code = hood.group[idx] * n_g + hood.level[idx] - 1
    s = np.bincount(code, weights=diff, minlength=n_s * n_g).reshape(n_s, n_g)
    n = np.bincount(code, minlength=n_s * n_g).reshape(n_s, n_g).astype(np.float64)
    return s, n


def ngtdm_features_from_matrix(s: np.ndarray, n: np.ndarray, levels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """IBSI NGTDM features of a batch of ``(s, n)`` vectors (..., N_g); NaN when no voxel contributes.

    ``levels``: the grey level of each entry when the vectors hold only some levels (default 1..N_g).
    """
    s = np.asarray(s, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    n_g = s.shape[-1]
    lv = np.arange(1, n_g + 1, dtype=np.float64) if levels is None else np.asarray(levels, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        n_vc = n.sum(axis=-1)
        p = n / n_vc[..., None]
        valid = p > 0
        pair = valid[..., :, None] & valid[..., None, :]
        n_gp = valid.sum(axis=-1).astype(np.float64)
        ps = p * s
        sum_ps = ps.sum(axis=-1)
        sum_s = s.sum(axis=-1)
        dlev = lv[:, None] - lv[None, :]
        pi, pj = p[..., :, None], p[..., None, :]
        contrast = (pi * pj * dlev**2 * pair).sum(axis=(-2, -1)) / (n_gp * (n_gp - 1)) * sum_s / n_vc
        ip = lv * p
        busy_den = (np.abs(ip[..., :, None] - ip[..., None, :]) * pair).sum(axis=(-2, -1))
        psi, psj = ps[..., :, None], ps[..., None, :]
        complexity = np.where(pair, np.abs(dlev) * (psi + psj) / (pi + pj), 0.0).sum(axis=(-2, -1)) / n_vc
        strength = ((pi + pj) * dlev**2 * pair).sum(axis=(-2, -1)) / sum_s
        out = {
            "coarseness": np.where(sum_ps > 0, 1.0 / sum_ps, COARSENESS_MAX),
            "contrast": np.where(n_gp > 1, contrast, 0.0),
            "busyness": np.where(busy_den > 0, sum_ps / busy_den, 0.0),
            "complexity": complexity,
            "strength": np.where(sum_s > 0, strength, 0.0),
        }
    empty = n_vc == 0
    return {k: np.where(empty, np.nan, out[k]) for k in FEATURE_NAMES}


def ngtdm_features(hood: Neighbourhood) -> dict[str, float]:
    """All NGTDM tags for the neighbourhood's mode (``ngt_<name>_<suffix>``)."""
    s, n = ngtdm_matrices(hood)
    # levels without a contributing voxel add exact zeros: keep the others (at least one, for the shapes)
    keep = np.flatnonzero(n.any(axis=0))
    if keep.size == 0:
        keep = np.arange(n.shape[-1])
    s, n, levels = s[:, keep], n[:, keep], keep + 1
    if hood.mode == "3D":
        agg = {"3D": {k: float(v[0]) for k, v in ngtdm_features_from_matrix(s, n, levels).items()}}
    else:
        per_slice = ngtdm_features_from_matrix(s, n, levels)
        merged = ngtdm_features_from_matrix(s.sum(axis=0), n.sum(axis=0), levels)
        agg = {
            "2D": {k: batch_mean(v) for k, v in per_slice.items()},
            "2_5D": {k: float(v) for k, v in merged.items()},
        }
    return {f"{PREFIX}_{name}_{sfx}": vals[name] for sfx, vals in agg.items() for name in FEATURE_NAMES}

"""Grey level co-occurrence matrix (GLCM, IBSI family ``cm``): distance 1 (Chebyshev), symmetric."""

from __future__ import annotations

import warnings

import numpy as np

from tracker.radiomics.texture.aggregate import compress, directional_aggregates, entropy
from tracker.radiomics.texture.neighbourhood import Neighbourhood

PREFIX = "cm"
DIRECTIONAL = True
FEATURE_NAMES: tuple[str, ...] = (
    "joint_max",
    "joint_avg",
    "joint_var",
    "joint_entr",
    "diff_avg",
    "diff_var",
    "diff_entr",
    "sum_avg",
    "sum_var",
    "sum_entr",
    "energy",
    "contrast",
    "dissimilarity",
    "inv_diff",
    "inv_diff_norm",
    "inv_diff_mom",
    "inv_diff_mom_norm",
    "inv_var",
    "corr",
    "auto_corr",
    "clust_tend",
    "clust_shade",
    "clust_prom",
    "info_corr1",
    "info_corr2",
)


def glcm_matrices(hood: Neighbourhood) -> np.ndarray:
    """Symmetric co-occurrence counts, shape (n_directions, n_slices, N_g, N_g).

    ``n_slices`` is 1 for a 3D neighbourhood; in 2D each slice has its own matrix.
    """
    n_g, n_s = hood.n_levels, hood.n_groups
    width = n_g + 1  # level 0 (outside the ROI) gets row and column 0, dropped below
    out = np.empty((len(hood.offsets), n_s, n_g, n_g), dtype=np.float64)
    code_type = np.int64 if n_s * width * width >= 2**31 else np.int32
    for d, (la, lb, src, _) in enumerate(hood.neighbour_views()):
        code = la.astype(code_type) * width + lb
        if n_s > 1:  # 2D: in-plane offsets, so both voxels lie in slice z
            z = np.arange(src[0].start, src[0].stop, dtype=code_type)
            code += (z * (width * width))[:, None, None]
        m = np.bincount(code.ravel(), minlength=n_s * width * width).reshape(n_s, width, width)[:, 1:, 1:]
        out[d] = m + m.transpose(0, 2, 1)
    return out


def glcm_features_from_matrix(
    matrix: np.ndarray, levels: np.ndarray | None = None, n_levels: int | None = None
) -> dict[str, np.ndarray]:
    """IBSI GLCM features of a batch of co-occurrence matrices (..., N, N); NaN for empty matrices.

    ``levels``: the grey level of each row/column when the matrices are compressed to the occupied levels
    (``aggregate.compress``), default 1..N; ``n_levels``: N_g of the normalised features, default N.
    """
    m = np.asarray(matrix, dtype=np.float64)
    n_c = m.shape[-1]
    lv = np.arange(1, n_c + 1, dtype=np.float64) if levels is None else np.asarray(levels, dtype=np.float64)
    n_g = n_c if n_levels is None else int(n_levels)
    ax = (-2, -1)
    i, j = lv[:, None], lv[None, :]
    diff_k = np.abs(i - j)
    sum_k = i + j
    k_d = np.arange(n_g, dtype=np.float64)
    sum_vals = np.arange(2, 2 * n_g + 1, dtype=np.float64)
    # |i - j| and i + j of every cell as one-hot columns: the diagonal and cross-diagonal marginals are then one
    # matrix product per batch
    diff_onehot = np.zeros((n_c * n_c, n_g))
    diff_onehot[np.arange(n_c * n_c), diff_k.ravel().astype(np.int64)] = 1.0
    sum_onehot = np.zeros((n_c * n_c, 2 * n_g - 1))
    sum_onehot[np.arange(n_c * n_c), sum_k.ravel().astype(np.int64) - 2] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        total = m.sum(axis=ax)
        p = m / total[..., None, None]
        flat = p.reshape(*p.shape[:-2], n_c * n_c)
        p_diff = flat @ diff_onehot
        p_sum = flat @ sum_onehot
        p_i = p.sum(axis=-1)
        p_j = p.sum(axis=-2)
        mu_i = p_i @ lv
        mu_j = p_j @ lv
        var_i = p_i @ lv**2 - mu_i**2
        var_j = p_j @ lv**2 - mu_j**2
        diff_avg = p_diff @ k_d
        sum_avg = p_sum @ sum_vals
        cluster = sum_k - (mu_i + mu_j)[..., None, None]
        p_cluster2 = p * cluster * cluster
        p_cluster3 = p_cluster2 * cluster
        joint_entr = entropy(p, ax)
        h_x = entropy(p_i, -1)
        outer = p_i[..., :, None] * p_j[..., None, :]
        h_xy1 = -np.where(p > 0, p * np.log2(np.where(outer > 0, outer, 1.0)), 0.0).sum(axis=ax)
        h_xy2 = entropy(outer, ax)
        inv_var_w = np.zeros(n_g)
        inv_var_w[1:] = 1.0 / k_d[1:] ** 2
        auto_corr = (p * (i * j)).sum(axis=ax)
        out = {
            "joint_max": p.max(axis=ax),
            "joint_avg": mu_i,
            "joint_var": (p_i * (lv - mu_i[..., None]) ** 2).sum(axis=-1),
            "joint_entr": joint_entr,
            "diff_avg": diff_avg,
            "diff_var": (p_diff * (k_d - diff_avg[..., None]) ** 2).sum(axis=-1),
            "diff_entr": entropy(p_diff, -1),
            "sum_avg": sum_avg,
            "sum_var": (p_sum * (sum_vals - sum_avg[..., None]) ** 2).sum(axis=-1),
            "sum_entr": entropy(p_sum, -1),
            "energy": (p * p).sum(axis=ax),
            "contrast": p_diff @ k_d**2,
            "dissimilarity": diff_avg,
            "inv_diff": p_diff @ (1.0 / (1.0 + k_d)),
            "inv_diff_norm": p_diff @ (1.0 / (1.0 + k_d / n_g)),
            "inv_diff_mom": p_diff @ (1.0 / (1.0 + k_d**2)),
            "inv_diff_mom_norm": p_diff @ (1.0 / (1.0 + (k_d / n_g) ** 2)),
            "inv_var": p_diff @ inv_var_w,
            "corr": (auto_corr - mu_i * mu_j) / np.sqrt(var_i * var_j),
            "auto_corr": auto_corr,
            "clust_tend": p_cluster2.sum(axis=ax),
            "clust_shade": p_cluster3.sum(axis=ax),
            "clust_prom": (p_cluster3 * cluster).sum(axis=ax),
            "info_corr1": (joint_entr - h_xy1) / h_x,
            "info_corr2": np.sqrt(np.clip(1.0 - np.exp(-2.0 * (h_xy2 - joint_entr)), 0.0, None)),
        }
    empty = total == 0
    return {k: np.where(empty, np.nan, out[k]) for k in FEATURE_NAMES}


def glcm_features(hood: Neighbourhood) -> dict[str, float]:
    """All GLCM tags for the neighbourhood's mode (``cm_<name>_<suffix>``)."""
    matrices, levels, _ = compress(glcm_matrices(hood), symmetric=True)
    agg = directional_aggregates(matrices, lambda m: glcm_features_from_matrix(m, levels, hood.n_levels), hood.mode)
    return {f"{PREFIX}_{name}_{sfx}": vals[name] for sfx, vals in agg.items() for name in FEATURE_NAMES}

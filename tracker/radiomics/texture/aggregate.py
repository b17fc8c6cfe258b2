"""Shared matrix-feature formulas and the IBSI aggregation naming.

All feature functions are vectorised over leading batch axes, so one call evaluates every slice/direction
matrix at once. Undefined values (empty matrices) come out as NaN.
"""

from __future__ import annotations

import warnings

import numpy as np

# Generic names of the features shared by the run-length, size-zone, distance-zone and dependence matrices,
# in IBSI order; each family maps them onto its own IBSI tags.
ZONE_FEATURE_KEYS: tuple[str, ...] = (
    "short",
    "long",
    "low_gl",
    "high_gl",
    "short_low_gl",
    "short_high_gl",
    "long_low_gl",
    "long_high_gl",
    "glnu",
    "glnu_norm",
    "jnu",
    "jnu_norm",
    "perc",
    "gl_var",
    "j_var",
    "j_entr",
    "energy",
)


def entropy(p: np.ndarray, axis: tuple[int, ...] | int) -> np.ndarray:
    """Shannon entropy in bits, ``-sum p log2 p`` over ``axis`` (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=axis)


def zone_matrix_features(
    matrix: np.ndarray,
    n_voxels: np.ndarray | float,
    rows: np.ndarray | None = None,
    cols: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """IBSI features of a grey-level x (run length | zone size | distance | dependence) matrix.

    Parameters
    ----------
    matrix : (..., N_g, N_j) counts; row i is grey level i + 1, column j is length/size/distance j + 1.
    n_voxels : number of voxels N_v the matrix was built from (broadcast over the batch axes).
    rows, cols : the grey level and length/size/distance of each row and column when the matrix is a
        compressed one (``compress``: only the rows and columns that hold counts); default 1..N.

    Returns
    -------
    dict of the generic keys in ``ZONE_FEATURE_KEYS``, each an array of the batch shape.
    """
    m = np.asarray(matrix, dtype=np.float64)
    n_g, n_j = m.shape[-2:]
    i = np.arange(1, n_g + 1, dtype=np.float64) if rows is None else np.asarray(rows, dtype=np.float64)
    j = np.arange(1, n_j + 1, dtype=np.float64) if cols is None else np.asarray(cols, dtype=np.float64)
    i2, j2 = i * i, j * j
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        row = m.sum(axis=-1)
        col = m.sum(axis=-2)
        n_s = row.sum(axis=-1)
        # the weights are products f(i) g(j): matrix-vector products instead of full-matrix passes
        m_short = m @ (1.0 / j2)
        m_long = m @ j2
        p_row = row / n_s[..., None]
        p_col = col / n_s[..., None]
        mu_i = p_row @ i
        mu_j = p_col @ j
        p = m / n_s[..., None, None]
        out = {
            "short": (col @ (1.0 / j2)) / n_s,
            "long": (col @ j2) / n_s,
            "low_gl": (row @ (1.0 / i2)) / n_s,
            "high_gl": (row @ i2) / n_s,
            "short_low_gl": (m_short @ (1.0 / i2)) / n_s,
            "short_high_gl": (m_short @ i2) / n_s,
            "long_low_gl": (m_long @ (1.0 / i2)) / n_s,
            "long_high_gl": (m_long @ i2) / n_s,
            "glnu": (row**2).sum(axis=-1) / n_s,
            "glnu_norm": (row**2).sum(axis=-1) / n_s**2,
            "jnu": (col**2).sum(axis=-1) / n_s,
            "jnu_norm": (col**2).sum(axis=-1) / n_s**2,
            "perc": n_s / np.asarray(n_voxels, dtype=np.float64),
            "gl_var": (p_row * (i - mu_i[..., None]) ** 2).sum(axis=-1),
            "j_var": (p_col * (j - mu_j[..., None]) ** 2).sum(axis=-1),
            "j_entr": entropy(p, (-2, -1)),
            "energy": (p**2).sum(axis=(-2, -1)),
        }
    empty = n_s == 0
    return {k: np.where(empty, np.nan, v) for k, v in out.items()}


def compress(matrices: np.ndarray, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop the rows and columns (last two axes) that are zero in every matrix of the batch.

    Empty rows and columns add exact zeros to every feature sum, so the features of the compressed matrices
    (given the kept rows' and columns' values) equal those of the full ones up to summation order.

    Returns
    -------
    compressed matrices, values (1-based) of the kept rows, values (1-based) of the kept columns. With
    ``symmetric`` (square co-occurrence matrices) rows and columns keep the same set.
    """
    lead = tuple(range(matrices.ndim - 2))
    has_row = matrices.any(axis=(*lead, matrices.ndim - 1))
    has_col = matrices.any(axis=(*lead, matrices.ndim - 2))
    if symmetric:
        has_row = has_col = has_row | has_col
    r, c = np.flatnonzero(has_row), np.flatnonzero(has_col)
    if r.size == 0 or c.size == 0:  # no counts at all: keep the shape (every feature is NaN)
        r, c = np.arange(matrices.shape[-2]), np.arange(matrices.shape[-1])
    return matrices[..., r, :][..., c], r + 1, c + 1


def batch_mean(values: np.ndarray) -> float:
    """Mean over all entries ignoring NaN (undefined slices/directions); NaN when none is defined."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def pad_columns(matrices: list[np.ndarray]) -> np.ndarray:
    """Stack matrices of shape (..., N_g, N_j_k) into one array, zero-padding the last axis."""
    width = max(m.shape[-1] for m in matrices)
    out = np.zeros((len(matrices), *matrices[0].shape[:-1], width), dtype=matrices[0].dtype)
    for k, m in enumerate(matrices):
        out[k, ..., : m.shape[-1]] = m
    return out


def directional_aggregates(matrices: np.ndarray, features, mode: str) -> dict[str, dict[str, float]]:
    """Aggregate per-direction matrices the IBSI way.

    Parameters
    ----------
    matrices : (n_directions, n_slices, ...) matrices; ``n_slices`` is 1 in 3D mode.
    features : callable mapping a batch of matrices (..., matrix dims) to ``{name: array of batch shape}``.
    mode : "2D" (per-slice variants) or "3D".

    Returns
    -------
    ``{suffix: {name: value}}`` with suffixes ``3D_avg, 3D_comb`` or ``2D_avg, 2D_comb, 2_5D_avg, 2_5D_comb``.
    """

    def mean_of(batch: np.ndarray) -> dict[str, float]:
        return {k: batch_mean(v) for k, v in features(batch).items()}

    if mode == "3D":
        return {"3D_avg": mean_of(matrices[:, 0]), "3D_comb": mean_of(matrices[:, 0].sum(axis=0))}
    return {
        "2D_avg": mean_of(matrices),
        "2D_comb": mean_of(matrices.sum(axis=0)),
        "2_5D_avg": mean_of(matrices.sum(axis=1)),
        "2_5D_comb": mean_of(matrices.sum(axis=(0, 1))),
    }


def suffixes_for(mode: str, directional: bool) -> tuple[str, ...]:
    """Aggregation suffixes of the IBSI tags for a family kind and mode."""
    if directional:
        return ("3D_avg", "3D_comb") if mode == "3D" else ("2D_avg", "2D_comb", "2_5D_avg", "2_5D_comb")
    return ("3D",) if mode == "3D" else ("2D", "2_5D")

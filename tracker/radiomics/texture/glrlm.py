"""Grey level run length matrix (GLRLM, IBSI family ``rlm``)."""

from __future__ import annotations

import numpy as np

from tracker.radiomics.texture.aggregate import (
    compress,
    directional_aggregates,
    pad_columns,
    zone_matrix_features,
)
from tracker.radiomics.texture.neighbourhood import Neighbourhood

PREFIX = "rlm"
DIRECTIONAL = True
# IBSI names of the generic zone-matrix features (aggregate.ZONE_FEATURE_KEYS) for run lengths.
NAME_MAP: dict[str, str] = {
    "short": "sre",
    "long": "lre",
    "low_gl": "lgre",
    "high_gl": "hgre",
    "short_low_gl": "srlge",
    "short_high_gl": "srhge",
    "long_low_gl": "lrlge",
    "long_high_gl": "lrhge",
    "glnu": "glnu",
    "glnu_norm": "glnu_norm",
    "jnu": "rlnu",
    "jnu_norm": "rlnu_norm",
    "perc": "r_perc",
    "gl_var": "gl_var",
    "j_var": "rl_var",
    "j_entr": "rl_entr",
}
FEATURE_NAMES: tuple[str, ...] = tuple(NAME_MAP.values())


def _line_sequences(hood: Neighbourhood, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Run values and lengths along offset ``d``: value ``group * N_g + level`` (>= 1) of each run.

    On the flattened grid padded with one empty row along y and x, the voxel after flat index f along the offset
    is f + s with s = o_z A + o_y B + o_x > 0, and a step that leaves the grid lands on padding (or beyond the
    end). So the residue classes of f modulo s, read in order, hold every line along the offset, lines apart by
    at least one empty slot: the columns of the flat array reshaped to (L, s), read column by column after an
    empty first row. Runs are then the maximal stretches of one non-zero value, bounded where the sequence
    changes value.
    """
    flat, stride_z, stride_y = hood.padded_run_values
    oz, oy, ox = hood.offsets[d]
    step = oz * stride_z + oy * stride_y + ox
    rows = -(-(flat.size + step) // step) + 1  # an empty first row, the grid, and at least one empty slot after
    table = np.zeros(rows * step, dtype=flat.dtype)
    table[step : step + flat.size] = flat
    seq = np.ascontiguousarray(table.reshape(rows, step).T).ravel()
    bounds = np.flatnonzero(seq[1:] != seq[:-1])
    lengths = np.diff(bounds)
    values = seq[bounds[:-1] + 1]
    keep = values != 0
    return values[keep], lengths[keep]


def glrlm_matrices(hood: Neighbourhood) -> np.ndarray:
    """Run-length counts, shape (n_directions, n_slices, N_g, max_run_length)."""
    n_g, n_s = hood.n_levels, hood.n_groups
    per_dir = []
    for d in range(len(hood.offsets)):
        values, lengths = _line_sequences(hood, d)
        width = int(lengths.max()) if lengths.size else 1
        code = (values.astype(np.int64) - 1) * width + lengths - 1
        m = np.bincount(code, minlength=n_s * n_g * width).reshape(n_s, n_g, width)
        per_dir.append(m.astype(np.float64))
    return pad_columns(per_dir)


def glrlm_features_from_matrix(
    matrix: np.ndarray, rows: np.ndarray | None = None, cols: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """IBSI GLRLM features of a batch of run-length matrices (..., N_g, N_r).

    ``rows``/``cols``: grey levels and run lengths of a compressed matrix (``aggregate.compress``).
    """
    m = np.asarray(matrix, dtype=np.float64)
    run_len = np.arange(1, m.shape[-1] + 1, dtype=np.float64) if cols is None else np.asarray(cols, np.float64)
    n_voxels = m.sum(axis=-2) @ run_len
    generic = zone_matrix_features(m, n_voxels, rows, cols)
    return {ibsi: generic[key] for key, ibsi in NAME_MAP.items()}


def glrlm_features(hood: Neighbourhood) -> dict[str, float]:
    """All GLRLM tags for the neighbourhood's mode (``rlm_<name>_<suffix>``)."""
    matrices, rows, cols = compress(glrlm_matrices(hood))
    agg = directional_aggregates(matrices, lambda m: glrlm_features_from_matrix(m, rows, cols), hood.mode)
    return {f"{PREFIX}_{name}_{sfx}": vals[name] for sfx, vals in agg.items() for name in FEATURE_NAMES}

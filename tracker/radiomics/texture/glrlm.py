"""Grey level run length matrix (GLRLM, IBSI family ``rlm``)."""

from __future__ import annotations

import numpy as np

from tracker.radiomics.texture.aggregate import directional_aggregates, pad_columns, zone_matrix_features
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


def _runs(hood: Neighbourhood, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Start voxels (flat indices) and lengths of all runs along offset ``d``.

    A voxel starts a run when its predecessor along the offset is not a same-level ROI voxel, and ends one
    when its successor is not. Sorting starts and ends by (line, position along line) pairs them up in order.
    """
    a, b = hood.same_level_pairs[d]
    size = hood.roi.size
    has_prev = np.zeros(size, dtype=bool)
    has_prev[b] = True
    has_next = np.zeros(size, dtype=bool)
    has_next[a] = True
    flat_roi = hood.roi.ravel()
    starts = np.flatnonzero(flat_roi & ~has_prev)
    ends = np.flatnonzero(flat_roi & ~has_next)
    offset = np.asarray(hood.offsets[d], dtype=np.int64)
    axis = int(np.flatnonzero(offset)[0])  # first non-zero component is +1 for every offset we use

    def line_order(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        coords = np.stack(np.unravel_index(flat, hood.roi.shape)).astype(np.int64)
        t = coords[axis]
        key = coords - t[None, :] * offset[:, None]
        order = np.lexsort((t, key[2], key[1], key[0]))
        return flat[order], t[order]

    starts, t_start = line_order(starts)
    _, t_end = line_order(ends)
    return starts, t_end - t_start + 1


def glrlm_matrices(hood: Neighbourhood) -> np.ndarray:
    """Run-length counts, shape (n_directions, n_slices, N_g, max_run_length)."""
    n_g, n_s = hood.n_levels, hood.n_groups
    per_dir = []
    for d in range(len(hood.offsets)):
        starts, lengths = _runs(hood, d)
        width = int(lengths.max()) if lengths.size else 1
        code = (hood.group[starts] * n_g + hood.level[starts] - 1) * width + lengths - 1
        m = np.bincount(code, minlength=n_s * n_g * width).reshape(n_s, n_g, width)
        per_dir.append(m.astype(np.float64))
    return pad_columns(per_dir)


def glrlm_features_from_matrix(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """IBSI GLRLM features of a batch of run-length matrices (..., N_g, N_r)."""
    m = np.asarray(matrix, dtype=np.float64)
    run_len = np.arange(1, m.shape[-1] + 1, dtype=np.float64)
    n_voxels = (m * run_len).sum(axis=(-2, -1))
    generic = zone_matrix_features(m, n_voxels)
    return {ibsi: generic[key] for key, ibsi in NAME_MAP.items()}


def glrlm_features(hood: Neighbourhood) -> dict[str, float]:
    """All GLRLM tags for the neighbourhood's mode (``rlm_<name>_<suffix>``)."""
    agg = directional_aggregates(glrlm_matrices(hood), glrlm_features_from_matrix, hood.mode)
    return {f"{PREFIX}_{name}_{sfx}": vals[name] for sfx, vals in agg.items() for name in FEATURE_NAMES}

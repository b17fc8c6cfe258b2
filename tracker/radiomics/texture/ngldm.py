"""Neighbouring grey level dependence matrix (NGLDM, IBSI family ``ngl``): distance 1, coarseness 0.

The dependence of a voxel is 1 + the number of ROI neighbours with exactly its grey level.
"""

from __future__ import annotations

import numpy as np

from tracker.radiomics.texture.glszm import group_aggregates
from tracker.radiomics.texture.neighbourhood import Neighbourhood

PREFIX = "ngl"
DIRECTIONAL = False
NAME_MAP: dict[str, str] = {
    "short": "lde",
    "long": "hde",
    "low_gl": "lgce",
    "high_gl": "hgce",
    "short_low_gl": "ldlge",
    "short_high_gl": "ldhge",
    "long_low_gl": "hdlge",
    "long_high_gl": "hdhge",
    "glnu": "glnu",
    "glnu_norm": "glnu_norm",
    "jnu": "dcnu",
    "jnu_norm": "dcnu_norm",
    "perc": "dc_perc",
    "gl_var": "gl_var",
    "j_var": "dc_var",
    "j_entr": "dc_entr",
    "energy": "dc_energy",
}
FEATURE_NAMES: tuple[str, ...] = tuple(NAME_MAP.values())


def ngldm_matrices(hood: Neighbourhood) -> np.ndarray:
    """Dependence counts per group, shape (n_slices, N_g, 1 + number of neighbours)."""
    n_g, n_s = hood.n_levels, hood.n_groups
    same = np.zeros(hood.roi.shape, dtype=np.uint8)
    for la, lb, src, dst in hood.neighbour_views():
        equal = (la == lb) & (la > 0)  # both in the ROI (level 0 is outside) with one level
        same[src] += equal
        same[dst] += equal
    width = 1 + 2 * len(hood.offsets)
    idx = hood.roi_index
    code = (hood.group[idx] * n_g + hood.level[idx] - 1) * width + same.ravel()[idx]
    m = np.bincount(code, minlength=n_s * n_g * width)
    return m.reshape(n_s, n_g, width).astype(np.float64)


def ngldm_features(hood: Neighbourhood) -> dict[str, float]:
    """All NGLDM tags for the neighbourhood's mode (``ngl_<name>_<suffix>``)."""
    agg = group_aggregates(ngldm_matrices(hood), hood.voxels_per_group(), NAME_MAP, hood.mode)
    return {f"{PREFIX}_{name}_{sfx}": vals[name] for sfx, vals in agg.items() for name in FEATURE_NAMES}

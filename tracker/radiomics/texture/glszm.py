"""Grey level size zone matrix (GLSZM, IBSI family ``szm``)."""

from __future__ import annotations

import numpy as np

from tracker.radiomics.texture.aggregate import batch_mean, compress, zone_matrix_features
from tracker.radiomics.texture.neighbourhood import Neighbourhood
from tracker.radiomics.texture.zones import Zones, label_zones, zone_matrix

PREFIX = "szm"
DIRECTIONAL = False
NAME_MAP: dict[str, str] = {
    "short": "sze",
    "long": "lze",
    "low_gl": "lgze",
    "high_gl": "hgze",
    "short_low_gl": "szlge",
    "short_high_gl": "szhge",
    "long_low_gl": "lzlge",
    "long_high_gl": "lzhge",
    "glnu": "glnu",
    "glnu_norm": "glnu_norm",
    "jnu": "zsnu",
    "jnu_norm": "zsnu_norm",
    "perc": "z_perc",
    "gl_var": "gl_var",
    "j_var": "zs_var",
    "j_entr": "zs_entr",
}
FEATURE_NAMES: tuple[str, ...] = tuple(NAME_MAP.values())


def glszm_matrices(hood: Neighbourhood, zones: Zones | None = None) -> np.ndarray:
    """Size-zone counts per group, shape (n_slices, N_g, largest zone size); n_slices is 1 in 3D."""
    zones = label_zones(hood) if zones is None else zones
    return zone_matrix(zones, zones.size, hood.n_levels, hood.n_groups)


def group_aggregates(
    matrices: np.ndarray, n_voxels: np.ndarray, name_map: dict[str, str], mode: str
) -> dict[str, dict[str, float]]:
    """Zone-family aggregation: ``2D`` per-slice mean and ``2_5D`` merged, or ``3D`` for the volume."""
    matrices, rows, cols = compress(matrices)
    if mode == "3D":
        feats = zone_matrix_features(matrices[0], n_voxels[0], rows, cols)
        return {"3D": {ibsi: float(feats[key]) for key, ibsi in name_map.items()}}
    per_slice = zone_matrix_features(matrices, n_voxels, rows, cols)
    merged = zone_matrix_features(matrices.sum(axis=0), n_voxels.sum(), rows, cols)
    return {
        "2D": {ibsi: batch_mean(per_slice[key]) for key, ibsi in name_map.items()},
        "2_5D": {ibsi: float(merged[key]) for key, ibsi in name_map.items()},
    }


def glszm_features(hood: Neighbourhood, zones: Zones | None = None) -> dict[str, float]:
    """All GLSZM tags for the neighbourhood's mode (``szm_<name>_<suffix>``)."""
    agg = group_aggregates(glszm_matrices(hood, zones), hood.voxels_per_group(), NAME_MAP, hood.mode)
    return {f"{PREFIX}_{name}_{sfx}": vals[name] for sfx, vals in agg.items() for name in FEATURE_NAMES}

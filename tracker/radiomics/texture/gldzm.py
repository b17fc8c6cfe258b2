"""Grey level distance zone matrix (GLDZM, IBSI family ``dzm``).

The distance of a voxel is its city-block (taxicab) distance to the border of the morphological ROI, 1 for
voxels that touch the outside (6-connected in 3D, 4-connected in-plane in 2D). A zone's distance is the
smallest distance of its voxels.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_cdt

from tracker.radiomics.texture.glszm import group_aggregates
from tracker.radiomics.texture.neighbourhood import Neighbourhood
from tracker.radiomics.texture.zones import Zones, label_zones, zone_matrix

PREFIX = "dzm"
DIRECTIONAL = False
NAME_MAP: dict[str, str] = {
    "short": "sde",
    "long": "lde",
    "low_gl": "lgze",
    "high_gl": "hgze",
    "short_low_gl": "sdlge",
    "short_high_gl": "sdhge",
    "long_low_gl": "ldlge",
    "long_high_gl": "ldhge",
    "glnu": "glnu",
    "glnu_norm": "glnu_norm",
    "jnu": "zdnu",
    "jnu_norm": "zdnu_norm",
    "perc": "z_perc",
    "gl_var": "gl_var",
    "j_var": "zd_var",
    "j_entr": "zd_entr",
}
FEATURE_NAMES: tuple[str, ...] = tuple(NAME_MAP.values())


def border_distance(morph_roi: np.ndarray, mode: str) -> np.ndarray:
    """City-block distance of each ROI voxel to the ROI border (1 at the border, 0 outside)."""
    metric = np.zeros((3, 3, 3), dtype=bool)
    metric[1, 1, :] = metric[1, :, 1] = True
    if mode == "3D":
        metric[:, 1, 1] = True
    padded = np.zeros(tuple(n + 2 for n in morph_roi.shape), dtype=bool)
    padded[1:-1, 1:-1, 1:-1] = morph_roi
    dist = distance_transform_cdt(padded, metric=metric)
    return dist[1:-1, 1:-1, 1:-1].astype(np.int64)


def gldzm_matrices(hood: Neighbourhood, zones: Zones | None = None) -> np.ndarray:
    """Distance-zone counts per group, shape (n_slices, N_g, largest distance); n_slices is 1 in 3D."""
    zones = label_zones(hood) if zones is None else zones
    dist = border_distance(hood.morph_roi, hood.mode).ravel()[hood.roi_index]
    # Intensity-ROI voxels outside the morphological ROI (should not happen) count as border voxels.
    dist = np.maximum(dist, 1)
    zone_dist = np.full(zones.size.size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(zone_dist, zones.voxel_zone, dist)
    return zone_matrix(zones, zone_dist, hood.n_levels, hood.n_groups)


def gldzm_features(hood: Neighbourhood, zones: Zones | None = None) -> dict[str, float]:
    """All GLDZM tags for the neighbourhood's mode (``dzm_<name>_<suffix>``)."""
    agg = group_aggregates(gldzm_matrices(hood, zones), hood.voxels_per_group(), NAME_MAP, hood.mode)
    return {f"{PREFIX}_{name}_{sfx}": vals[name] for sfx, vals in agg.items() for name in FEATURE_NAMES}

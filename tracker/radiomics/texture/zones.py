"""Connected zones of equal grey level (zone linkage distance 1: 26-connected in 3D, 8-connected in 2D)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracker.radiomics.texture.neighbourhood import Neighbourhood


@dataclass(frozen=True)
class Zones:
    """Zones of a neighbourhood.

    Attributes
    ----------
    voxel_zone : zone number of each ROI voxel (aligned with ``Neighbourhood.roi_index``).
    level : grey level of each zone.
    size : voxel count of each zone.
    group : slice (2D) or 0 (3D) of each zone.
    """

    voxel_zone: np.ndarray
    level: np.ndarray
    size: np.ndarray
    group: np.ndarray


def label_zones(hood: Neighbourhood) -> Zones:
    """Label zones: connected regions of one grey level (26-connected in 3D, 8-connected in-plane in 2D)."""
    from skimage.measure import label

    grid = hood.level_grid
    if hood.mode == "2D":
        # an empty slice between the slices keeps zones in-plane under full connectivity
        spaced = np.zeros((2 * grid.shape[0] - 1, *grid.shape[1:]), dtype=grid.dtype)
        spaced[::2] = grid
        labels = label(spaced, background=0, connectivity=3)[::2]
    else:
        labels = label(grid, background=0, connectivity=3)
    idx = hood.roi_index
    voxel_zone = labels.ravel()[idx].astype(np.int64) - 1
    n_zones = int(voxel_zone.max()) + 1 if voxel_zone.size else 0
    level = np.zeros(n_zones, dtype=np.int64)
    level[voxel_zone] = hood.level[idx]
    group = np.zeros(n_zones, dtype=np.int64)
    group[voxel_zone] = hood.group[idx]
    size = np.bincount(voxel_zone, minlength=n_zones)
    return Zones(voxel_zone=voxel_zone, level=level, size=size, group=group)


def zone_matrix(zones: Zones, column: np.ndarray, n_levels: int, n_groups: int) -> np.ndarray:
    """Per-group counts of zones by (grey level, ``column`` value >= 1), shape (n_groups, N_g, max column)."""
    width = int(column.max()) if column.size else 1
    code = (zones.group * n_levels + zones.level - 1) * width + column - 1
    m = np.bincount(code, minlength=n_groups * n_levels * width)
    return m.reshape(n_groups, n_levels, width).astype(np.float64)

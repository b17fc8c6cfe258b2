"""Connected zones of equal grey level (zone linkage distance 1: 26-connected in 3D, 8-connected in 2D)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

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
    """Label zones as connected components of the graph of same-level neighbour pairs."""
    idx = hood.roi_index
    node = np.full(hood.roi.size, -1, dtype=np.int64)
    node[idx] = np.arange(idx.size)
    a = np.concatenate([p[0] for p in hood.same_level_pairs])
    b = np.concatenate([p[1] for p in hood.same_level_pairs])
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (node[a], node[b])), shape=(idx.size, idx.size))
    n_zones, voxel_zone = connected_components(graph.tocsr(), directed=False)
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

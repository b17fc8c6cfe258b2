"""A cropped ROI with its neighbour pairs, computed once and shared by every texture family."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from tracker.radiomics.texture.directions import Offset, directions_for, neighbour_pairs


@dataclass
class Neighbourhood:
    """Discretised ROI prepared for texture matrices.

    Attributes
    ----------
    mode : "2D" (slice-wise, in-plane neighbours) or "3D".
    n_levels : number of grey levels N_g.
    roi : (z, y, x) bool intensity ROI, cropped to the bounding box of ``roi | morph_roi``.
    morph_roi : (z, y, x) bool morphological ROI on the same grid.
    level : flat int64 grey levels (1..N_g inside ``roi``, 0 outside).
    group : flat int64 matrix group of each voxel: its slice index in 2D, 0 in 3D.
    n_groups : number of groups (slices in 2D, 1 in 3D).
    offsets : half-neighbourhood offsets (13 in 3D, 4 in 2D).
    pairs : per offset, flat indices ``(a, b)`` of neighbouring ROI voxels.
    """

    mode: str
    n_levels: int
    roi: np.ndarray
    morph_roi: np.ndarray
    level: np.ndarray
    group: np.ndarray
    n_groups: int
    offsets: tuple[Offset, ...]
    pairs: list[tuple[np.ndarray, np.ndarray]] = field(repr=False)

    @cached_property
    def same_level_pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Neighbour pairs whose two voxels share a grey level (zone linkage, dependence)."""
        out = []
        for a, b in self.pairs:
            same = self.level[a] == self.level[b]
            out.append((a[same], b[same]))
        return out

    @cached_property
    def roi_index(self) -> np.ndarray:
        """Flat indices of the ROI voxels."""
        return np.flatnonzero(self.roi)

    @cached_property
    def roi_coords(self) -> np.ndarray:
        """(3, n) int64 (z, y, x) coordinates of the ROI voxels, in ``roi_index`` order."""
        return np.stack(np.unravel_index(self.roi_index, self.roi.shape)).astype(np.int64)

    @cached_property
    def run_value(self) -> np.ndarray:
        """``group * N_g + level`` (>= 1) of the ROI voxels in the smallest unsigned dtype that holds it."""
        value = self.group[self.roi_index] * self.n_levels + self.level[self.roi_index]
        top = self.n_groups * self.n_levels
        dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int64
        return value.astype(dtype)

    def voxels_per_group(self) -> np.ndarray:
        """Number of ROI voxels in each group (slice)."""
        return np.bincount(self.group[self.roi_index], minlength=self.n_groups).astype(np.float64)


def build_neighbourhood(
    levels: np.ndarray, roi: np.ndarray, n_levels: int, mode: str, morph_roi: np.ndarray
) -> Neighbourhood:
    """Crop to the ROI bounding box and collect neighbour pairs for ``mode``.

    ``roi`` must be non-empty; ``levels`` must already be validated (1..n_levels inside ``roi``).
    """
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(roi | morph_roi))
    roi_c = np.ascontiguousarray(roi[box])
    morph_c = np.ascontiguousarray(morph_roi[box])
    level = np.zeros(roi_c.shape, dtype=np.int64)
    level[roi_c] = levels[box][roi_c]
    level = level.ravel()
    nz = roi_c.shape[0]
    if mode == "2D":
        group = np.repeat(np.arange(nz, dtype=np.int64), roi_c.shape[1] * roi_c.shape[2])
        n_groups = nz
    else:
        group = np.zeros(roi_c.size, dtype=np.int64)
        n_groups = 1
    offsets = directions_for(mode)
    pairs = [neighbour_pairs(roi_c, off) for off in offsets]
    return Neighbourhood(mode, n_levels, roi_c, morph_c, level, group, n_groups, offsets, pairs)

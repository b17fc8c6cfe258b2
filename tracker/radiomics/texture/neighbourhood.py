"""A cropped ROI with its grey levels on a dense grid, computed once and shared by every texture family."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tracker.radiomics.preprocess import bounding_box
from tracker.radiomics.texture.directions import Offset, directions_for, pair_slices


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
    """

    mode: str
    n_levels: int
    roi: np.ndarray
    morph_roi: np.ndarray
    level: np.ndarray
    group: np.ndarray
    n_groups: int
    offsets: tuple[Offset, ...]

    @cached_property
    def roi_index(self) -> np.ndarray:
        """Flat indices of the ROI voxels."""
        return np.flatnonzero(self.roi)

    @cached_property
    def run_value(self) -> np.ndarray:
        """``group * N_g + level`` (>= 1) of the ROI voxels in the smallest unsigned dtype that holds it."""
        value = self.group[self.roi_index] * self.n_levels + self.level[self.roi_index]
        return value.astype(_small_uint(self.n_groups * self.n_levels))

    @cached_property
    def padded_run_values(self) -> tuple[np.ndarray, int, int]:
        """``run_value`` on the grid padded with one empty row along y and x (0 outside the ROI), flattened,
        with the flat strides of z and y in it."""
        nz, ny, nx = self.roi.shape
        value = np.zeros((nz, ny + 1, nx + 1), dtype=self.run_value.dtype)
        value[:, :ny, :nx][self.roi] = self.run_value
        return value.ravel(), (ny + 1) * (nx + 1), nx + 1

    @cached_property
    def level_grid(self) -> np.ndarray:
        """(z, y, x) grey levels in the smallest unsigned dtype that holds N_g (0 outside the ROI)."""
        return self.level.reshape(self.roi.shape).astype(_small_uint(self.n_levels))

    def neighbour_views(self) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[slice, ...], tuple[slice, ...]]]:
        """Per offset: grey levels of every voxel ``a`` and of its neighbour ``b = a + offset`` (views of
        ``level_grid``, 0 outside the ROI) and the slices that select them."""
        grid = self.level_grid
        for offset in self.offsets:
            src, dst = pair_slices(grid.shape, offset)
            yield grid[src], grid[dst], src, dst

    def voxels_per_group(self) -> np.ndarray:
        """Number of ROI voxels in each group (slice)."""
        return np.bincount(self.group[self.roi_index], minlength=self.n_groups).astype(np.float64)


def _small_uint(top: int) -> type:
    return np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int64


def build_neighbourhood(
    levels: np.ndarray, roi: np.ndarray, n_levels: int, mode: str, morph_roi: np.ndarray
) -> Neighbourhood:
    """Crop to the ROI bounding box for ``mode``.

    ``roi`` must be non-empty; ``levels`` must already be validated (1..n_levels inside ``roi``).
    """
    lo, hi = bounding_box(roi | morph_roi)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
    roi_c = np.ascontiguousarray(roi[box])
    morph_c = np.ascontiguousarray(morph_roi[box])
    level: np.ndarray = np.zeros(roi_c.shape, dtype=np.int64)
    level[roi_c] = levels[box][roi_c]
    level = level.ravel()
    nz = roi_c.shape[0]
    if mode == "2D":
        group = np.repeat(np.arange(nz, dtype=np.int64), roi_c.shape[1] * roi_c.shape[2])
        n_groups = nz
    else:
        group = np.zeros(roi_c.size, dtype=np.int64)
        n_groups = 1
    return Neighbourhood(mode, n_levels, roi_c, morph_c, level, group, n_groups, directions_for(mode))

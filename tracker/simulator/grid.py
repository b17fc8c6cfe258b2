"""Image grids (shape, spacing, origin; identity direction) and their voxel <-> physical conversions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A voxel grid with identity direction. ``shape``, ``spacing``, ``origin`` are (x, y, z) like SimpleITK."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def centred(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Grid:
        """A grid whose centre is the physical origin (0, 0, 0)."""
        origin = tuple(-(n - 1) * s / 2.0 for n, s in zip(shape, spacing, strict=True))
        return cls(tuple(int(n) for n in shape), tuple(float(s) for s in spacing), origin)  # type: ignore[arg-type]

    @property
    def array_shape(self) -> tuple[int, int, int]:
        """numpy (z, y, x) shape."""
        return (self.shape[2], self.shape[1], self.shape[0])

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1-D physical coordinates along x, y, z (float32)."""
        return tuple(  # type: ignore[return-value]
            (o + s * np.arange(n)).astype(np.float32)
            for n, s, o in zip(self.shape, self.spacing, self.origin, strict=True)
        )

    def physical_to_index(self, pts: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) voxel indices of physical points (N, 3)."""
        return (np.asarray(pts, dtype=float) - np.asarray(self.origin)) / np.asarray(self.spacing)

    def index_to_physical(self, idx: np.ndarray) -> np.ndarray:
        """Physical points of continuous (x, y, z) voxel indices (N, 3)."""
        return np.asarray(idx, dtype=float) * np.asarray(self.spacing) + np.asarray(self.origin)

    def to_dict(self) -> dict[str, list]:
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin)}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> Grid:
        return cls(tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]))  # type: ignore[arg-type]

"""Neighbour offsets and the slices that pair voxels with their neighbours, shared by the texture families.

Offsets are (dz, dy, dx) in array index order. Each unordered neighbour pair is visited once: 13 offsets in
3D (26-connectivity) and 4 in-plane offsets for slice-wise 2D (8-connectivity).
"""

from __future__ import annotations

Offset = tuple[int, int, int]

DIRECTIONS_3D: tuple[Offset, ...] = (
    (0, 0, 1),
    (0, 1, -1),
    (0, 1, 0),
    (0, 1, 1),
    (1, -1, -1),
    (1, -1, 0),
    (1, -1, 1),
    (1, 0, -1),
    (1, 0, 0),
    (1, 0, 1),
    (1, 1, -1),
    (1, 1, 0),
    (1, 1, 1),
)
DIRECTIONS_2D: tuple[Offset, ...] = ((0, 0, 1), (0, 1, -1), (0, 1, 0), (0, 1, 1))


def directions_for(mode: str) -> tuple[Offset, ...]:
    """Half-neighbourhood offsets for ``mode`` "2D" (in-plane) or "3D"."""
    return DIRECTIONS_2D if mode == "2D" else DIRECTIONS_3D


def pair_slices(shape: tuple[int, ...], offset: Offset) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices selecting voxels ``a`` and their neighbours ``b = a + offset`` inside the array."""
    src, dst = [], []
    for n, o in zip(shape, offset, strict=True):
        src.append(slice(max(0, -o), n - max(0, o)))
        dst.append(slice(max(0, o), n - max(0, -o)))
    return tuple(src), tuple(dst)

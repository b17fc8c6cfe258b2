"""Right-angle rotations of a volume for rotation-invariant filtering (IBSI 2: 24 in 3D, 4 in-plane in 2D)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Rotation = list[tuple[int, tuple[int, int]]]

# axis 0 pointed to each of the 6 faces, then spun 4 ways about it: the 24 rotations of a cube
_FACES: list[Rotation] = [[], [(1, (0, 1))], [(2, (0, 1))], [(3, (0, 1))], [(1, (0, 2))], [(3, (0, 2))]]
ROTATIONS_3D: list[Rotation] = [[*face, (k, (1, 2))] for face in _FACES for k in range(4)]
ROTATIONS_2D: list[Rotation] = [[(k, (1, 2))] for k in range(4)]


def rotate(a: np.ndarray, rotation: Rotation) -> np.ndarray:
    """``a`` turned by ``rotation`` (a view where numpy can)."""
    for k, axes in rotation:
        a = np.rot90(a, k, axes)
    return a


def unrotate(a: np.ndarray, rotation: Rotation) -> np.ndarray:
    """The inverse of ``rotate``."""
    for k, axes in reversed(rotation):
        a = np.rot90(a, -k, axes)
    return a


def pooled(
    image: np.ndarray, response: Callable[[np.ndarray], np.ndarray], rotations: list[Rotation], pooling: str
) -> np.ndarray:
    """``response`` of every rotated copy of ``image``, rotated back and pooled voxel-wise (``average`` or ``max``).

    The response function must be equivariant to the padding of the rotated image (boundary conditions are
    symmetric under right-angle rotations, so rotating the image is the same as rotating the kernel).
    """
    out: np.ndarray | None = None
    for rotation in rotations:
        r = unrotate(response(np.ascontiguousarray(rotate(image, rotation))), rotation)
        if out is None:
            out = np.array(r, dtype=np.float64)
        elif pooling == "max":
            np.maximum(out, r, out=out)
        else:
            out += r
    assert out is not None
    return out if pooling == "max" else out / len(rotations)

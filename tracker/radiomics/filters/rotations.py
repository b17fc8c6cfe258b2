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


def axis_maps(rotations: list[Rotation]) -> list[dict[int, tuple[int, bool]]]:
    """Each rotation as an axis map: array axis -> (the axis it takes its kernel from, whether reversed).

    Filtering with a separable kernel so rearranged is filtering the rotated image with the original kernel and
    rotating back; pooling over the whole group does not depend on which of the two directions is meant.
    """
    probe = np.indices((2, 2, 2))
    out = []
    for rotation in rotations:
        turned = [rotate(p, rotation) for p in probe]
        mapping = {}
        for ax in range(3):
            step = [0, 0, 0]
            step[ax] = 1
            src = next(d for d in range(3) if turned[d][tuple(step)] != turned[d][0, 0, 0])
            mapping[ax] = (src, bool(turned[src][tuple(step)] < turned[src][0, 0, 0]))
        out.append(mapping)
    return out


def pooled(
    image: np.ndarray, response: Callable[[np.ndarray], np.ndarray], rotations: list[Rotation], pooling: str
) -> np.ndarray:
    """``response`` of every rotated copy of ``image``, rotated back and pooled voxel-wise (``average`` or ``max``).

    The IBSI 2 definition of rotation invariance, and what the filters' kernel rearrangements (``axis_maps``)
    are tested against; 24 filterings in 3D, so the filters do not call it.
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

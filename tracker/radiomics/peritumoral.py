"""Peritumoral shell (Dou et al. 2018): the voxels within a distance in mm outside a lesion."""

from __future__ import annotations

import numpy as np

from tracker.errors import MetatrackError


def peritumoral_shell(
    mask_lesion: np.ndarray,
    spacing: tuple[float, float, float],
    width_mm: float,
    body_mask: np.ndarray | None = None,
    other_lesions: np.ndarray | None = None,
) -> np.ndarray:
    """Voxels outside the lesion whose centre lies within ``width_mm`` of a lesion voxel centre.

    Parameters
    ----------
    mask_lesion : (z, y, x) boolean lesion mask
    spacing : (z, y, x) mm
    width_mm : shell width in mm (> 0)
    body_mask : optional (z, y, x) mask; the shell is clipped to it (e.g. drop air outside the patient)
    other_lesions : optional (z, y, x) mask of other lesions, whose voxels are excluded
    """
    from scipy import ndimage

    lesion = np.asarray(mask_lesion).astype(bool)
    if not width_mm > 0:
        raise MetatrackError(f"peritumoral shell width_mm: expected > 0, got {width_mm}")
    for name, other in (("body_mask", body_mask), ("other_lesions", other_lesions)):
        if other is not None and np.shape(other) != lesion.shape:
            raise MetatrackError(f"peritumoral {name}: shape {np.shape(other)} differs from lesion {lesion.shape}")
    if not lesion.any():
        return np.zeros_like(lesion)
    # work on the lesion's bounding box grown by the width, to keep the distance transform small
    idx = np.argwhere(lesion)
    grow = np.ceil(width_mm / np.asarray(spacing, dtype=np.float64)).astype(int) + 1
    lo = np.maximum(idx.min(axis=0) - grow, 0)
    hi = np.minimum(idx.max(axis=0) + grow + 1, lesion.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    dist = ndimage.distance_transform_edt(~lesion[sl], sampling=spacing)
    shell = np.zeros_like(lesion)
    shell[sl] = (dist > 0) & (dist <= width_mm + 1e-9)
    if body_mask is not None:
        shell &= np.asarray(body_mask).astype(bool)
    if other_lesions is not None:
        shell &= ~np.asarray(other_lesions).astype(bool)
    return shell

"""Applying stored transform lists to points, images and label maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from registration.transforms import load
from tracker.errors import MetatrackError

HU_AIR = -1000.0


def map_points(points_lps: np.ndarray, transforms: Sequence[Path]) -> np.ndarray:
    """Map physical points (n, 3), LPS mm in (x, y, z) order, through a transform list.

    ``map_points(p_baseline, result.forward)`` gives the matching follow-up points and
    ``map_points(q_followup, result.inverse)`` the matching baseline points.
    """
    pts = np.asarray(points_lps, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise MetatrackError(f"points: expected an array of shape (n, 3), got {pts.shape}")
    composite = load(transforms)
    return np.asarray([composite.TransformPoint(tuple(p)) for p in pts], dtype=np.float64).reshape(-1, 3)


def warp_image(
    image: sitk.Image,
    reference: sitk.Image,
    transforms: Sequence[Path],
    default_value: float = HU_AIR,
    interpolator: int = sitk.sitkLinear,
) -> sitk.Image:
    """Resample ``image`` onto the grid of ``reference``.

    ``transforms`` map reference-frame points to image-frame points, e.g. ``result.forward`` resamples a
    follow-up into the baseline frame and ``result.inverse`` the baseline into the follow-up frame.
    """
    return sitk.Resample(image, reference, load(transforms), interpolator, float(default_value), image.GetPixelID())


def warp_labels(labels: sitk.Image, reference: sitk.Image, transforms: Sequence[Path]) -> sitk.Image:
    """Resample an integer label map onto ``reference`` without mixing labels (label-Gaussian interpolation).

    Each output voxel takes the label whose Gaussian-smoothed indicator is largest there, which keeps
    small lesions better than nearest neighbour while never inventing label values.
    """
    pixel = labels.GetPixelID()
    if pixel in (sitk.sitkFloat32, sitk.sitkFloat64):
        arr = sitk.GetArrayViewFromImage(labels)
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise MetatrackError("labels: expected integer label values, found non-integer voxels")
        labels = sitk.Cast(labels, sitk.sitkUInt32)
        pixel = sitk.sitkUInt32
    return sitk.Resample(labels, reference, load(transforms), sitk.sitkLabelGaussian, 0, pixel)

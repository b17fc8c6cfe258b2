"""Intensity preprocessing for registration: HU window, body mask and histogram matching.

Makes scans from different scanners comparable before they are registered; not to be confused with the ComBat
feature harmonisation of the tracker.
"""

from __future__ import annotations

import SimpleITK as sitk

HU_WINDOW_LOW = -1000.0
HU_WINDOW_HIGH = 1000.0
BODY_THRESHOLD_HU = -500.0
HISTOGRAM_LEVELS = 256
HISTOGRAM_MATCH_POINTS = 15


def clip_window(image: sitk.Image, low: float = HU_WINDOW_LOW, high: float = HU_WINDOW_HIGH) -> sitk.Image:
    """Cast to float32 and clip to a HU window (air below, dense bone and metal above are flattened)."""
    return sitk.Clamp(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkFloat32, low, high)


def match_histogram(moving: sitk.Image, fixed: sitk.Image) -> sitk.Image:
    """Map ``moving`` intensities onto the histogram of ``fixed`` (both already on the same grid).

    Removes scanner HU offsets and gain differences; air below the mean intensity is left out of the match.
    """
    return sitk.HistogramMatching(moving, fixed, HISTOGRAM_LEVELS, HISTOGRAM_MATCH_POINTS, True)


def body_mask(image: sitk.Image, threshold: float = BODY_THRESHOLD_HU) -> sitk.Image:
    """Largest connected region above ``threshold`` HU with holes filled (lungs included), as uint8."""
    fg = sitk.Cast(image > threshold, sitk.sitkUInt8)
    if sitk.GetArrayViewFromImage(fg).max() == 0:
        return fg
    components = sitk.RelabelComponent(sitk.ConnectedComponent(fg), sortByObjectSize=True)
    largest = sitk.Cast(components == 1, sitk.sitkUInt8)
    filled = sitk.BinaryFillhole(largest)
    # Lungs touch the slab ends in a CT, so fill holes slice by slice too.
    slices = [sitk.BinaryFillhole(filled[:, :, k]) for k in range(filled.GetSize()[2])]
    stacked = sitk.JoinSeries(slices)
    stacked.CopyInformation(filled)
    return sitk.Cast(stacked, sitk.sitkUInt8)

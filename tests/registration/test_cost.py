"""What makes registration cost follow the image: the B-spline's sample lattice and levels, the working copy
of fine scans and the torch field inverse, each against a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from registration import bspline, map_points, register
from registration.engine import PRESETS, invert_field, working_shrink
from registration.phantom import make_pair
from tests.helpers import gaussian_bump_field

BUDGET = 2**16
INVERSE_VOXEL_MM = 3.0
INVERSE_SHAPE_XYZ = (40, 44, 36)
BUMP_MM = np.array([6.0, -4.0, 5.0])
BUMP_SIGMA_MM = 25.0
INTERIOR_SHARE = 0.6  # central part of the grid where the round trip is checked (the border is clamped)
ROUND_TRIP_MEAN_MM = 0.01
ROUND_TRIP_MAX_MM = 0.1
ITK_AGREEMENT_MM = 0.02
FINE_VOXEL_MM = (0.8, 0.8, 1.6)
FINE_SHAPE_XYZ = (128, 128, 64)
FINE_TRE_BOUND_MM = 1.5


@pytest.mark.parametrize("voxels", [1000, BUDGET, BUDGET + 1, 917_504, 52_428_800])
def test_sampling_stride_is_the_smallest_within_budget(voxels):
    stride = bspline.sampling_stride(voxels, BUDGET)
    assert voxels / stride**3 <= BUDGET
    assert stride == 1 or voxels / (stride - 1) ** 3 > BUDGET


@pytest.mark.parametrize(
    ("spacing", "shrinks"),
    [
        ((3.0, 3.0, 3.0), [[2, 2, 2], [2, 2, 2], [1, 1, 1]]),  # 1.5 mm level = the 3 mm level: dropped
        ((1.5, 1.5, 1.5), [[4, 4, 4], [4, 4, 4], [2, 2, 2], [1, 1, 1]]),
        ((0.8, 0.8, 1.5), [[8, 8, 4], [8, 8, 4], [4, 4, 2], [2, 2, 1]]),  # per axis: voxels near the level's mm
    ],
)
def test_accurate_levels_follow_the_voxel_size(spacing, shrinks):
    levels = bspline._levels(PRESETS["accurate"].bspline, spacing)
    assert [shrink for shrink, *_ in levels] == shrinks
    assert [control for _, control, *_ in levels] == [40.0, 20.0, 20.0, 20.0][: len(shrinks)]


@pytest.mark.parametrize(
    ("spacing", "shrink"),
    [((0.8, 0.8, 1.5), [2, 2, 1]), ((1.0, 1.0, 1.0), [1, 1, 1]), ((0.5, 0.5, 3.0), [3, 3, 1]), ((3.0,) * 3, [1] * 3)],
)
def test_working_shrink_keeps_voxels_within_the_working_size(spacing, shrink):
    assert working_shrink(spacing) == shrink


@pytest.fixture(scope="module")
def bump():
    reference = sitk.Image(INVERSE_SHAPE_XYZ, sitk.sitkFloat32)
    reference.SetSpacing((INVERSE_VOXEL_MM,) * 3)
    reference.SetOrigin((-60.0, 15.0, -200.0))
    reference.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # a rotated grid: LPS != index axes
    return gaussian_bump_field(reference, BUMP_MM, BUMP_SIGMA_MM)


def _interior_points(field: sitk.Image) -> np.ndarray:
    size = np.asarray(field.GetSize()) - 1
    rng = np.random.default_rng(0)
    index = (0.5 + (rng.uniform(size=(500, 3)) - 0.5) * INTERIOR_SHARE) * size
    return np.asarray([field.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in index])


def _round_trip(field: sitk.Image, inverse: sitk.Image, points: np.ndarray) -> np.ndarray:
    forward = sitk.DisplacementFieldTransform(sitk.Image(field))
    backward = sitk.DisplacementFieldTransform(sitk.Image(inverse))
    return np.asarray([backward.TransformPoint(forward.TransformPoint(p.tolist())) for p in points]) - points


def test_torch_inverse_undoes_the_field_and_agrees_with_itk(bump):
    inverse = invert_field(bump)
    assert inverse.GetSize() == bump.GetSize() and inverse.GetDirection() == bump.GetDirection()
    points = _interior_points(bump)
    error = np.linalg.norm(_round_trip(bump, inverse, points), axis=1)
    assert error.mean() < ROUND_TRIP_MEAN_MM and error.max() < ROUND_TRIP_MAX_MM
    itk = sitk.InvertDisplacementField(bump, maximumNumberOfIterations=50, meanErrorToleranceThreshold=1e-4)
    ours, theirs = (sitk.DisplacementFieldTransform(sitk.Image(f)) for f in (inverse, itk))
    gap = [np.subtract(ours.TransformPoint(p.tolist()), theirs.TransformPoint(p.tolist())) for p in points]
    assert np.linalg.norm(gap, axis=1).max() < ITK_AGREEMENT_MM


@pytest.mark.slow
def test_fine_scan_registers_on_its_working_copy(tmp_path):
    """A 0.8 mm pair is registered on a 1.6 mm working copy: the field is stored at about 3 mm and the
    landmarks come within the bound of the coarse scans' tests."""
    pair = make_pair(
        FINE_SHAPE_XYZ[::-1],
        FINE_VOXEL_MM[::-1],
        seed=3,
        rotation_deg=4.0,
        translation_mm=5.0,
        deformation_mm=6.0,
        followup_spacing=(2.0, 0.8, 0.8),
        noise_followup=15.0,
        hu_offset=50.0,
    )
    res = register(pair.baseline, pair.followup, preset="accurate", seed=1, workdir=tmp_path)
    field = sitk.ReadImage(str(res.forward[0]))
    assert field.GetSpacing() == pytest.approx((3.2, 3.2, 3.2))
    tre = np.linalg.norm(map_points(pair.landmarks_baseline, res.forward) - pair.landmarks_scan, axis=1)
    initial = np.linalg.norm(pair.landmarks_baseline - pair.landmarks_scan, axis=1)
    assert tre.mean() < FINE_TRE_BOUND_MM < initial.mean()

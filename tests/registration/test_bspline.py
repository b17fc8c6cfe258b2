"""The torch B-spline stage recovers a known smooth deformation, reproducibly, and keeps its basis exact."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from registration import bspline
from tests.helpers import gaussian_bump_field

VOXEL_MM = 3.0
SHAPE_XYZ = (48, 48, 40)
BUMP_MM = np.array([5.0, -3.0, 4.0])  # peak displacement (x, y, z) of the true deformation
BUMP_SIGMA_MM = 30.0
TEXTURE_SIGMA_VOXELS = 1.5
TEXTURE_HU = 300.0
BORDER_VOXELS = 4
MEAN_ERROR_BOUND_MM = 0.5
MAX_ERROR_BOUND_MM = 1.5


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(7)
    noise = rng.normal(size=SHAPE_XYZ[::-1]).astype(np.float32)
    moving = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), TEXTURE_SIGMA_VOXELS)
    arr = sitk.GetArrayFromImage(moving)
    moving = sitk.GetImageFromArray((arr / arr.std() * TEXTURE_HU).astype(np.float32))
    moving.SetSpacing((VOXEL_MM,) * 3)
    moving.SetOrigin((-70.0, 20.0, -300.0))
    truth = gaussian_bump_field(moving, BUMP_MM, BUMP_SIGMA_MM)
    # fixed(p) = moving(p + d(p)): the fitted field must be d.
    transform = sitk.DisplacementFieldTransform(sitk.Image(truth))
    fixed = sitk.Resample(moving, moving, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    store = sitk.Shrink(fixed, [2, 2, 2])
    return fixed, moving, truth, store


@pytest.fixture(scope="module")
def fitted(pair):
    fixed, moving, _, store = pair
    return bspline.fit(fixed, moving, None, bspline.BSplineSettings(), store, seed=0)


def test_recovers_known_smooth_deformation(pair, fitted):
    _, _, truth, store = pair
    expected = sitk.GetArrayFromImage(sitk.Resample(truth, store, sitk.Transform(), sitk.sitkLinear))
    got = sitk.GetArrayFromImage(fitted)
    b = BORDER_VOXELS // 2
    error = np.linalg.norm((got - expected)[b:-b, b:-b, b:-b], axis=-1)
    assert np.linalg.norm(expected, axis=-1).max() > 5.0
    assert error.mean() < MEAN_ERROR_BOUND_MM
    assert error.max() < MAX_ERROR_BOUND_MM
    det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(fitted))
    assert det.min() > 0.0


def test_same_seed_and_threads_give_identical_field(pair, fitted):
    fixed, moving, _, store = pair
    again = bspline.fit(fixed, moving, None, bspline.BSplineSettings(), store, seed=0)
    assert np.array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(fitted))


def test_refinement_reproduces_coarse_spline_exactly():
    positions = np.linspace(0.0, 150.0, 61)
    coarse = np.random.default_rng(1).normal(size=bspline.control_count(150.0, 40.0))
    refine = bspline.refinement(positions, (40.0, coarse.size), (20.0, bspline.control_count(150.0, 20.0)))
    before = bspline.basis_matrix(positions, 40.0, coarse.size) @ coarse
    after = bspline.basis_matrix(positions, 20.0, refine.shape[0]) @ (refine @ coarse)
    np.testing.assert_allclose(after, before, atol=1e-9)
    # Cubic B-spline weights sum to one everywhere inside the grid (partition of unity).
    np.testing.assert_allclose(bspline.basis_matrix(positions, 20.0, refine.shape[0]).sum(1), 1.0, atol=1e-12)

"""Unit truths for the radiomics core: IBSI grid, discretisation, re-segmentation, mesh, PCA, enclosing bodies,
spatial autocorrelation, local intensity and the intensity-volume histogram."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tracker.radiomics.config import load_config
from tracker.radiomics.histogram import ivh_features
from tracker.radiomics.local_intensity import local_intensity_features, sphere_kernel, sphere_sums
from tracker.radiomics.morphology import _weighted_pair_sums, ellipsoid_area, morphology_features, mvee
from tracker.radiomics.preprocess import (
    PEAK_RADIUS_MM,
    discretise,
    grid_axis,
    prepare,
    resample,
    resample_mask,
    resegment,
)


def test_grid_axis_matches_ibsi_ct_phantom_dimensions() -> None:
    # IBSI config C: 204 x 201 x 60 voxels of 0.977 x 0.977 x 3 mm -> 100 x 99 x 90 at 2 mm
    assert grid_axis(204, 0.977, 2.0)[0] == 100
    assert grid_axis(201, 0.977, 2.0)[0] == 99
    n, offset, step = grid_axis(60, 3.0, 2.0)
    assert n == 90 and step == pytest.approx(2 / 3)
    # grid centres aligned: centre of old grid (29.5) equals centre of new grid mapped back
    assert offset + (n - 1) / 2 * step == pytest.approx((60 - 1) / 2)
    assert grid_axis(60, 3.0, None) == (60, 0.0, 1.0)


def test_prepare_linear_resampling_reproduces_a_linear_ramp() -> None:
    # a ramp along x is reproduced exactly by trilinear interpolation at the aligned grid positions
    shape = (8, 10, 40)
    image = np.broadcast_to(np.arange(shape[2], dtype=float) * 10.0, shape).copy()
    mask = np.zeros(shape, bool)
    mask[2:6, 3:7, 10:30] = True
    cfg = load_config("ibsi_C") | {"round_intensities": False}
    cfg["resegmentation"] = {"range": None, "outlier_sd": None}
    prep = prepare(image, mask, (1.0, 1.0, 0.5), cfg)
    assert prep.spacing == pytest.approx((2.0, 2.0, 2.0))
    _n, offset, step = grid_axis(40, 0.5, 2.0)
    row = prep.image[0, 0]
    # consecutive new voxels differ by step * 10 HU
    assert np.allclose(np.diff(row), step * 10.0)
    assert (row[0] / 10.0 - offset) / step == pytest.approx(round((row[0] / 10.0 - offset) / step))


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_by_axis_equals_scipy_affine_transform(order: int) -> None:
    # per-axis matrix products give scipy's tensor-product spline (mode nearest), edges and extrapolation included
    from scipy import ndimage

    rng = np.random.default_rng(7)
    image = rng.normal(size=(9, 23, 30)) * 300.0
    cases = [
        ([-1 / 3, 0.0, 2.0], [1 / 3, 1.0, 1.0], (30, 20, 28)),  # z upsampled from its edge, x shifted, y cut
        ([0.5, -0.4, 12.3], [0.75, 1.2, 0.977], (11, 21, 19)),  # positions past the far edges
        ([2.0, 3.0, 1.5], [1.0, 1.0, 2.0], (5, 12, 13)),
    ]
    for offsets, steps, shape in cases:
        expected = ndimage.affine_transform(
            image, np.diag(steps), offset=offsets, output_shape=shape, order=order, mode="nearest"
        )
        got = resample(image, offsets, steps, shape, order)
        assert got.shape == shape
        assert np.abs(got - expected).max() < 1e-11 * np.abs(image).max()
    # long axes go through the banded products in blocks of rows
    image = rng.normal(size=(3, 400, 2)) * 300.0
    offsets, steps = [0.0, -0.3, 0.25], [1.0, 0.977, 0.5]
    expected = ndimage.affine_transform(
        image, np.diag(steps), offset=offsets, output_shape=(3, 410, 2), order=order, mode="nearest"
    )
    got = resample(image, offsets, steps, (3, 410, 2), order)
    assert np.abs(got - expected).max() < 1e-11 * np.abs(image).max()


def test_resample_mask_in_its_box_equals_the_whole_resampling() -> None:
    # linear partial volumes are 0 beyond one voxel of the mask's box, except where the box touches the edge
    rng = np.random.default_rng(11)
    for lo, hi in (((3, 5, 4), (7, 12, 9)), ((0, 5, 4), (7, 17, 9)), ((3, 0, 0), (11, 3, 14))):
        mask = np.zeros((11, 17, 14), bool)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        mask[box] = rng.random(mask[box].shape) < 0.7
        args = ([-0.4, 0.3, 0.0], [1 / 3, 1.3, 0.977], (34, 14, 16))
        expected = resample(mask.astype(np.float64), *args, 1)
        np.testing.assert_allclose(resample_mask(mask, *args, 1), expected, atol=1e-13)


def test_discretisation_fixed_bin_size_and_number() -> None:
    cfg = load_config("ibsi_C")
    values = np.array([-1000.0, -975.1, -975.0, 399.9, 400.0])
    levels, n = discretise(values, cfg["discretisation"], cfg)
    assert levels.tolist() == [1, 1, 2, 56, 57] and n == 57
    levels, n = discretise(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), {"method": "fixed_bin_number", "n_bins": 4}, cfg)
    assert levels.tolist() == [1, 2, 3, 4, 4] and n == 4


def test_resegmentation_range_then_outliers() -> None:
    image = np.array([[[-2000.0, 10, 11, 9, 10, 12, 8, 10, 11, 9, 10, 300]]])
    mask = np.ones(image.shape, bool)
    in_range = resegment(image, mask, {"range": [-1000, 400], "outlier_sd": None})
    assert in_range.sum() == 11  # only -2000 dropped
    both = resegment(image, mask, {"range": [-1000, 400], "outlier_sd": 3.0})
    # mean/SD over the 11 in-range voxels: 300 is beyond mean + 3 SD? (mean 36.4, SD 83.4 -> limit 286.5)
    assert both.sum() == 10 and not both[0, 0, -1]


def test_sphere_morphology() -> None:
    radius, spacing = 10.0, (0.5, 0.5, 0.5)
    ax = np.arange(-24, 25) * 0.5
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    mask = zz**2 + yy**2 + xx**2 <= radius**2
    image = np.full(mask.shape, 7.0)
    f = morphology_features(image, mask, mask, spacing)
    assert f["morph_volume"] == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.01)
    # the mesh lies half a voxel outside the outermost voxel centres
    assert f["morph_diam"] == pytest.approx(2 * radius + spacing[0], rel=0.01)
    # a solid sphere has variance r^2/5 along every axis: axis length 4 r / sqrt(5)
    assert f["morph_pca_maj_axis"] == pytest.approx(4 * radius / math.sqrt(5), rel=0.01)
    assert f["morph_pca_elongation"] == pytest.approx(1.0, abs=0.01)
    # AEE semi-axes are 2 sqrt(lambda) = 2 r / sqrt(5): volume density (sqrt(5) / 2)^3
    assert f["morph_vol_dens_aee"] == pytest.approx((math.sqrt(5) / 2) ** 3, rel=0.02)
    # the minimum enclosing ellipsoid of a sphere's mesh is the sphere through its outermost vertices
    enclosing = 4 / 3 * math.pi * (f["morph_diam"] / 2) ** 3
    assert f["morph_vol_dens_mvee"] == pytest.approx(f["morph_volume"] / enclosing, rel=0.01)
    assert f["morph_integ_int"] == pytest.approx(7.0 * f["morph_volume"])
    assert f["morph_com"] == pytest.approx(0.0, abs=1e-9)


def test_ellipsoid_area_and_mvee() -> None:
    assert ellipsoid_area(3.0, 3.0, 3.0) == pytest.approx(4 * math.pi * 9)
    # the IBSI series is continuous where a == b (its degenerate limit is used there)
    assert ellipsoid_area(5.0, 5.0, 2.0) == pytest.approx(ellipsoid_area(5.0, 5.0 - 1e-6, 2.0), rel=1e-6)
    assert ellipsoid_area(5.0, 5.0, 5.0 - 1e-6) == pytest.approx(4 * math.pi * 25, rel=1e-6)
    # near-spherical: the series is within 1 % of the true area (numerical surface integral)
    a, b, c = 5.0, 4.8, 4.5
    theta = np.linspace(0, math.pi, 2001)
    phi = np.linspace(0, 2 * math.pi, 2001)
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    integrand = np.sin(th) * np.sqrt(
        (b * c * np.sin(th) * np.cos(ph)) ** 2 + (a * c * np.sin(th) * np.sin(ph)) ** 2 + (a * b * np.cos(th)) ** 2
    )
    numeric = np.trapezoid(np.trapezoid(integrand, phi, axis=1), theta)
    assert ellipsoid_area(a, b, c) == pytest.approx(numeric, rel=0.01)
    cube = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float) + 5.0
    amat, centre = mvee(cube)
    assert np.allclose(centre, 5.0, atol=1e-6)
    assert np.allclose(1 / np.sqrt(np.linalg.eigvalsh(amat)), math.sqrt(3), rtol=2e-3)


@pytest.mark.parametrize("shape", [(5, 7, 6), (1, 5, 4), (1, 1, 6), (9, 3, 2)])
def test_moran_geary_sums_equal_brute_force(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    mask = rng.random(shape) < 0.6
    mask.flat[0] = mask.flat[-1] = True  # the ROI spans the whole box
    values = rng.normal(size=mask.shape) * 10
    spacing = (2.0, 0.7, 1.3)
    pos = np.argwhere(mask) * np.array(spacing)
    d = values[mask] - values[mask].mean()
    dist = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    w = np.where(dist > 0, 1 / np.where(dist > 0, dist, 1), 0)
    expected = (w.sum(), (w * np.outer(d, d)).sum(), (w * (d[:, None] - d[None]) ** 2).sum())
    # single-precision FFTs: exact up to float32 rounding
    assert np.allclose(_weighted_pair_sums(mask, values, spacing), expected, rtol=1e-5)


def test_local_intensity_sphere_and_peaks() -> None:
    spacing = (1.0, 1.0, 1.0)
    kernel = sphere_kernel(spacing)
    r = np.arange(-7, 8)
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    assert kernel.sum() == int(np.sum(zz**2 + yy**2 + xx**2 <= PEAK_RADIUS_MM**2))
    image = np.zeros((30, 30, 30))
    image[15, 15, 15] = 1000.0
    roi = np.zeros(image.shape, bool)
    roi[10:20, 10:20, 10:20] = True
    f = local_intensity_features(image, roi, spacing)
    assert f["loc_peak_loc"] == pytest.approx(1000.0 / kernel.sum())
    assert f["loc_peak_glob"] == pytest.approx(1000.0 / kernel.sum())


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.7, 1.3)])
@pytest.mark.parametrize(
    ("shape", "lo", "hi"),
    [
        ((40, 41, 39), (10, 11, 12), (30, 29, 26)),
        ((20, 25, 30), (0, 0, 0), (19, 24, 29)),
        ((15, 40, 9), (2, 30, 0), (14, 39, 3)),
    ],
)
def test_sphere_sums_equal_zero_padded_convolution(spacing, shape, lo, hi) -> None:
    from scipy.signal import fftconvolve

    kernel = sphere_kernel(spacing).astype(np.float64)
    image = np.random.default_rng(0).normal(size=shape) * 300
    expected = fftconvolve(image, kernel, mode="same")  # zero beyond the edges
    got, box = sphere_sums(image, kernel, np.array(lo), np.array(hi))
    np.testing.assert_allclose(got, expected[box], rtol=0, atol=1e-9)


def test_ivh_fixed_bin_number() -> None:
    cfg = load_config("ibsi_E")
    values = np.linspace(0.0, 999.0, 1000)  # one voxel per level 1..1000
    f = ivh_features(values, cfg)
    # V(i) = (1001 - i) / 1000; gamma = (i - 1) / 999
    assert f["ivh_v10"] == pytest.approx((1001 - 101) / 1000)  # first level with gamma >= 0.1 is 101
    assert f["ivh_i10"] == 901.0 and f["ivh_i90"] == 101.0
    assert f["ivh_auc"] == pytest.approx(0.5, abs=0.002)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.8, 0.7)])
def test_hull_candidates_keep_every_hull_vertex(spacing: tuple[float, float, float]) -> None:
    from scipy import ndimage
    from scipy.spatial import ConvexHull

    from tracker.radiomics.morphology import hull_candidates, mesh

    rng = np.random.default_rng(5)
    blob = ndimage.gaussian_filter(rng.normal(size=(24, 26, 22)), 2.0) > 0.02
    verts, _ = mesh(blob, spacing)
    keep = hull_candidates(verts, spacing)
    assert keep.size < 0.8 * len(verts)
    full, part = ConvexHull(verts), ConvexHull(verts[keep])
    np.testing.assert_array_equal(keep[part.vertices], full.vertices)
    assert part.volume == pytest.approx(full.volume, rel=1e-12)
    assert part.area == pytest.approx(full.area, rel=1e-12)


def test_sorted_values_by_counting_equal_sort() -> None:
    from tracker.radiomics.intensity import sorted_values

    rng = np.random.default_rng(2)
    for n in (1, 2, 17, 5000):
        hu = np.round(rng.normal(-300.0, 400.0, n))  # integer-valued: counting path
        np.testing.assert_array_equal(sorted_values(hu), np.sort(hu))
        real = rng.normal(size=n)  # not integers: comparison sort
        np.testing.assert_array_equal(sorted_values(real), np.sort(real))
    sparse = np.array([0.0, 1e9, -3.0, 7.0])  # integers over a range far wider than the count
    np.testing.assert_array_equal(sorted_values(sparse), np.sort(sparse))


def test_index_moments_equal_sums_over_voxels() -> None:
    from tracker.radiomics.morphology import _index_moments

    mask = np.random.default_rng(4).random((6, 9, 7)) < 0.4
    idx = np.argwhere(mask).astype(np.int64)
    first, second = _index_moments(mask)
    np.testing.assert_array_equal(first, idx.sum(axis=0))
    np.testing.assert_array_equal(second, idx.T @ idx)

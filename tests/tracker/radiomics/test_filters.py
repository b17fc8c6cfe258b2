"""IBSI 2 filters against known truths: numpy's padding, impulse responses, filter identities, exact crops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tracker.errors import MetatrackError
from tracker.radiomics import extract, load_config
from tracker.radiomics.config import validate_config
from tracker.radiomics.filters import apply_filter, response_in_box
from tracker.radiomics.filters.boundary import pad, padded_box
from tracker.radiomics.filters.rotations import ROTATIONS_3D, rotate, unrotate
from tracker.radiomics.filters.spatial import LAWS_KERNELS
from tracker.radiomics.filters.wavelets import WAVELET_LOW_PASS

BASE = {"name": "t", "resampling": None, "discretisation": {"method": "none"}, "ivh": {"method": "none"}}


def _spec(**kw: object) -> dict:
    return validate_config({**BASE, "texture": {"modes": ["3D"]}, "filter": kw})["filter"]


@pytest.mark.parametrize(
    ("boundary", "numpy_mode"),
    [("constant", "constant"), ("nearest", "edge"), ("periodic", "wrap"), ("mirror", "symmetric")],
)
def test_padding_matches_numpy(boundary: str, numpy_mode: str) -> None:
    a = np.random.default_rng(0).normal(size=(4, 5, 3))
    padded = np.pad(a, ((2, 2), (7, 7), (3, 3)), mode=numpy_mode)
    np.testing.assert_array_equal(pad(a, (2, 7, 3), boundary), padded)
    # a box partly outside, gathered in single precision
    box = padded_box(a, (-2, 1, -3), (3, 12, 2), boundary, np.float32)
    assert box.dtype == np.float32
    np.testing.assert_array_equal(box, padded[0:5, 8:19, 0:5].astype(np.float32))


def test_laws_impulse_response_is_the_kernel_first_along_x() -> None:
    image = np.zeros((9, 9, 9))
    image[4, 4, 4] = 1.0
    out = apply_filter(image, (1.0, 1.0, 1.0), _spec(kind="laws", kernel="E5L5S5", boundary="constant"))
    truth = np.einsum("i,j,k->ijk", LAWS_KERNELS["S5"], LAWS_KERNELS["L5"], LAWS_KERNELS["E5"])  # (z, y, x)
    np.testing.assert_allclose(out[2:7, 2:7, 2:7], truth, atol=1e-15)
    assert np.count_nonzero(out) == np.count_nonzero(truth)


def test_mean_filter_of_ones_counts_the_voxels_inside_under_a_zero_boundary() -> None:
    out = apply_filter(np.ones((5, 5, 5)), (1.0, 1.0, 1.0), _spec(kind="mean", support=3, boundary="constant"))
    assert out[0, 0, 0] == pytest.approx(8 / 27)
    assert out[2, 2, 2] == pytest.approx(1.0)
    for boundary in ("nearest", "periodic", "mirror"):
        spec = _spec(kind="mean", support=3, boundary=boundary)
        np.testing.assert_allclose(apply_filter(np.ones((5, 5, 5)), (1.0, 1.0, 1.0), spec), 1.0)


@pytest.mark.parametrize("name", list(WAVELET_LOW_PASS))
def test_wavelet_low_pass_is_orthonormal(name: str) -> None:
    low = WAVELET_LOW_PASS[name]
    assert low.sum() == pytest.approx(math.sqrt(2.0), abs=1e-10)
    for shift in range(0, low.size, 2):
        assert np.dot(low[shift:], low[: low.size - shift]) == pytest.approx(1.0 if shift == 0 else 0.0, abs=1e-10)


def test_haar_of_a_constant_volume_scales_by_root_two_per_axis_and_level() -> None:
    image = np.full((8, 8, 8), 3.0)
    spec = _spec(kind="wavelet", wavelet="haar", subband="LLL", level=2, boundary="nearest")
    np.testing.assert_allclose(apply_filter(image, (1.0, 1.0, 1.0), spec), 3.0 * 2.0**3)
    spec = _spec(kind="wavelet", wavelet="haar", subband="HLL", level=1, boundary="periodic")
    np.testing.assert_allclose(apply_filter(image, (1.0, 1.0, 1.0), spec), 0.0, atol=1e-12)


def test_band_pass_filters_ignore_a_constant_offset() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(size=(16, 16, 16))
    for spec in (
        _spec(kind="simoncelli", level=1, boundary="periodic"),
        _spec(kind="simoncelli", level=2, boundary="mirror", riesz_order=[0, 1, 1]),
        _spec(kind="log", sigma_mm=1.0, boundary="periodic", riesz_order=[1, 0, 0]),
    ):
        shifted = apply_filter(image + 100.0, (1.0, 1.0, 1.0), spec)
        # the Fourier filters transform in single precision: ~1e-7 of the offset remains
        np.testing.assert_allclose(shifted, apply_filter(image, (1.0, 1.0, 1.0), spec), atol=1e-4)


def test_gabor_half_turn_equals_full_turn() -> None:
    from tracker.radiomics.filters.spatial import _gabor_planes

    image = np.random.default_rng(2).normal(size=(3, 12, 12))
    spec = _spec(kind="gabor", sigma_mm=2.0, wavelength_mm=3.0, gamma=0.8, boundary="mirror")
    half, _ = _gabor_planes(image, (1.0, 1.0), spec, [k * math.pi / 4 for k in range(4)], (0, 0))
    full, _ = _gabor_planes(image, (1.0, 1.0), spec, [k * math.pi / 4 for k in range(8)], (0, 0))
    np.testing.assert_allclose(half, full, rtol=1e-10)


def test_the_24_rotations_are_distinct_and_undone() -> None:
    a = np.arange(24).reshape(2, 3, 4)
    seen = {rotate(a, r).tobytes() + bytes(rotate(a, r).shape) for r in ROTATIONS_3D}
    assert len(seen) == 24
    for r in ROTATIONS_3D:
        np.testing.assert_array_equal(unrotate(rotate(a, r), r), a)


BOX_SPECS = [
    {"kind": "laws", "kernel": "E5L5S5", "rotation_invariant": True, "pooling": "max", "energy_distance": 2},
    {"kind": "wavelet", "wavelet": "db2", "subband": "LHL", "level": 2, "rotation_invariant": True},
    {"kind": "wavelet", "wavelet": "db3", "subband": "HHH", "level": 2, "rotation_invariant": True, "pooling": "max"},
    {"kind": "wavelet", "wavelet": "coif1", "subband": "HLL", "level": 1},
    {"kind": "log", "sigma_mm": 1.5},
    {"kind": "gabor", "sigma_mm": 2.0, "wavelength_mm": 2.0, "gamma": 1.5, "rotation_invariant": True},
]


@pytest.mark.parametrize("spec", BOX_SPECS, ids=[f"{s['kind']}{i}" for i, s in enumerate(BOX_SPECS)])
def test_response_in_a_box_equals_the_whole_volume_response(spec: dict) -> None:
    image = np.random.default_rng(3).normal(size=(40, 44, 48))
    full = _spec(boundary="mirror", **spec)
    whole = apply_filter(image, (1.5, 1.0, 1.0), full)
    inside = response_in_box(image, (1.5, 1.0, 1.0), full, (17, 19, 21), (23, 25, 27))
    np.testing.assert_allclose(inside, whole[17:23, 19:25, 21:27], atol=1e-10)
    # at the image's edge the box sees the boundary condition; exact unless an asymmetric kernel runs in stages
    # (wavelet levels >= 2 pad each stage's output, the box pads the input once and composes the stages)
    if spec["kind"] != "wavelet":
        edge = response_in_box(image, (1.5, 1.0, 1.0), full, (0, 9, 10), (6, 13, 15))
        np.testing.assert_allclose(edge, whole[0:6, 9:13, 10:15], atol=1e-10)


def test_filter_section_errors_name_the_field() -> None:
    with pytest.raises(MetatrackError, match=r"'filter/kernel'.*needs 2 1D kernels in 2D"):
        _spec(kind="laws", kernel="E5L5S5", mode="2D")
    with pytest.raises(MetatrackError, match=r"'filter'.*'wavelength_mm' is a required property"):
        _spec(kind="gabor", sigma_mm=1.0, gamma=1.0)
    with pytest.raises(MetatrackError, match=r"'filter/riesz_order'.*applies to log or simoncelli"):
        _spec(kind="mean", support=3, riesz_order=[1, 0, 0])
    with pytest.raises(MetatrackError, match=r"'filter/wavelet'"):
        _spec(kind="wavelet", wavelet="db9", subband="LLH")


def test_a_tagged_filter_adds_its_features_to_the_unfiltered_ones() -> None:
    section = {"kind": "mean", "support": 3, "tag": "mean3", "boundary": "nearest"}
    cfg = load_config({**BASE, "texture": {"modes": ["3D"]}, "families": ["stat"], "filter": section})
    image = np.zeros((7, 7, 7))
    image[:, :, 4:] = 6.0
    mask = np.zeros(image.shape, dtype=bool)
    mask[3, 3, 3:5] = True
    fs = extract(image, mask, (1.0, 1.0, 1.0), cfg)
    assert fs.values["stat_mean"] == pytest.approx(3.0)  # voxels 0 and 6
    assert fs.values["mean3_stat_min"] == pytest.approx(2.0)  # x = 3: a third of its 3-wide window is 6
    assert fs.values["mean3_stat_max"] == pytest.approx(4.0)  # x = 4: two thirds
    assert fs.meta["mean3_stat_mean"][0].endswith("(mean 3 3D)")


@pytest.mark.parametrize("kernel", ["E5L5S5", "E3W5R5", "L5E5E5"])
@pytest.mark.parametrize("pooling", ["max", "average"])
def test_laws_rotation_pooling_equals_pooling_over_rotated_images(kernel: str, pooling: str) -> None:
    from scipy import ndimage

    from tracker.radiomics.filters.rotations import pooled
    from tracker.radiomics.filters.spatial import _rotated_kernel_sets, laws_kernels

    image = np.random.default_rng(4).normal(size=(9, 10, 11))
    spec = _spec(kind="laws", kernel=kernel, rotation_invariant=True, pooling=pooling, boundary="mirror")
    kernels = laws_kernels(kernel, 3)

    def plain(a: np.ndarray) -> np.ndarray:
        for ax, k in zip((2, 1, 0), kernels, strict=True):
            a = ndimage.convolve1d(a, k, axis=ax, mode="reflect")
        return a

    truth = pooled(image, plain, ROTATIONS_3D, pooling)
    np.testing.assert_allclose(apply_filter(image, (1.0, 1.0, 1.0), spec), truth, atol=1e-12)
    assert len(_rotated_kernel_sets(dict(zip((2, 1, 0), kernels, strict=True)), ROTATIONS_3D)) <= 6


@pytest.mark.parametrize(("wavelet", "subband", "level"), [("db2", "LHL", 2), ("coif1", "HHL", 1), ("haar", "HHH", 3)])
@pytest.mark.parametrize("pooling", ["max", "average"])
def test_wavelet_rotation_pooling_equals_pooling_over_rotated_images(
    wavelet: str, subband: str, level: int, pooling: str
) -> None:
    from tracker.radiomics.filters.rotations import pooled

    image = np.random.default_rng(5).normal(size=(9, 10, 11))
    fixed = _spec(kind="wavelet", wavelet=wavelet, subband=subband, level=level, boundary="mirror")
    spec = {**fixed, "rotation_invariant": True, "pooling": pooling}
    truth = pooled(image, lambda a: apply_filter(a, (1.0, 1.0, 1.0), fixed), ROTATIONS_3D, pooling)
    np.testing.assert_allclose(apply_filter(image, (1.0, 1.0, 1.0), spec), truth, atol=1e-12)


def test_half_spectrum_filtering_is_the_real_part_of_the_full_one() -> None:
    from tracker.radiomics.filters.wavelets import fourier_filter, half_spectrum, riesz_transfer, simoncelli_transfer

    image = np.random.default_rng(6).normal(size=(7, 10, 9))
    spec = _spec(kind="simoncelli", boundary="periodic")
    for transfer in (simoncelli_transfer(image.shape, (0, 1, 2), 1), riesz_transfer(image.shape, (0, 1, 2), (1, 1, 0))):
        truth = np.fft.ifftn(np.fft.fftn(image) * transfer).real
        out = fourier_filter(image, spec, half_spectrum(transfer, (0, 1, 2)), 0)
        np.testing.assert_allclose(out, truth, atol=1e-5)  # single-precision transforms


@pytest.mark.parametrize(("shape", "axes"), [((7, 10, 9), (0, 1, 2)), ((8, 11, 12), (0, 1, 2)), ((3, 10, 9), (1, 2))])
def test_simoncelli_half_grid_equals_the_half_of_the_full_transfer(shape: tuple, axes: tuple) -> None:
    from tracker.radiomics.filters.wavelets import half_spectrum, simoncelli_half, simoncelli_transfer

    for level in (1, 2):
        full = half_spectrum(simoncelli_transfer(shape, axes, level), axes)
        np.testing.assert_array_equal(simoncelli_half(shape, axes, level), full)


@pytest.mark.parametrize("mode", ["3D", "2D"])
def test_simoncelli_in_a_box_spanning_the_image_equals_the_whole_image_filter(mode: str) -> None:
    # the box's single transform (band-limited, pruned to the box) is the whole image's padded transform
    image = np.random.default_rng(8).normal(size=(12, 30, 26)) * 100.0
    for level in (1, 2):
        spec = _spec(kind="simoncelli", mode=mode, level=level, boundary="mirror")
        whole = apply_filter(image, (1.0, 1.0, 1.0), spec)
        box = response_in_box(image, (1.0, 1.0, 1.0), spec, (0, 0, 0), image.shape)
        np.testing.assert_allclose(box, whole, atol=1e-5 * np.abs(whole).max())


@pytest.mark.parametrize(("shape", "axes"), [((20, 24, 30), (0, 1, 2)), ((4, 27, 22), (1, 2))])
def test_band_filter_in_a_box_equals_the_full_transform_cut_to_the_box(shape: tuple, axes: tuple) -> None:
    from tracker.radiomics.filters.wavelets import band_filter_box, fourier_filter, simoncelli_band, simoncelli_half

    image = np.random.default_rng(9).normal(size=shape) * 100.0
    box = (slice(2, 9), slice(5, 17), slice(3, 11))
    spec = _spec(kind="simoncelli", mode="3D" if len(axes) == 3 else "2D", boundary="periodic")
    for level in (1, 2, 3):
        full = fourier_filter(image, spec, simoncelli_half(shape, axes, level), 0)[box]
        keep, _ = simoncelli_band(shape, axes, level)
        if level == 2:  # the band's reach: |w| <= pi / 2 keeps about half of each axis's frequencies
            assert all(0.4 < k.size / n < 0.6 for k, n in zip(keep[:-1], (shape[a] for a in axes[:-1]), strict=True))
        got = band_filter_box(image, axes, simoncelli_band(shape, axes, level), box)
        np.testing.assert_allclose(got, full, atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("mode", ["3D", "2D"])
def test_log_shared_passes_equal_the_sum_of_the_per_axis_terms(mode: str) -> None:
    from scipy import ndimage

    from tracker.radiomics.filters.spatial import log_filter

    image = np.random.default_rng(10).normal(size=(11, 13, 15)) * 100.0
    spacing = (2.0, 1.0, 0.8)
    spec = _spec(kind="log", sigma_mm=1.5, mode=mode, boundary="mirror")
    axes = (0, 1, 2) if mode == "3D" else (1, 2)
    truth = np.zeros(image.shape)
    for ax in axes:
        term = image
        for other in axes:
            sigma = 1.5 / spacing[other]
            order = 2 if other == ax else 0
            term = ndimage.gaussian_filter1d(term, sigma, axis=other, order=order, mode="reflect", truncate=4.0)
        truth += term
    np.testing.assert_allclose(log_filter(image, spacing, spec), truth, atol=1e-12 * np.abs(truth).max())

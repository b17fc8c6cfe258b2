"""One suite for every deformable backend in ``registration.backends.BACKENDS`` (through a preset that uses it).

A backend added to the table (and a preset naming it) runs here without changes: accuracy on the small
phantom against its known landmarks, no folding, transform files that our loader reads back and that
round-trip, a clean workdir, its metrics, and the direction of its field on a known deformation.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from registration import PRESETS, intensity, map_points, register
from registration.backends import BACKENDS, DeformableInputs
from registration.phantom import make_pair
from registration.transforms import is_field_file, read_transform
from tests.helpers import gaussian_bump_field
from tracker.errors import MetatrackError

VOXEL_MM = 4.0
SHAPE = (48, 48, 48)
DEFORMABLE_TRE_BOUND_MM = 2.2
AFFINE_TRE_BOUND_MM = 3.2
ROUND_TRIP_MEAN_MM = 0.05
ROUND_TRIP_MAX_MM = 0.3
FOLDING_BOUND = 0.0005
BUMP_MM = np.array([4.0, -3.0, 3.0])  # peak (x, y, z) of the known deformation of the direction test
BUMP_SIGMA_MM = 30.0
BUMP_ERROR_BOUND_MM = 1.0
SEED = 1
# One preset per backend (the first that names it), so each backend runs once.
PRESET_OF = {name: next(p for p, cfg in PRESETS.items() if cfg.deformable == name) for name in BACKENDS}
DEFORMABLE = [name for name in BACKENDS if name != "none"]


@pytest.fixture(scope="module")
def pair():
    return make_pair(
        SHAPE,
        (VOXEL_MM,) * 3,
        seed=3,
        rotation_deg=4.0,
        translation_mm=5.0,
        deformation_mm=14.0,
        followup_spacing=(1.25 * VOXEL_MM, VOXEL_MM, VOXEL_MM),
        noise_followup=15.0,
        hu_offset=50.0,
        n_landmarks=100,
    )


@pytest.fixture(scope="module")
def results(pair, tmp_path_factory):
    """Registration of the pair per backend, run lazily (once) on first use."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            workdir = tmp_path_factory.mktemp(name)
            res = register(pair.baseline, pair.followup, preset=PRESET_OF[name], seed=SEED, workdir=workdir)
            cache[name] = (res, workdir)
        return cache[name]

    return get


def _tre(pair, res) -> np.ndarray:
    return np.linalg.norm(map_points(pair.landmarks_baseline, res.forward) - pair.landmarks_scan, axis=1)


def test_every_preset_names_a_backend_and_every_backend_has_a_preset():
    assert {cfg.deformable for cfg in PRESETS.values()} == set(BACKENDS)
    for name, backend in BACKENDS.items():
        assert backend.name == name and backend.engine


@pytest.mark.parametrize("name", list(BACKENDS))
def test_tre_below_bound_and_below_affine_only(pair, results, name):
    res, _ = results(name)
    tre = _tre(pair, res).mean()
    initial = np.linalg.norm(pair.landmarks_baseline - pair.landmarks_scan, axis=1).mean()
    assert tre < initial / 2
    if name == "none":
        assert tre < AFFINE_TRE_BOUND_MM
    else:
        assert tre < DEFORMABLE_TRE_BOUND_MM
        assert tre < _tre(pair, results("none")[0]).mean()


@pytest.mark.parametrize("name", list(BACKENDS))
def test_no_folding(results, name):
    res, _ = results(name)
    assert res.metrics["folding_share"] < FOLDING_BOUND
    assert res.metrics["jacobian_min"] > 0.0


@pytest.mark.parametrize("name", list(BACKENDS))
def test_files_read_back_and_round_trip(pair, results, name):
    res, _ = results(name)
    fields = [p for p in res.forward + res.inverse if is_field_file(p)]
    assert len(fields) == (0 if name == "none" else 2)
    for path in res.forward + res.inverse:
        read_transform(path)
    back = map_points(map_points(pair.landmarks_baseline, res.forward), res.inverse)
    error = np.linalg.norm(back - pair.landmarks_baseline, axis=1)
    assert error.mean() < ROUND_TRIP_MEAN_MM
    assert error.max() < ROUND_TRIP_MAX_MM


@pytest.mark.parametrize("name", list(BACKENDS))
def test_workdir_holds_only_the_declared_transform_files(results, name):
    res, workdir = results(name)
    assert sorted(workdir.iterdir()) == sorted(set(res.forward + res.inverse))


@pytest.mark.parametrize("name", list(BACKENDS))
def test_metrics_name_engine_and_preset(results, name):
    res, _ = results(name)
    assert res.metrics["engine"] == BACKENDS[name].engine
    assert res.metrics["preset"] == PRESET_OF[name]


@pytest.mark.parametrize("name", DEFORMABLE)
def test_field_maps_fixed_points_to_moving_points(pair, tmp_path, name):
    """With the affine forced to identity, a known field d with fixed(p) = moving(p + d(p)) comes back as d."""
    moving = intensity.clip_window(pair.baseline)
    truth = gaussian_bump_field(moving, BUMP_MM, BUMP_SIGMA_MM)
    fixed = sitk.Resample(moving, moving, sitk.DisplacementFieldTransform(sitk.Image(truth)), sitk.sitkLinear, -1000.0)
    body = intensity.body_mask(fixed)
    inputs = DeformableInputs(fixed, moving, sitk.AffineTransform(3), body, fixed)
    got = BACKENDS[name].displacement(inputs, PRESETS[PRESET_OF[name]], threads=2, seed=SEED, workdir=tmp_path)
    assert got is not None and got.GetSize() == fixed.GetSize()
    inside = sitk.GetArrayFromImage(sitk.BinaryErode(body, [3, 3, 3])) > 0
    expected = sitk.GetArrayFromImage(truth)[inside]
    estimate = sitk.GetArrayFromImage(got)[inside]
    assert np.linalg.norm(estimate - expected, axis=1).mean() < BUMP_ERROR_BOUND_MM
    # the sense, not only the size: the estimate points along the truth
    assert (estimate * expected).sum() > 0.5 * (expected * expected).sum()
    assert list(tmp_path.iterdir()) == []


def test_syn_is_reproducible_for_a_seed_and_thread_count(pair, results, tmp_path):
    res, _ = results("syn")
    again = register(pair.baseline, pair.followup, preset=PRESET_OF["syn"], seed=SEED, workdir=tmp_path)
    a = map_points(pair.landmarks_baseline, res.forward)
    b = map_points(pair.landmarks_baseline, again.forward)
    assert np.abs(a - b).max() < 1e-6


def test_unknown_preset_is_refused_in_one_line(pair, tmp_path):
    with pytest.raises(MetatrackError) as err:
        register(pair.baseline, pair.followup, preset="nope", workdir=tmp_path)
    assert str(err.value) == f"preset: unknown value 'nope'; expected one of {', '.join(PRESETS)}"

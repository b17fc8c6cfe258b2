"""Deformable accuracy, folding, determinism and prior initialisation on a small synthetic pair."""

from __future__ import annotations

import numpy as np
import pytest

from registration import map_points, register
from registration.phantom import make_pair

VOXEL_MM = 3.0
TRE_BOUND_MM = 1.5
FOLDING_BOUND = 0.0005


@pytest.fixture(scope="module")
def pair():
    return make_pair(
        (64, 64, 64),
        (VOXEL_MM, VOXEL_MM, VOXEL_MM),
        seed=3,
        rotation_deg=5.0,
        translation_mm=6.0,
        deformation_mm=8.0,
        followup_spacing=(3.5, VOXEL_MM, VOXEL_MM),
        noise_followup=30.0,
        hu_offset=50.0,
    )


@pytest.fixture(scope="module")
def fast(pair, tmp_path_factory):
    return register(pair.baseline, pair.followup, preset="fast", seed=5, workdir=tmp_path_factory.mktemp("a"))


def _tre(pair, res) -> np.ndarray:
    return np.linalg.norm(map_points(pair.landmarks_baseline, res.forward) - pair.landmarks_scan, axis=1)


def test_deformable_tre_well_below_initial_displacement(pair, fast):
    initial = np.linalg.norm(pair.landmarks_baseline - pair.landmarks_scan, axis=1).mean()
    tre = _tre(pair, fast)
    assert initial > 7.0
    assert tre.mean() < TRE_BOUND_MM
    inv = np.linalg.norm(map_points(pair.landmarks_scan, fast.inverse) - pair.landmarks_baseline, axis=1)
    assert inv.mean() < TRE_BOUND_MM
    assert fast.metrics["folding_share"] < FOLDING_BOUND
    assert fast.metrics["jacobian_min"] > 0.0
    assert fast.metrics["ncc_after"] > fast.metrics["ncc_before"]
    assert not fast.needs_review, fast.review_reasons


def test_inverse_field_undoes_forward(pair, fast):
    back = map_points(map_points(pair.landmarks_baseline, fast.forward), fast.inverse)
    assert np.linalg.norm(back - pair.landmarks_baseline, axis=1).mean() < 0.1 * VOXEL_MM


def test_same_seed_and_threads_give_identical_transforms(pair, fast, tmp_path):
    again = register(pair.baseline, pair.followup, preset="fast", seed=5, workdir=tmp_path)
    a = map_points(pair.landmarks_baseline, fast.forward)
    b = map_points(pair.landmarks_baseline, again.forward)
    assert np.abs(a - b).max() < 1e-6
    assert [p.suffix for p in again.forward] == [p.suffix for p in fast.forward]
    for key in ("seed", "threads", "preset", "version_simpleitk"):
        assert again.metrics[key] == fast.metrics[key]


def test_prior_initialisation_with_renamed_files(pair, fast, tmp_path):
    # The lead stores transforms under content hashes: only the extension survives.
    renamed = []
    for i, path in enumerate(fast.forward):
        suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
        target = tmp_path / f"blob{i}{suffix}"
        target.write_bytes(path.read_bytes())
        renamed.append(target)
    prior = type(fast)(forward=renamed, inverse=[])
    res = register(pair.baseline, pair.followup, preset="fast", seed=5, workdir=tmp_path / "w", initial=prior)
    assert res.metrics["initialised_from_prior"] == 1
    assert _tre(pair, res).mean() < TRE_BOUND_MM

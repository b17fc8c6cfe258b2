"""The review flag: raised for obviously wrong registrations, quiet for a good one."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from registration import map_points, register
from registration.phantom import make_pair
from registration.quality import review
from tracker.errors import MetatrackError


@pytest.fixture(scope="module")
def pair():
    return make_pair((48, 64, 64), (3.0, 3.0, 3.0), seed=21, deformation_mm=4.0)


def test_unrelated_noise_image_needs_review(pair, tmp_path):
    rng = np.random.default_rng(0)
    noise = sitk.GetImageFromArray(rng.normal(-500.0, 300.0, size=(48, 64, 64)).astype(np.float32))
    noise.CopyInformation(pair.followup)
    res = register(pair.baseline, noise, preset="fast", workdir=tmp_path)
    assert res.needs_review
    assert any("similarity" in r or "body" in r for r in res.review_reasons)


def test_head_foot_flipped_followup_needs_review(pair, tmp_path):
    flipped = sitk.Flip(pair.followup, [False, True, True])
    flipped.CopyInformation(pair.followup)
    res = register(pair.baseline, flipped, preset="affine", workdir=tmp_path)
    assert res.needs_review


def test_good_pair_passes_and_metrics_are_complete(pair, tmp_path):
    res = register(pair.baseline, pair.followup, preset="fast", workdir=tmp_path)
    assert not res.needs_review, res.review_reasons
    for key in ("ncc_before", "ncc_after", "jacobian_min", "folding_share", "runtime_s", "cpu_s", "preset"):
        assert key in res.metrics
    assert res.metrics["ncc_after"] > res.metrics["ncc_before"]
    tre = np.linalg.norm(map_points(pair.landmarks_baseline, res.forward) - pair.landmarks_scan, axis=1)
    assert tre.mean() < 1.5


def test_review_rules_on_handmade_metrics():
    good = {
        "body_voxels": 10_000,
        "ncc_before": 0.4,
        "ncc_after": 0.9,
        "body_dice": 0.97,
        "folding_share": 0.0,
        "affine_scale_min": 0.95,
        "affine_scale_max": 1.05,
        "affine_det": 1.0,
    }
    assert review(good) == []
    assert len(review({**good, "folding_share": 0.01})) == 1
    assert len(review({**good, "affine_scale_max": 1.6})) == 1
    assert len(review({**good, "affine_det": -1.0})) == 1


def test_unknown_preset_is_a_user_error(pair, tmp_path):
    with pytest.raises(MetatrackError, match="preset"):
        register(pair.baseline, pair.followup, preset="turbo", workdir=tmp_path)

"""map_points against the cohort simulator's truth (psi_k and its landmarks) on a small cohort."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from registration import map_points, register

SPACING_MM = 4.0
TRE_BOUND_MM = 2.0  # half a voxel of the 4 mm grid


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from tracker.simulator import SimulationConfig, load_truth, simulate_cohort

    out = tmp_path_factory.mktemp("sim")
    cfg = SimulationConfig(
        n_patients=1,
        seed=4,
        shape=(72, 72, 48),
        spacing=(SPACING_MM, SPACING_MM, SPACING_MM),
        min_followups=1,
        max_followups=1,
        workers=1,
    )
    simulate_cohort(cfg, out)
    truth = load_truth(out / "truth.json")
    patient = next(iter(truth["patients"].values()))
    scans = patient["scans"]
    fixed = sitk.ReadImage(str(out / scans[0]["image"]), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(out / scans[1]["image"]), sitk.sitkFloat32)
    res = register(fixed, moving, preset="fast", workdir=out / "reg")
    return patient, res


def test_inverse_matches_true_map_to_baseline(case):
    from tracker.simulator import true_map_to_baseline

    patient, res = case
    marks = patient["scans"][1]["landmarks"]
    q = np.asarray([m["scan"] for m in marks])
    p = np.asarray([m["baseline"] for m in marks])
    np.testing.assert_allclose(true_map_to_baseline(patient, 1, q), p, atol=1e-3)
    initial = np.linalg.norm(q - p, axis=1).mean()
    tre = np.linalg.norm(map_points(q, res.inverse) - p, axis=1)
    assert tre.mean() < min(TRE_BOUND_MM, 0.4 * initial)


def test_forward_matches_true_map_to_scan(case):
    from tracker.simulator import true_map_to_scan

    patient, res = case
    p = np.asarray([m["baseline"] for m in patient["scans"][1]["landmarks"]])
    q_true = true_map_to_scan(patient, 1, p)
    tre = np.linalg.norm(map_points(p, res.forward) - q_true, axis=1)
    assert tre.mean() < TRE_BOUND_MM
    assert res.metrics["folding_share"] < 0.0005

"""Calibration: the IPCW cloglog fit recovers a known miscalibration, the recalibration undoes it, the reliability
table compares deciles of predicted risk with Kaplan-Meier."""

from __future__ import annotations

import numpy as np
import pytest

from tracker.survival.calibration import (
    Recalibration,
    calibration_at,
    fit_recalibration,
    horizon_outcome,
)
from tracker.survival.intervals import cloglog, from_cloglog

GRID = np.arange(1.0, 37.0)
TRUE_INTERCEPT, TRUE_SLOPE = 0.5, 2.0  # the predictions below need this map to become the truth


@pytest.fixture(scope="module")
def cohort() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(months, events, true curves, miscalibrated curves): exponential hazards, uniform censoring."""
    rng = np.random.default_rng(0)
    lam = 0.03 * np.exp(rng.normal(0.0, 1.0, 20_000))
    t, c = rng.exponential(1.0 / lam), rng.uniform(6.0, 36.0, len(lam))
    truth = np.exp(-lam[:, None] * GRID[None, :])
    wrong = from_cloglog((cloglog(truth) - TRUE_INTERCEPT) / TRUE_SLOPE)
    return np.minimum(t, c), (t <= c).astype(int), truth, wrong


def test_true_curves_are_calibrated(cohort) -> None:
    months, events, truth, _ = cohort
    cal = calibration_at(months, events, 1.0 - truth[:, 11], 12.0)
    assert cal["slope"] == pytest.approx(1.0, abs=0.05)
    assert cal["intercept"] == pytest.approx(0.0, abs=0.05)
    table = cal["reliability"]
    assert len(table) == 10 and sum(r["n"] for r in table) == len(months)
    assert max(abs(r["predicted"] - r["observed"]) for r in table) < 0.03


def test_miscalibration_is_measured_and_recalibration_recovers_slope_one(cohort) -> None:
    months, events, _, wrong = cohort
    before = calibration_at(months, events, 1.0 - wrong[:, 11], 12.0)
    assert before["slope"] == pytest.approx(TRUE_SLOPE, rel=0.05)
    assert before["intercept"] == pytest.approx(TRUE_INTERCEPT, abs=0.1)
    recal = fit_recalibration(months, events, wrong, list(GRID))
    assert recal.horizons == (6.0, 12.0, 24.0)
    np.testing.assert_allclose(recal.slope, TRUE_SLOPE, rtol=0.05)
    fixed = recal.apply(wrong, list(GRID))
    after = calibration_at(months, events, 1.0 - fixed[:, 11], 12.0)
    assert after["slope"] == pytest.approx(1.0, abs=0.02) and after["intercept"] == pytest.approx(0.0, abs=0.02)
    assert np.all(np.diff(fixed, axis=1) <= 0.0)
    assert Recalibration.from_json(recal.to_json()) == recal


def test_identity_and_censoring_weights() -> None:
    ident = Recalibration((6.0, 24.0), (0.0, 0.0), (1.0, 1.0))
    s = np.array([[0.9, 0.8, 0.7]])
    np.testing.assert_allclose(ident.apply(s, [6.0, 12.0, 24.0]), s, rtol=1e-12)
    # censored at 5 (before h = 12): no outcome; an event at 3 and follow-up past 12 count
    y, w = horizon_outcome(np.array([3.0, 5.0, 20.0, 30.0]), np.array([1, 0, 0, 1]), 12.0)
    assert y.tolist() == [1.0, 0.0, 0.0, 0.0]
    # G (censoring KM): 1 until the censoring at 5, then 1 - 1/3 (three at risk there)
    assert w[1] == 0.0 and w[0] == pytest.approx(1.0) and w[2] == pytest.approx(w[3]) == pytest.approx(1.5)

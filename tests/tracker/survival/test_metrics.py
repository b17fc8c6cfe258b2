"""Survival metrics against hand computations and lifelines."""

import numpy as np
import pytest
from lifelines.utils import concordance_index

from tracker.survival.metrics import (
    brier_scores,
    calibration_error,
    concordance_td,
    harrell_c,
    integrated_brier_score,
    kaplan_meier,
    uno_c,
)


def test_harrell_perfect_reversed_and_lifelines():
    rng = np.random.default_rng(0)
    t = rng.exponential(10.0, 200)
    e = np.ones(200, dtype=int)
    assert harrell_c(t, e, -t) == 1.0
    assert harrell_c(t, e, t) == 0.0
    risk = -t + rng.normal(0, 5.0, 200)
    assert harrell_c(t, e, risk) == pytest.approx(concordance_index(t, -risk, e), abs=1e-12)
    e_cens = (rng.random(200) < 0.6).astype(int)
    assert harrell_c(t, e_cens, risk) == pytest.approx(concordance_index(t, -risk, e_cens), abs=1e-12)


def test_antolini_equals_harrell_for_non_crossing_curves():
    rng = np.random.default_rng(1)
    t = rng.exponential(10.0, 150)
    e = (rng.random(150) < 0.7).astype(int)
    risk = rng.normal(size=150)
    grid = np.arange(1.0, 61.0)
    surv = np.exp(-0.05 * grid[None, :] * np.exp(risk)[:, None])  # proportional hazards: never cross
    assert concordance_td(t, e, surv, grid) == pytest.approx(harrell_c(t, e, risk), abs=1e-12)


def test_uno_c_hand_example_and_no_censoring():
    times = np.array([1.0, 2.0, 3.0, 4.0])
    events = np.array([1, 0, 1, 1])
    risk = np.array([0.9, 0.1, 0.2, 0.5])
    # censoring KM: G = 2/3 from t = 2 on; event at 1 has weight 1 (3 concordant pairs),
    # event at 3 has weight (3/2)^2 = 2.25 (1 discordant pair); the event at 4 has no comparable pair
    assert uno_c(times, events, risk, tau=10.0) == pytest.approx(3.0 / (3.0 + 2.25), abs=1e-12)
    rng = np.random.default_rng(2)
    t = rng.exponential(5.0, 100)
    r = rng.normal(size=100)
    e = np.ones(100, dtype=int)
    assert uno_c(t, e, r, tau=1e9) == pytest.approx(harrell_c(t, e, r), abs=1e-12)


def test_ibs_of_kaplan_meier_on_its_own_data():
    times = np.arange(1.0, 11.0)
    events = np.ones(10, dtype=int)
    grid = np.arange(1.0, 11.0)
    _kt, ks = kaplan_meier(times, events)
    np.testing.assert_allclose(ks, (10 - grid) / 10)
    surv = np.tile(ks, (10, 1))
    eval_times = np.arange(1.0, 10.0)
    p = (10 - eval_times) / 10
    np.testing.assert_allclose(brier_scores(times, events, surv, grid, eval_times), p * (1 - p), atol=1e-12)
    # p(1-p) at 1..9 = .09 .16 .21 .24 .25 .24 .21 .16 .09; trapezoid = 1.65 - .09 = 1.56 over a span of 8
    assert integrated_brier_score(times, events, surv, grid, eval_times) == pytest.approx(0.195, abs=1e-12)


def test_brier_ipcw_hand_example():
    times = np.array([1.0, 2.0, 3.0, 4.0])
    events = np.array([1, 0, 1, 0])
    grid = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    surv = np.array([[0.5, 0.4, 0.3, 0.2, 0.1]] * 4)
    # at t = 3: subject 1 failed (G(1-) = 1), subject 3 failed at 3 (G(3-) = 2/3), subject 4 alive (G(3) = 2/3)
    s3 = 0.3
    expected = (s3**2 / 1.0 + s3**2 / (2 / 3) + (1 - s3) ** 2 / (2 / 3)) / 4
    assert brier_scores(times, events, surv, grid, np.array([3.0]))[0] == pytest.approx(expected, abs=1e-12)


def test_calibration_of_true_risks_is_small():
    rng = np.random.default_rng(3)
    rate = 0.05 * np.exp(rng.normal(0, 0.7, 4000))
    t = rng.exponential(1.0 / rate)
    c = rng.uniform(0, 40, 4000)
    e = (t <= c).astype(int)
    obs = np.minimum(t, c)
    true_risk = 1 - np.exp(-rate * 12.0)
    assert calibration_error(obs, e, true_risk, 12.0, groups=5) < 0.02
    assert calibration_error(obs, e, np.full(4000, 0.9), 12.0, groups=5) > 0.3

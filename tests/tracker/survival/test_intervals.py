"""90 % intervals on the cloglog scale: the band's shape, its coverage of a synthetic truth, the width scale that
gives 90 %, the Cox delta method against lifelines, review widening."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tracker.survival import SurvivalModelConfig
from tracker.survival.intervals import (
    Z_90,
    band,
    cloglog,
    coverage,
    from_cloglog,
    half_width,
    member_spread,
    scale_for_coverage,
    widen,
)
from tracker.survival.landmark_cox import train_landmark_cox
from tracker.survival.toy import ToyCohortConfig, toy_cohort


def test_band_brackets_and_round_trips() -> None:
    surv = np.array([[0.95, 0.9, 0.8, 0.7], [0.99, 0.97, 0.96, 0.9]])
    lower, upper = band(surv, 0.3)
    assert np.all(lower < surv) and np.all(surv < upper)
    np.testing.assert_allclose(cloglog(lower) - cloglog(surv), 0.3, rtol=1e-9)
    np.testing.assert_allclose(half_width(surv, lower), 0.3, rtol=1e-9)
    wide_low, wide_up = widen(surv, lower, np.array([2.0, 1.0]))
    np.testing.assert_allclose(half_width(surv[:1], wide_low[:1]), 0.6, rtol=1e-9)
    np.testing.assert_allclose(wide_up[1], upper[1], rtol=1e-12)
    assert np.array_equal(member_spread(surv[None]), np.zeros_like(surv))


def test_coverage_of_a_known_truth_is_ninety_percent() -> None:
    """Predictions off the truth by N(0, sd) on the cloglog scale, with sd known: the band +- Z_90 sd contains the
    true risk in 90 % (within +-1.5 points for 20,000 draws) and the scale needed is 1; with the spread understated
    by half, coverage drops and the scale found is 2."""
    rng = np.random.default_rng(3)
    truth = from_cloglog(rng.normal(-2.0, 1.0, (20_000, 1)))  # one horizon per curve
    sd = rng.uniform(0.1, 0.6, truth.shape)
    pred = from_cloglog(cloglog(truth) + rng.normal(0.0, sd))
    lower, upper = band(pred, Z_90 * sd)
    assert coverage(1 - upper, 1 - lower, 1 - truth) == pytest.approx(0.90, abs=0.015)
    assert scale_for_coverage(pred, sd, truth) == pytest.approx(1.0, abs=0.05)
    lower, upper = band(pred, Z_90 * sd / 2)
    assert coverage(1 - upper, 1 - lower, 1 - truth) < 0.65
    assert scale_for_coverage(pred, sd / 2, truth) == pytest.approx(2.0, abs=0.1)


def test_cox_spread_is_the_delta_method_of_lifelines_standard_errors() -> None:
    """At x = center + e_j the linear predictor's standard error is lifelines' standard error of coefficient j."""
    visits, events, _ = toy_cohort(ToyCohortConfig(n_patients=150, n_noise_features=1), seed=4)
    model = train_landmark_cox(visits, events, SurvivalModelConfig(), seed=0)
    fit, fitter = model.fits[0], model.lifelines_fits[0].fitter  # type: ignore[index]
    for j, col in enumerate(fit.columns):
        x = fit.center.copy()
        x[j] += 1.0
        design = pd.DataFrame([x], columns=list(fit.columns))
        assert fit.linear_predictor_sd(design)[0] == pytest.approx(float(fitter.standard_errors_[col]), rel=1e-9)

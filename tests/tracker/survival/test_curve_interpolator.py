"""The one survival-curve interpolator reproduces the three it replaced, bit for bit, with their edge rules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from tracker import scoring
from tracker.errors import MetatrackError
from tracker.survival import metrics
from tracker.survival.curves import survival_at
from tracker.survival.model import interpolate_survival


# the three implementations as they were before the merge (git 889c675)
def old_scoring(surv: np.ndarray, grid: Sequence[float], months: np.ndarray) -> np.ndarray:
    surv = np.atleast_2d(np.asarray(surv, dtype=np.float64))
    g = np.r_[0.0, np.asarray(grid, dtype=np.float64)]
    t = np.broadcast_to(np.asarray(months, dtype=np.float64), (surv.shape[0],))
    log_s = np.log(np.clip(np.concatenate([np.ones((surv.shape[0], 1)), surv], axis=1), 1e-300, None))
    j = np.clip(np.searchsorted(g, t, side="right") - 1, 0, len(g) - 2)
    rows = np.arange(surv.shape[0])
    frac = (t - g[j]) / (g[j + 1] - g[j])
    out = np.exp(log_s[rows, j] + frac * (log_s[rows, j + 1] - log_s[rows, j]))
    return np.where(t <= 0.0, 1.0, out)


def old_metrics(surv: np.ndarray, grid: np.ndarray, t: np.ndarray) -> np.ndarray:
    g = np.r_[0.0, np.asarray(grid, dtype=np.float64)]
    log_s = np.log(np.clip(np.concatenate([np.ones((surv.shape[0], 1)), surv], axis=1), 1e-300, None))
    tt = np.clip(np.asarray(t, dtype=np.float64), 0.0, g[-1])
    j = np.clip(np.searchsorted(g, tt, side="right") - 1, 0, len(g) - 2)
    frac = (tt - g[j]) / (g[j + 1] - g[j])
    return np.exp(log_s[:, j] + frac * (log_s[:, j + 1] - log_s[:, j]))


def old_interpolate(surv: np.ndarray, grid: Sequence[float], months: float) -> np.ndarray:
    g = np.r_[0.0, np.asarray(grid, dtype=np.float64)]
    if months < 0 or months > g[-1] + 1e-9:
        raise MetatrackError("outside")
    log_s = np.log(np.clip(np.concatenate([np.ones((surv.shape[0], 1)), surv], axis=1), 1e-300, None))
    j = int(np.clip(np.searchsorted(g, months, side="right") - 1, 0, len(g) - 2))
    frac = (months - g[j]) / (g[j + 1] - g[j])
    return np.exp(log_s[:, j] + frac * (log_s[:, j + 1] - log_s[:, j]))


def _curves(n: int, bins: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    surv = np.exp(-np.cumsum(rng.exponential(0.05, (n, bins)), axis=1))
    surv[0, -3:] = 0.0  # a curve that reaches 0 (clipped at 1e-300 in the log)
    return surv


GRIDS = [[float(m) for m in range(1, 37)], [0.5 * (b + 1) for b in range(10)], [2.0]]


@pytest.mark.parametrize("grid", GRIDS)
def test_same_numbers_as_before(grid) -> None:
    surv = _curves(7, len(grid), seed=len(grid))
    end = grid[-1]
    times = np.r_[-1.0, 0.0, 1e-12, grid, np.linspace(0, end, 23), end + 1e-10, end + 0.7, 2 * end + 3]
    for t in times:  # one time for every curve, and one per curve
        assert np.array_equal(scoring.survival_at(surv, grid, t), old_scoring(surv, grid, t))
    per_curve = times[: len(surv)]
    assert np.array_equal(scoring.survival_at(surv, grid, per_curve), old_scoring(surv, grid, per_curve))
    assert np.array_equal(metrics.survival_at(surv, np.asarray(grid), times), old_metrics(surv, grid, times))
    for t in times:
        if 0 <= t <= end + 1e-9:
            assert np.array_equal(interpolate_survival(surv, grid, float(t)), old_interpolate(surv, grid, float(t)))
        else:
            with pytest.raises(MetatrackError, match="outside the model's range"):
                interpolate_survival(surv, grid, float(t))


def test_edge_rules_and_shapes() -> None:
    grid = [1.0, 2.0, 3.0]
    s = np.array([[0.9, 0.8, 0.5], [0.99, 0.98, 0.97]])
    # past the end: the last bin's hazard continues / S stays / raise
    assert survival_at(s, grid, 4.0)[0] == pytest.approx(0.5 * 0.5 / 0.8)
    assert survival_at(s, grid, 4.0, past_end="flat")[0] == 0.5
    with pytest.raises(MetatrackError):
        survival_at(s, grid, 4.0, past_end="raise")
    with pytest.raises(MetatrackError):
        survival_at(s, grid, -0.1, past_end="raise")
    # before 0: S = 1
    assert np.array_equal(survival_at(s, grid, -2.0), [1.0, 1.0])
    assert np.array_equal(survival_at(s, grid, [-2.0], pairing="outer", past_end="flat"), [[1.0], [1.0]])
    # shapes: per curve (n,), outer (n, times)
    assert survival_at(s, grid, [0.5, 1.5]).shape == (2,)
    assert survival_at(s, grid, [0.5, 1.5, 2.5], pairing="outer").shape == (2, 3)
    assert survival_at(s, grid, 0.5, pairing="outer").shape == (2, 1)
    assert survival_at(s[0], grid, 1.5).shape == (1,)
    np.testing.assert_allclose(survival_at(s, grid, 1.5), np.sqrt(s[:, 0] * s[:, 1]), rtol=1e-15)
    with pytest.raises(ValueError, match="past_end"):
        survival_at(s, grid, 1.0, past_end="wrap")

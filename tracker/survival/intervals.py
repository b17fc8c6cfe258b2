"""90 % intervals of survival curves (and so of every risk 1 - S(h)), on the complementary log-log scale.

Every kind gives, per visit and grid point, a spread: the standard deviation of log(-log S) that its own fit
implies. The RNN: the spread of its ensemble members' curves (each member has its own seed and early-stopping
split: deep-ensemble variance, no refits). The landmark Cox: the delta method on the Cox fit's coefficient
covariance (var of the linear predictor x' cov x; log(-log S) = log H0 + linear predictor, so the spread is
the same at every grid point), which is what a bootstrap of the Cox fit estimates without refitting it 200 times
per landmark. A blend adds its members' half-widths with its weight (as if their errors were fully correlated:
they are fitted to the same patients, so this is the conservative sum).

Neither spread knows the model's bias (what the model cannot learn from the data it has), so each is multiplied
by a width scale per kind (:data:`INTERVAL_SCALES`), calibrated on the simulator so that the 90 % interval
contains the posterior risk given the scans ("oracle_scans") about 90 % of the time: ``benchmarks/risk.py``
prints the coverage and the scale that would give 90 % on held-out folds. A scan that needs review (registration
flag, low-confidence lesions) gets its half-width multiplied by :data:`REVIEW_WIDEN`.
"""

from __future__ import annotations

import numpy as np

INTERVAL_LEVEL = 0.9
Z_90 = 1.6448536269514722  # standard normal quantile at 0.95: a two-sided 90 % interval
# the factor on Z_90 * spread that makes the 90 % interval of the 12-month risk contain the oracle_scans risk 90 % of
# the time on held-out folds of the simulator (benchmarks/risk.py, column scale_needed). First fitted on seed 7 alone
# (150 patients, 3 folds, RNN ensembles of 3: rnn 3.3, Cox 1.75; at 1 the coverage was 0.49 and 0.66); with those,
# seeds 0-2 (300 patients, 5 folds) covered 0.80 (rnn), 0.81 (Cox), 0.83 (blend), 0.78 (auto) and needed x1.3 more:
# the factors below. Ensemble members share their training patients, so their spread misses most of the estimation
# error and all of the model's bias; the Cox's delta method misses the baseline hazard's error and the bias.
# "blend" and "auto" combine their members' scaled half-widths, times their own entry. Held out (seeds 3-5) the RNN
# covered 0.83, so its factor became 5.2 (x 1.2 = Z_90 / z((1 + 0.83) / 2): what turns 83 % into 90 % for normal
# errors). Then, with per-landmark blend/auto, held-out seeds 3-5 (300 patients, 5 folds, ensembles of 3) covered
# rnn 0.876, landmark Cox 0.892, blend 0.923, auto 0.888; the same normal rule gave the factors below (blend and auto
# net of their members' change). Seeds 0-2, not used for this step, check them (benchmarks/risk.py).
INTERVAL_SCALES = {"rnn": 5.6, "landmark-cox": 2.35, "blend": 0.9, "auto": 1.0}
REVIEW_WIDEN = 2.0  # half-width factor for a visit whose scan needs review
_EPS = 1e-12


def cloglog(surv: np.ndarray) -> np.ndarray:
    """log(-log S), S clipped into (0, 1)."""
    s = np.clip(np.asarray(surv, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(-np.log(s))


def from_cloglog(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`cloglog`: exp(-exp(x))."""
    return np.exp(-np.exp(np.asarray(x, dtype=np.float64)))


def band(surv: np.ndarray, half_width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) survival curves log(-log S) +- half_width, non-increasing along the grid (last axis).

    The lower survival curve is the upper risk; lower <= surv <= upper at every point.
    """
    s = np.asarray(surv, dtype=np.float64)
    c = cloglog(s)
    hw = np.abs(np.broadcast_to(np.asarray(half_width, dtype=np.float64), s.shape))
    lower = np.minimum(np.minimum.accumulate(from_cloglog(c + hw), axis=-1), s)
    upper = np.maximum(np.minimum.accumulate(from_cloglog(c - hw), axis=-1), s)
    return lower, upper


def half_width(surv: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """The cloglog half-width of a band from its centre and lower survival curve (inverse of :func:`band`)."""
    return np.maximum(cloglog(lower) - cloglog(surv), 0.0)


def widen(surv: np.ndarray, lower: np.ndarray, factor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The band of (surv, lower) with its half-width multiplied by ``factor`` (per row: shape (n,) or scalar)."""
    f = np.asarray(factor, dtype=np.float64)
    if f.ndim == 1:
        f = f[:, None]
    return band(surv, half_width(surv, lower) * f)


def member_spread(member_surv: np.ndarray) -> np.ndarray:
    """Standard deviation over members (axis 0) of log(-log S): (members, visits, bins) -> (visits, bins)."""
    m = np.asarray(member_surv, dtype=np.float64)
    if m.shape[0] < 2:
        return np.zeros(m.shape[1:])
    return cloglog(m).std(axis=0, ddof=1)


def coverage(lower_risk: np.ndarray, upper_risk: np.ndarray, truth: np.ndarray) -> float:
    """Share of intervals [lower_risk, upper_risk] that contain the true risk."""
    t = np.asarray(truth, dtype=np.float64)
    return float(np.mean((np.asarray(lower_risk) <= t + 1e-9) & (t <= np.asarray(upper_risk) + 1e-9)))


def scale_for_coverage(
    surv: np.ndarray, spread: np.ndarray, truth_surv: np.ndarray, level: float = INTERVAL_LEVEL
) -> float:
    """The width scale that makes log(-log S) +- scale * Z_90 * spread contain the true survival in ``level`` of
    the cells (the ``level`` quantile of |error| / (Z_90 * spread))."""
    err = np.abs(cloglog(truth_surv) - cloglog(surv))
    sd = np.asarray(spread, dtype=np.float64) * Z_90
    ok = sd > 0
    if not ok.any():
        return float("nan")
    return float(np.quantile(err[ok] / sd[ok], level))

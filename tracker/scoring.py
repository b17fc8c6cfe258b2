"""Risk as of a date from a model's survival curves (pure numpy; no I/O).

A curve S(g) is given on a grid of months after a visit (g = 1, 2, ..., horizon). Between grid points S is
log-linear (constant hazard within a bin), S(0) = 1, and past the last grid point the last bin's hazard continues.
For a patient still event-free t months after the last visit, the risk within h months is the conditional risk
1 - S(t + h) / S(t); at a scan's own date t = 0 and this is 1 - S(h).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np

from tracker.survival import curves
from tracker.survival.config import DAYS_PER_MONTH
from tracker.survival.curves import MIN_SURVIVAL

DEFAULT_HORIZONS = (6, 12, 24)
CURVE_HORIZON = 12  # the survival curve is stored on this horizon's row (else on the smallest horizon's)


def months_between(start: date, end: date) -> float:
    """Months (of 365.25 / 12 days) from `start` to `end`."""
    return (end - start).days / DAYS_PER_MONTH


def month_start(day: date) -> date:
    """The first day of `day`'s month: the default calendar as-of date."""
    return day.replace(day=1)


def curve_row_horizon(horizons: Sequence[int]) -> int:
    """Which horizon's row carries the stored curve."""
    return CURVE_HORIZON if CURVE_HORIZON in horizons else min(horizons)


def survival_at(surv: np.ndarray, grid: Sequence[float], months: np.ndarray) -> np.ndarray:
    """S at `months` (one time per curve) from curves (n, bins) on `grid`.

    Log-linear within a bin; constant hazard of the last bin past the grid's end; S(t) = 1 for t <= 0.
    """
    return curves.survival_at(surv, grid, months, pairing="per_curve", past_end="extrapolate")


def conditional_risk(surv: np.ndarray, grid: Sequence[float], t_months: np.ndarray, horizon: float) -> np.ndarray:
    """1 - S(t + h) / S(t) per curve: the risk within `horizon` months for a patient event-free at t."""
    t = np.asarray(t_months, dtype=np.float64)
    s_t = survival_at(surv, grid, t)
    s_th = survival_at(surv, grid, t + float(horizon))
    return 1.0 - s_th / np.clip(s_t, MIN_SURVIVAL, None)


def conditional_curve(surv: np.ndarray, grid: Sequence[float], t_months: np.ndarray) -> np.ndarray:
    """S(t + g) / S(t) on the grid: the survival curve seen from t months after the visit."""
    surv = np.atleast_2d(np.asarray(surv, dtype=np.float64))
    t = np.broadcast_to(np.asarray(t_months, dtype=np.float64), (surv.shape[0],))
    s_t = np.clip(survival_at(surv, grid, t), MIN_SURVIVAL, None)
    cols = [survival_at(surv, grid, t + float(m)) / s_t for m in grid]
    return np.stack(cols, axis=1) if cols else np.zeros((surv.shape[0], 0))


def risk_table(
    surv: np.ndarray, grid: Sequence[float], t_months: np.ndarray, horizons: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(risks (n, len(horizons)), curves (n, bins)) as of t months after each curve's visit."""
    t = np.asarray(t_months, dtype=np.float64)
    risks = np.stack([conditional_risk(surv, grid, t, float(h)) for h in horizons], axis=1)
    return risks, conditional_curve(surv, grid, t)

"""Calibration of horizon risks: the calibration slope and intercept, a reliability table, and the recalibration
that the kinds "blend" and "auto" fit on their inner cross-validation's out-of-fold predictions.

Calibration is measured and corrected on the complementary log-log scale: per horizon h, the binomial model
P(event by h) = 1 - exp(-exp(a + b * log(-log S(h)))) with S(h) the predicted survival. A calibrated model has
intercept a = 0 and slope b = 1; b < 1 means predictions too spread out (overfitting), a > 0 risks too low.
(log(-log S) is the scale on which a Cox model is linear, so the map S -> exp(-exp(a + b log(-log S))) rescales a
proportional-hazards prediction to another proportional-hazards prediction.) Patients censored before h carry no
outcome at h; the others are weighted by the inverse of the censoring survival (IPCW, as the Brier score).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracker.survival.intervals import cloglog, from_cloglog
from tracker.survival.metrics import calibration_table, censoring_survival, step_at, survival_at

CALIBRATION_HORIZONS = (6.0, 12.0, 24.0)
MIN_CALIBRATION_EVENTS = 10  # fewer events by a horizon: that horizon keeps the identity (a = 0, b = 1)
RELIABILITY_GROUPS = 10  # deciles of predicted risk
SLOPE_BOUNDS = (0.05, 20.0)


def horizon_outcome(months: np.ndarray, events: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """(event by ``horizon`` 0/1, IPCW weight) per subject: 1 / G(T-) for an event by h, 1 / G(h) for follow-up
    past h, 0 for censoring before h (G: Kaplan-Meier of the censoring)."""
    t = np.asarray(months, dtype=np.float64)
    e = np.asarray(events).astype(bool)
    gt, gs = censoring_survival(t, e)
    event_by = e & (t <= horizon)
    past = t > horizon
    g = np.where(event_by, step_at(gt, gs, t, left=True), step_at(gt, gs, np.full(len(t), horizon)))
    w = np.where(event_by | past, 1.0 / np.clip(g, 1e-6, None), 0.0)
    return event_by.astype(np.float64), w


def fit_cloglog(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(intercept a, slope b) of the weighted binomial fit P(y = 1) = 1 - exp(-exp(a + b x))."""
    from scipy.optimize import minimize

    x, y, w = (np.asarray(v, dtype=np.float64) for v in (x, y, w))
    keep = w > 0
    x, y, w = x[keep], y[keep], w[keep] / w[keep].mean()

    def nll(p: np.ndarray) -> float:
        eta = np.clip(p[0] + p[1] * x, -30.0, 5.0)
        log_surv = -np.exp(eta)  # log(1 - p)
        log_p = np.log(-np.expm1(log_surv))
        return float(-(w * (y * log_p + (1.0 - y) * log_surv)).sum())

    res = minimize(nll, np.array([0.0, 1.0]), method="L-BFGS-B", bounds=[(-10.0, 10.0), SLOPE_BOUNDS])
    return float(res.x[0]), float(res.x[1])


def calibration_at(months: np.ndarray, events: np.ndarray, risk: np.ndarray, horizon: float) -> dict[str, Any]:
    """Calibration of risks at one horizon: intercept, slope (ideal 0 and 1; NaN with too few events), and the
    reliability table (deciles of predicted risk: n, mean predicted risk, Kaplan-Meier observed risk)."""
    y, w = horizon_outcome(months, events, horizon)
    n_events = int(y[w > 0].sum())
    if n_events >= MIN_CALIBRATION_EVENTS:
        a, b = fit_cloglog(cloglog(1.0 - np.asarray(risk, dtype=np.float64)), y, w)
    else:
        a, b = float("nan"), float("nan")
    groups = min(RELIABILITY_GROUPS, max(len(risk) // 10, 1))
    table = calibration_table(months, events, risk, horizon, groups)
    return {
        "horizon_months": float(horizon),
        "intercept": a,
        "slope": b,
        "n_events": n_events,
        "reliability": [
            {"group": int(r.group), "n": int(r.n), "predicted": float(r.predicted), "observed": float(r.observed)}
            for r in table.itertuples(index=False)
        ],
    }


@dataclass(frozen=True)
class Recalibration:
    """Per horizon (a, b): S -> exp(-exp(a + b log(-log S))); between horizons a and b are interpolated linearly
    in months, outside them held at the nearest horizon's value."""

    horizons: tuple[float, ...]
    intercept: tuple[float, ...]
    slope: tuple[float, ...]

    def apply(self, surv: np.ndarray, grid: Sequence[float]) -> np.ndarray:
        """Recalibrated curves (..., len(grid)), non-increasing along the grid."""
        g = np.asarray(grid, dtype=np.float64)
        a = np.interp(g, self.horizons, self.intercept)
        b = np.interp(g, self.horizons, self.slope)
        out = from_cloglog(a + b * cloglog(surv))
        return np.minimum.accumulate(out, axis=-1)

    def to_json(self) -> dict[str, Any]:
        return {"horizons": list(self.horizons), "intercept": list(self.intercept), "slope": list(self.slope)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Recalibration:
        return cls(tuple(d["horizons"]), tuple(d["intercept"]), tuple(d["slope"]))


def fit_recalibration(
    months: np.ndarray,
    events: np.ndarray,
    surv: np.ndarray,
    grid: Sequence[float],
    horizons: Sequence[float] = CALIBRATION_HORIZONS,
) -> Recalibration:
    """The recalibration of curves ``surv`` (out-of-fold predictions) against their outcomes, per horizon within
    the grid; a horizon with fewer than MIN_CALIBRATION_EVENTS events by then keeps the identity."""
    hs = [float(h) for h in horizons if 0 < h <= grid[-1]]
    s_h = survival_at(surv, np.asarray(grid, dtype=np.float64), np.asarray(hs))
    a_all, b_all = [], []
    for j, h in enumerate(hs):
        y, w = horizon_outcome(months, events, h)
        if y[w > 0].sum() < MIN_CALIBRATION_EVENTS:
            a, b = 0.0, 1.0
        else:
            a, b = fit_cloglog(cloglog(s_h[:, j]), y, w)
        a_all.append(a)
        b_all.append(b)
    return Recalibration(tuple(hs), tuple(a_all), tuple(b_all))

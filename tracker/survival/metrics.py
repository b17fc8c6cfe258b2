"""Survival metrics in numpy: Harrell's and Antolini's time-dependent concordance, Uno's IPCW C at a horizon,
IPCW Brier score and its integral, calibration at a horizon against Kaplan-Meier.

Conventions: ``times`` and ``events`` are per subject (event 1, censored 0); survival curves are arrays
(subjects, grid points) of S at the ascending ``grid`` times, with S(0) = 1 and log-linear interpolation between
grid points (constant hazard within a bin); risk scores are "higher = earlier event". Ties in predictions count
one half. IPCW weights use the Kaplan-Meier estimate G of the censoring distribution (censorings at a tied time
happen after the events) evaluated just before the time (G(t-)) for events and at t for subjects still at risk.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from tracker.survival import curves

TIE = 0.5


def kaplan_meier(times: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate: (distinct times, S just after each of them)."""
    t = np.asarray(times, dtype=np.float64)
    d = np.asarray(events, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t, d = t[order], d[order]
    uniq, first = np.unique(t, return_index=True)
    at_risk = len(t) - first
    deaths = np.add.reduceat(d, first) if len(t) else np.zeros(0)
    return uniq, np.cumprod(1.0 - deaths / at_risk)


def step_at(t_knots: np.ndarray, s_knots: np.ndarray, t: np.ndarray, left: bool = False) -> np.ndarray:
    """Evaluate a right-continuous step function (1 before the first knot) at t; ``left`` gives the limit S(t-)."""
    side: Literal["left", "right"] = "left" if left else "right"
    idx = np.searchsorted(t_knots, np.asarray(t, dtype=np.float64), side=side) - 1
    vals = np.r_[1.0, s_knots]
    return vals[idx + 1]


def km_at(times: np.ndarray, events: np.ndarray, t: float) -> float:
    """Kaplan-Meier survival at time t."""
    kt, ks = kaplan_meier(times, events)
    return float(step_at(kt, ks, np.array([t]))[0])


def censoring_survival(times: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier of the censoring distribution (censoring = event 0) as step-function knots."""
    t = np.asarray(times, dtype=np.float64)
    c = 1.0 - np.asarray(events, dtype=np.float64)
    return kaplan_meier(t, c)


def survival_at(surv: np.ndarray, grid: np.ndarray, t: np.ndarray) -> np.ndarray:
    """S of every subject at every time in t: (subjects, len(t)); log-linear between grid points, flat after."""
    return curves.survival_at(surv, grid, t, pairing="outer", past_end="flat")


def _concordance(
    times: np.ndarray, events: np.ndarray, score_at_event: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """Shared pair counting. score_at_event (events, subjects): risk of every subject judged at event i's time."""
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events).astype(bool)
    ev = np.nonzero(e)[0]
    comparable = (t[None, :] > t[ev, None]) | ((t[None, :] == t[ev, None]) & ~e[None, :])
    own = score_at_event[np.arange(len(ev)), ev][:, None]
    hits = (own > score_at_event).astype(np.float64) + TIE * (own == score_at_event)
    w = np.ones(len(ev)) if weights is None else weights
    den = (comparable * w[:, None]).sum()
    if den == 0:
        return float("nan")
    return float((hits * comparable * w[:, None]).sum() / den)


def harrell_c(times: np.ndarray, events: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C for a time-fixed risk score (higher = earlier event)."""
    r = np.asarray(risk, dtype=np.float64)
    n_ev = int(np.asarray(events).astype(bool).sum())
    return _concordance(times, events, np.broadcast_to(r, (n_ev, len(r))))


def concordance_td(times: np.ndarray, events: np.ndarray, surv: np.ndarray, grid: np.ndarray) -> float:
    """Antolini's time-dependent C: for comparable pairs, is S_i(T_i) < S_j(T_i) for the subject i failing first."""
    e = np.asarray(events).astype(bool)
    ev_times = np.asarray(times, dtype=np.float64)[e]
    s = survival_at(surv, grid, ev_times).T  # (events, subjects)
    return _concordance(times, events, -s)


def uno_c(
    times: np.ndarray,
    events: np.ndarray,
    risk: np.ndarray,
    tau: float,
    cens_times: np.ndarray | None = None,
    cens_events: np.ndarray | None = None,
) -> float:
    """Uno's IPCW concordance truncated at tau (events before tau), weights 1 / G(T_i-)^2.

    G is estimated from (cens_times, cens_events) when given (e.g. the training data), else from the test data.
    """
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events).astype(bool)
    gt, gs = censoring_survival(
        t if cens_times is None else cens_times, e if cens_events is None else np.asarray(cens_events)
    )
    use = e & (t < tau)
    g = step_at(gt, gs, t[e], left=True)
    w = np.where(use[e], 1.0 / np.clip(g, 1e-12, None) ** 2, 0.0)
    r = np.asarray(risk, dtype=np.float64)
    return _concordance(t, e, np.broadcast_to(r, (int(e.sum()), len(r))), w)


def brier_scores(
    times: np.ndarray,
    events: np.ndarray,
    surv: np.ndarray,
    grid: np.ndarray,
    eval_times: np.ndarray,
    cens_times: np.ndarray | None = None,
    cens_events: np.ndarray | None = None,
) -> np.ndarray:
    """IPCW Brier score (Graf et al.) at each of eval_times."""
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events).astype(bool)
    gt, gs = censoring_survival(
        t if cens_times is None else cens_times, e if cens_events is None else np.asarray(cens_events)
    )
    g_own = np.clip(step_at(gt, gs, t, left=True), 1e-12, None)
    g_eval = np.clip(step_at(gt, gs, np.asarray(eval_times, dtype=np.float64)), 1e-12, None)
    s = survival_at(surv, grid, eval_times)  # (subjects, eval)
    failed = (t[:, None] <= eval_times[None, :]) & e[:, None]
    alive = t[:, None] > eval_times[None, :]
    contrib = failed * s**2 / g_own[:, None] + alive * (1.0 - s) ** 2 / g_eval[None, :]
    return contrib.mean(axis=0)


def integrated_brier_score(
    times: np.ndarray,
    events: np.ndarray,
    surv: np.ndarray,
    grid: np.ndarray,
    eval_times: np.ndarray,
    cens_times: np.ndarray | None = None,
    cens_events: np.ndarray | None = None,
) -> float:
    """Trapezoidal integral of the IPCW Brier score over eval_times divided by their span."""
    et = np.asarray(eval_times, dtype=np.float64)
    bs = brier_scores(times, events, surv, grid, et, cens_times, cens_events)
    return float(np.trapezoid(bs, et) / (et[-1] - et[0]))


def calibration_table(
    times: np.ndarray, events: np.ndarray, risk: np.ndarray, horizon: float, groups: int = 5
) -> pd.DataFrame:
    """Mean predicted risk vs Kaplan-Meier observed risk 1 - S_KM(horizon) in equal-size groups of predicted risk."""
    t = np.asarray(times, dtype=np.float64)
    e = np.asarray(events)
    r = np.asarray(risk, dtype=np.float64)
    order = np.argsort(r, kind="stable")
    rows = []
    for g, idx in enumerate(np.array_split(order, groups)):
        if len(idx) == 0:
            continue
        rows.append(
            {
                "group": g + 1,
                "n": len(idx),
                "predicted": float(r[idx].mean()),
                "observed": 1.0 - km_at(t[idx], e[idx], horizon),
            }
        )
    return pd.DataFrame(rows)


def calibration_error(
    times: np.ndarray, events: np.ndarray, risk: np.ndarray, horizon: float, groups: int = 5
) -> float:
    """Size-weighted mean |predicted - observed| over the calibration groups."""
    tab = calibration_table(times, events, risk, horizon, groups)
    return float((tab["n"] * (tab["predicted"] - tab["observed"]).abs()).sum() / tab["n"].sum())

"""Time to metastatic progression from a hazard driven by the lesions' longitudinal dynamics.

For t >= t_start (the second follow-up: progression is only declared once a confirmatory scan exists) the hazard is

    h(t) = h0 * exp(B_GROWTH * min(g(t), 2) + B_NEW * min(n_new(t), 4) + B_HET * dhet(t) + B_BASE * log(TV0 / V_REF))

where TV is the total nominal tumour volume, g(t) = log((TV(t) + V_EPS) / (nadir_{s<=t} TV(s) + V_EPS)) the growth
since nadir (RECIST-like), n_new(t) the number of new lesions visible by t, dhet(t) the change of volume-weighted
heterogeneity since baseline. Only the baseline term is visible at baseline; it is deliberately weak.
Before t_start the hazard is 0. Censoring: administrative end (study end date) and exponential drop-out after
t_start.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracker.simulator.lesions import heterogeneity, nominal_volume

B_GROWTH = 1.6
B_NEW = 0.45
B_HET = 1.5
B_BASE = 0.5
V_EPS = 200.0  # mm3
V_REF = 5000.0  # mm3
TIME_STEP_DAYS = 7.0
GROWTH_CAP = 2.0  # the covariates saturate, so that the hazard stays within a clinical range
NEW_CAP = 4.0


def covariates(lesions: list[dict[str, Any]], t: np.ndarray) -> dict[str, np.ndarray]:
    """Latent hazard covariates on the time grid ``t`` (days, increasing, t[0] = 0)."""
    vols = np.array([nominal_volume(les, t) for les in lesions]) if lesions else np.zeros((1, len(t)))
    tv = vols.sum(axis=0)
    nadir = np.minimum.accumulate(tv)
    growth = np.log((tv + V_EPS) / (nadir + V_EPS))
    new = [les for les in lesions if les["onset_day"] > 0]
    n_new = np.zeros(len(t))
    for les in new:
        n_new += t >= les["onset_day"]
    het = np.array([heterogeneity(les, t) for les in lesions]) if lesions else np.zeros((1, len(t)))
    mean_het = (het * vols).sum(axis=0) / np.maximum(tv, 1e-9)
    dhet = np.where(tv > 0, mean_het - mean_het[0], 0.0)
    return {"total_volume": tv, "growth": growth, "n_new": n_new, "dhet": dhet}


def log_hazard(cov: dict[str, np.ndarray], base_hazard: float) -> np.ndarray:
    """log h(t) (before the t_start cut-off)."""
    tv0 = cov["total_volume"][0]
    return (
        np.log(base_hazard)
        + B_GROWTH * np.minimum(cov["growth"], GROWTH_CAP)
        + B_NEW * np.minimum(cov["n_new"], NEW_CAP)
        + B_HET * cov["dhet"]
        + B_BASE * np.log((tv0 + V_EPS) / V_REF)
    )


def cumulative_hazard(
    lesions: list[dict[str, Any]], t_start: float, t_end: float, base_hazard: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative hazard H on the weekly grid t = 0, 7, ... >= ``t_end`` (days): (t, H), with H linear between
    grid points (the hazard is held constant over each week)."""
    t = np.arange(0.0, t_end + TIME_STEP_DAYS, TIME_STEP_DAYS)
    h = np.exp(log_hazard(covariates(lesions, t), base_hazard))
    h[t < t_start] = 0.0
    return t, np.concatenate([[0.0], np.cumsum(h[:-1] * TIME_STEP_DAYS)])


def conditional_survival(
    patient: dict[str, Any], from_day: float, days_ahead: np.ndarray, base_hazard: float
) -> np.ndarray:
    """The true probability of no progression by ``from_day + days_ahead`` given none by ``from_day``.

    Uses the patient's whole latent lesion history, future lesions included: the ceiling for any model that
    predicts from the scans up to ``from_day``.
    """
    ahead = np.asarray(days_ahead, dtype=np.float64)
    t, cum = cumulative_hazard(
        patient["lesions"], patient["hazard_start_day"], from_day + float(ahead.max(initial=0.0)), base_hazard
    )
    return np.exp(-(np.interp(from_day + ahead, t, cum) - np.interp(from_day, t, cum)))


def sample_event_time(
    rng: np.random.Generator,
    lesions: list[dict[str, Any]],
    t_start: float,
    t_end: float,
    base_hazard: float,
) -> float:
    """Event time (days) by inverting the cumulative hazard on a weekly grid; inf when beyond ``t_end``."""
    t, cum = cumulative_hazard(lesions, t_start, t_end, base_hazard)
    target = rng.exponential(1.0)
    k = int(np.searchsorted(cum, target))
    if k >= len(t):
        return float("inf")
    # linear interpolation inside the step where the cumulative hazard crosses the target
    frac = (target - cum[k - 1]) / max(cum[k] - cum[k - 1], 1e-12)
    return float(max(t[k - 1] + frac * TIME_STEP_DAYS, t_start + 1.0))

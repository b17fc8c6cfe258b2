"""lifelines baselines: Cox on baseline-scan features, landmark Cox (latest visit + deltas), Kaplan-Meier.

All times here are months. Every baseline returns survival curves on the RNN's grid, measured from the landmark
visit (conditional on being event-free there), so that the same metrics apply to every model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracker.survival.config import DAYS_PER_MONTH, DAYS_PER_YEAR, SurvivalModelConfig
from tracker.survival.data import CLIP_Z, Standardizer
from tracker.survival.metrics import kaplan_meier, step_at

MIN_COLUMN_STD = 1e-8
DURATION, EVENT = "_duration_months", "_event"
SINCE_BASELINE = "years_since_baseline"


def landmark_design(
    kept: pd.DataFrame, stats: Standardizer, cfg: SurvivalModelConfig, landmark: int, patients: np.ndarray
) -> pd.DataFrame:
    """Covariates at visit ``landmark`` (1-based) for ``patients``: standardised values, their change since the
    previous visit (for landmark > 1) and years since baseline. Missing values -> 0 (the training mean)."""
    pid = cfg.patient_col
    feats = list(stats.features)

    def z_at(visit: int) -> tuple[np.ndarray, np.ndarray]:
        rows = kept[kept["visit_index"] == visit - 1].set_index(pid).reindex(patients)
        raw = rows[feats].to_numpy(dtype=np.float64) if feats else np.zeros((len(patients), 0))
        return (raw - stats.mean) / stats.std, rows[cfg.time_col].to_numpy(dtype=np.float64)

    z, t = z_at(landmark)
    cols = {f: np.clip(np.nan_to_num(z[:, j]), -CLIP_Z, CLIP_Z) for j, f in enumerate(feats)}
    if landmark > 1:
        z_prev, _ = z_at(landmark - 1)
        delta = np.clip(np.nan_to_num(z - z_prev), -CLIP_Z, CLIP_Z)
        cols.update({f"delta_{f}": delta[:, j] for j, f in enumerate(feats)})
        cols[SINCE_BASELINE] = t / DAYS_PER_YEAR
    return pd.DataFrame(cols, index=pd.Index(patients, name=pid))


@dataclass
class CoxBaseline:
    """A fitted lifelines CoxPHFitter with the columns it uses."""

    fitter: Any  # lifelines CoxPHFitter
    columns: list[str]
    converged: bool = True  # False when lifelines' Newton-Raphson warned that it did not converge

    @classmethod
    def fit(cls, design: pd.DataFrame, durations: np.ndarray, events: np.ndarray, penalizer: float) -> CoxBaseline:
        from lifelines import CoxPHFitter
        from lifelines.exceptions import ConvergenceWarning

        keep = [c for c in design.columns if float(design[c].std(ddof=0)) > MIN_COLUMN_STD]
        df = design[keep].reset_index(drop=True).copy()
        df[DURATION] = np.maximum(np.asarray(durations, dtype=np.float64), 1e-6)
        df[EVENT] = np.asarray(events, dtype=int)
        fitter = CoxPHFitter(penalizer=penalizer)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fitter.fit(df, duration_col=DURATION, event_col=EVENT)
        converged = True
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                converged = False
            else:
                warnings.warn(w.message, w.category, stacklevel=2)
        return cls(fitter, keep, converged)

    def survival(self, design: pd.DataFrame, elapsed_months: np.ndarray, grid: list[float]) -> np.ndarray:
        """S(elapsed + g) / S(elapsed) for each row and grid point g (months)."""
        ph = np.asarray(self.fitter.predict_partial_hazard(design[self.columns].reset_index(drop=True)))
        kt, kh = self.baseline_cumulative_hazard()
        return cox_survival(ph, kt, kh, elapsed_months, grid)

    def baseline_cumulative_hazard(self) -> tuple[np.ndarray, np.ndarray]:
        """(knots in months, Breslow baseline cumulative hazard there) at the fit's mean covariates."""
        base = self.fitter.baseline_cumulative_hazard_
        return base.index.to_numpy(dtype=np.float64), base.iloc[:, 0].to_numpy(dtype=np.float64)


def cox_survival(
    partial_hazard: np.ndarray, knots: np.ndarray, cumhaz: np.ndarray, elapsed_months: np.ndarray, grid: list[float]
) -> np.ndarray:
    """S(elapsed + g) / S(elapsed) = exp(-(H0(elapsed + g) - H0(elapsed)) * partial hazard) per row and grid point,
    with H0 the step function through (knots, cumhaz), 0 before the first knot."""
    ph = np.asarray(partial_hazard, dtype=np.float64)
    kt, kh = np.asarray(knots, dtype=np.float64), np.asarray(cumhaz, dtype=np.float64)
    # step_at returns 1 before the first knot; for a cumulative hazard the value there is 0
    h_at = lambda t: step_at(kt, kh, t) - (np.asarray(t) < kt[0])  # noqa: E731
    e = np.asarray(elapsed_months, dtype=np.float64)
    g = np.asarray(grid, dtype=np.float64)
    dh = h_at((e[:, None] + g[None, :]).ravel()).reshape(len(e), len(g)) - h_at(e)[:, None]
    return np.exp(-dh * ph[:, None])


@dataclass
class KaplanMeierBaseline:
    """Population survival curve from the landmark, the same for everyone."""

    knots: np.ndarray
    values: np.ndarray

    @classmethod
    def fit(cls, durations: np.ndarray, events: np.ndarray) -> KaplanMeierBaseline:
        kt, ks = kaplan_meier(durations, events)
        return cls(kt, ks)

    def survival(self, n: int, grid: list[float]) -> np.ndarray:
        return np.tile(step_at(self.knots, self.values, np.asarray(grid, dtype=np.float64)), (n, 1))


def outcome_from(kept: pd.DataFrame, events: pd.DataFrame, cfg: SurvivalModelConfig, landmark: int) -> tuple:
    """Patients with >= landmark visits, their months from that visit to the outcome, event flags, and the
    months from their first visit to the landmark visit."""
    pid = cfg.patient_col
    at = kept[kept["visit_index"] == landmark - 1]
    first = kept[kept["visit_index"] == 0].set_index(pid)[cfg.time_col]
    ev = events.set_index(pid).loc[at[pid]]
    t_visit = at[cfg.time_col].to_numpy(dtype=np.float64)
    remaining = (ev[cfg.time_col].to_numpy(dtype=np.float64) - t_visit) / DAYS_PER_MONTH
    elapsed = (t_visit - first.loc[at[pid]].to_numpy(dtype=np.float64)) / DAYS_PER_MONTH
    return at[pid].to_numpy(), remaining, ev[cfg.event_col].to_numpy(dtype=int), elapsed

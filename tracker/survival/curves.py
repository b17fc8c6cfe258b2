"""Survival curves on a month grid: the one interpolator every model, metric and score uses (pure numpy).

A curve S(g) is given at the ends of bins g_1 < g_2 < ... < g_end (months after a visit), with S(0) = 1. Between
grid points S is log-linear (constant hazard within a bin). What happens past g_end is the caller's choice
(``past_end``):

- "extrapolate": the last bin's hazard continues; S(t) = 1 for t <= 0 (risk as of a calendar date);
- "flat": S stays at S(g_end); times below 0 read S(0) = 1 (metrics on follow-up times);
- "raise": a time outside 0..g_end (1e-9 months of slack at the end) raises (a model's horizons).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from tracker.errors import MetatrackError

MIN_SURVIVAL = 1e-300
END_SLACK_MONTHS = 1e-9
PastEnd = Literal["extrapolate", "flat", "raise"]
Pairing = Literal["per_curve", "outer"]


def curve_column(months: float) -> str:
    """Name of the survival-curve column for a grid point, e.g. ``s_12m``."""
    return f"s_{months:g}m"


def survival_at(
    surv: np.ndarray,
    grid: Sequence[float] | np.ndarray,
    times: float | Sequence[float] | np.ndarray,
    *,
    pairing: Pairing = "per_curve",
    past_end: PastEnd = "extrapolate",
) -> np.ndarray:
    """S of curves ``surv`` (n, bins) on ``grid`` (bin ends, months) at ``times`` (months).

    pairing "per_curve": one time per curve (``times`` broadcast to (n,)) -> (n,);
    pairing "outer": every curve at every time (``times`` 1-D, a scalar counts as one) -> (n, len(times)).
    """
    surv = np.atleast_2d(np.asarray(surv, dtype=np.float64))
    n = surv.shape[0]
    g = np.r_[0.0, np.asarray(grid, dtype=np.float64)]
    t = np.asarray(times, dtype=np.float64)
    t = np.broadcast_to(t, (n,)) if pairing == "per_curve" else np.atleast_1d(t)
    if past_end == "raise":
        outside = (t < 0) | (t > g[-1] + END_SLACK_MONTHS)
        if outside.any():
            bad = t[outside].flat[0]
            raise MetatrackError(f"horizon {bad} months is outside the model's range 0..{g[-1]:g} months")
    elif past_end == "flat":
        t = np.clip(t, 0.0, g[-1])
    elif past_end != "extrapolate":
        raise ValueError(f"past_end must be 'extrapolate', 'flat' or 'raise', got {past_end!r}")
    log_s = np.log(np.clip(np.concatenate([np.ones((n, 1)), surv], axis=1), MIN_SURVIVAL, None))
    j = np.clip(np.searchsorted(g, t, side="right") - 1, 0, len(g) - 2)
    frac = (t - g[j]) / (g[j + 1] - g[j])  # > 1 past the grid: the last bin's slope extrapolates
    if pairing == "per_curve":
        rows = np.arange(n)
        out = np.exp(log_s[rows, j] + frac * (log_s[rows, j + 1] - log_s[rows, j]))
    else:
        out = np.exp(log_s[:, j] + frac * (log_s[:, j + 1] - log_s[:, j]))
    if past_end == "extrapolate":
        out = np.where(t <= 0.0, 1.0, out)
    return out

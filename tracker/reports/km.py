"""Kaplan-Meier estimates and numbers at risk (product-limit estimator; ties: events before censorings)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KaplanMeier:
    """A step function: ``survival[i]`` holds from ``times[i]`` until the next time (``times[0] == 0``)."""

    times: np.ndarray
    survival: np.ndarray
    at_risk: np.ndarray  # subjects with time >= times[i]
    events: np.ndarray  # events at times[i]


def kaplan_meier(durations: Sequence[float], events: Sequence[int | bool]) -> KaplanMeier:
    """The product-limit estimate S(t) = prod over event times t_i <= t of (1 - d_i / n_i)."""
    t = np.asarray(durations, dtype=np.float64)
    e = np.asarray(events, dtype=bool)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError(f"durations and events must be 1-D of one length, got {t.shape} and {e.shape}")
    if np.any(t < 0) or not np.all(np.isfinite(t)):
        raise ValueError("durations must be finite and >= 0")
    uniq = np.unique(np.concatenate([[0.0], t]))
    n_at = np.array([(t >= u).sum() for u in uniq])
    d = np.array([(e & (t == u)).sum() for u in uniq])
    factor = np.where(n_at > 0, 1.0 - d / np.maximum(n_at, 1), 1.0)
    return KaplanMeier(uniq, np.cumprod(factor), n_at, d)


def number_at_risk(durations: Sequence[float], at: Sequence[float] | np.ndarray) -> list[int]:
    """How many subjects are still followed (time >= t) at each time in `at`."""
    t = np.asarray(durations, dtype=np.float64)
    return [int((t >= float(a)).sum()) for a in at]


def km_at(curve: KaplanMeier, at: Sequence[float] | np.ndarray) -> np.ndarray:
    """S at each time in `at` (right-continuous steps)."""
    idx = np.searchsorted(curve.times, np.asarray(at, dtype=np.float64), side="right") - 1
    return curve.survival[np.clip(idx, 0, None)]


def tertiles(values: Sequence[float]) -> np.ndarray:
    """Group 0, 1, 2 of each value by the 1/3 and 2/3 quantiles (low, middle, high)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return np.zeros(0, dtype=int)
    cuts = np.quantile(v, [1 / 3, 2 / 3])
    return np.searchsorted(cuts, v, side="right").clip(0, 2)

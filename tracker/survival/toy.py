"""Small synthetic cohorts with a known hazard, for tests and the `--source toy` benchmark.

The hazard depends on the SLOPE of a latent marker that is observed with noise at irregular visits, so only a
model that sees the trajectory can rank patients well; the marker's baseline level carries no information (unless
``level_log_hazard_ratio`` is set: then the latest value, close to the level, also informs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracker.survival.config import DAYS_PER_MONTH


@dataclass(frozen=True)
class ToyCohortConfig:
    """Parameters of the toy generator (times in months unless named otherwise)."""

    n_patients: int = 300
    base_hazard_per_month: float = 0.03
    slope_log_hazard_ratio: float = 1.0  # log HR per unit of marker slope (marker units / year)
    level_log_hazard_ratio: float = 0.0  # log HR per unit of the marker's level (> 0: the latest value informs)
    marker_noise_sd: float = 0.3
    visit_gap_months: tuple[float, float] = (2.0, 4.0)
    max_visits: int = 6
    censor_months: tuple[float, float] = (12.0, 48.0)
    n_noise_features: int = 3
    missing_fraction: float = 0.05


def toy_cohort(cfg: ToyCohortConfig, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Simulate (visits, events, truth).

    visits: patient_id, time_days, marker, noise_0..; events: patient_id, time_days, event;
    truth: patient_id, slope, log_hazard_ratio.
    """
    rng = np.random.default_rng(seed)
    n = cfg.n_patients
    level = rng.normal(0.0, 1.0, n)
    slope = rng.normal(0.0, 1.0, n)
    log_hr = cfg.slope_log_hazard_ratio * slope + cfg.level_log_hazard_ratio * level
    event_m = rng.exponential(1.0 / (cfg.base_hazard_per_month * np.exp(log_hr)))
    censor_m = rng.uniform(*cfg.censor_months, n)
    end_m = np.minimum(event_m, censor_m)
    flag = (event_m <= censor_m).astype(int)
    rows = []
    for i in range(n):
        t = 0.0
        for _ in range(cfg.max_visits):
            if t >= end_m[i]:
                break
            marker = level[i] + slope[i] * t / 12.0 + rng.normal(0.0, cfg.marker_noise_sd)
            row = {"patient_id": f"P{i:04d}", "time_days": round(t * DAYS_PER_MONTH, 1), "marker": marker}
            for j in range(cfg.n_noise_features):
                row[f"noise_{j}"] = rng.normal()
            rows.append(row)
            t += rng.uniform(*cfg.visit_gap_months)
    visits = pd.DataFrame(rows)
    feats = [c for c in visits.columns if c not in ("patient_id", "time_days")]
    holes = rng.random((len(visits), len(feats))) < cfg.missing_fraction
    visits[feats] = visits[feats].mask(holes)
    ids = [f"P{i:04d}" for i in range(n)]
    events = pd.DataFrame({"patient_id": ids, "time_days": np.round(end_m * DAYS_PER_MONTH, 1), "event": flag})
    truth = pd.DataFrame({"patient_id": ids, "slope": slope, "log_hazard_ratio": log_hr})
    return visits, events, truth


def exponential_cohort(
    n: int, hazard_per_month: float, censor_max_months: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One visit per patient at time 0 with a constant feature; exponential event times, uniform censoring."""
    rng = np.random.default_rng(seed)
    event_m = rng.exponential(1.0 / hazard_per_month, n)
    censor_m = rng.uniform(0.0, censor_max_months, n)
    ids = [f"E{i:05d}" for i in range(n)]
    visits = pd.DataFrame({"patient_id": ids, "time_days": 0.0, "const": 1.0})
    events = pd.DataFrame(
        {
            "patient_id": ids,
            "time_days": np.minimum(event_m, censor_m) * DAYS_PER_MONTH,
            "event": (event_m <= censor_m).astype(int),
        }
    )
    return visits, events

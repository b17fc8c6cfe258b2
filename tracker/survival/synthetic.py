"""A synthetic visit/event table whose metastasis hazard rises with the slope of the tumour burden.

For scale tests and the re-scoring benchmark: thousands of patients in a second, with a known ranking signal.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd

from tracker.survival.config import DAYS_PER_MONTH

SLOPE_FEATURES = ("burden_log", "lesion_count", "new_lesions", "noise")
START = date(2020, 1, 6)


def slope_cohort(
    n_patients: int, seed: int = 0, mean_scans: float = 5.0, prefix: str = "S"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(visits, events) of a cohort whose metastasis hazard rises with the slope of the tumour burden.

    visits: patient_id, scan_date, time_days, SLOPE_FEATURES; events: patient_id, time_days, event, event_date.
    """
    rng = np.random.default_rng(seed)
    slope = rng.normal(0.0, 1.0, n_patients)
    level = rng.normal(3.0, 1.0, n_patients)
    hazard = 0.03 * np.exp(0.8 * slope)  # per month
    event_m = rng.exponential(1.0 / hazard)
    censor_m = rng.uniform(12.0, 36.0, n_patients)
    end_m = np.minimum(event_m, censor_m)
    n_scans = np.clip(rng.poisson(mean_scans - 1, n_patients) + 1, 1, 12)
    starts = [START + timedelta(days=int(d)) for d in rng.integers(0, 365, n_patients)]
    rows = []
    for i in range(n_patients):
        t = 0.0
        for _k in range(int(n_scans[i])):
            days = round(t * DAYS_PER_MONTH)
            burden = level[i] + slope[i] * t / 12.0 + rng.normal(0.0, 0.2)
            rows.append(
                (
                    f"{prefix}{i:05d}",
                    starts[i] + timedelta(days=days),
                    float(days),
                    burden,
                    float(max(1, round(np.exp(burden / 3.0)))),
                    float(rng.poisson(max(slope[i], 0.0) * 0.5)),
                    rng.normal(),
                )
            )
            t += rng.uniform(2.0, 4.0)
            if t >= end_m[i]:
                break
    visits = pd.DataFrame(rows, columns=["patient_id", "scan_date", "time_days", *SLOPE_FEATURES])
    ids = [f"{prefix}{i:05d}" for i in range(n_patients)]
    end_days = np.round(end_m * DAYS_PER_MONTH)
    events = pd.DataFrame(
        {
            "patient_id": ids,
            "time_days": end_days,
            "event": (event_m <= censor_m).astype(int),
            "event_date": [s + timedelta(days=int(d)) for s, d in zip(starts, end_days, strict=True)],
        }
    )
    return visits, events


def baseline_memory_cohort(
    n_patients: int, seed: int = 0, log_hazard_ratio: float = 1.5, prefix: str = "B"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(visits, events) of a cohort whose hazard is set by the marker at the first visit (a pre-treatment value),
    after which the marker only shows noise: from the third visit on, the latest value and its last change carry
    nothing, and only a model of the whole trajectory still knows the risk.

    visits: patient_id, time_days, marker, noise; events: patient_id, time_days, event.
    """
    rng = np.random.default_rng(seed)
    first = rng.normal(0.0, 1.0, n_patients)
    event_m = rng.exponential(1.0 / (0.02 * np.exp(log_hazard_ratio * first)))
    censor_m = rng.uniform(12.0, 36.0, n_patients)
    end_m = np.minimum(event_m, censor_m)
    rows = []
    for i in range(n_patients):
        t, k = 0.0, 0
        while t < end_m[i] and k < 6:
            marker = first[i] + rng.normal(0.0, 0.1) if k == 0 else rng.normal(0.0, 1.0)
            rows.append((f"{prefix}{i:05d}", round(t * DAYS_PER_MONTH, 1), marker, rng.normal()))
            t += rng.uniform(2.0, 3.0)
            k += 1
    visits = pd.DataFrame(rows, columns=["patient_id", "time_days", "marker", "noise"])
    events = pd.DataFrame(
        {
            "patient_id": [f"{prefix}{i:05d}" for i in range(n_patients)],
            "time_days": np.round(end_m * DAYS_PER_MONTH, 1),
            "event": (event_m <= censor_m).astype(int),
        }
    )
    return visits, events

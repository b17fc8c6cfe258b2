"""The survival table: one row per patient with time, event and the baseline and latest patient features."""

from __future__ import annotations

import pandas as pd

from tracker.errors import MetatrackError

BASELINE_PREFIX = "baseline_"
LATEST_PREFIX = "latest_"


def survival_table(visits: pd.DataFrame, events: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """patient_id, time_days, event, latest_time_days, then each feature at baseline and at the latest visit.

    The latest visit is the last one on or before the patient's time (event or censoring), so no feature is
    measured after the outcome. Patients without an event row or without a visit are left out.

    Parameters
    ----------
    visits : one row per processed scan (``db.visits.visit_table``): patient_id, time_days and `features`.
    events : patient_id, time_days, event (``db.visits.event_table``).
    features : the visit columns to carry.
    """
    missing = [f for f in features if f not in visits.columns]
    if missing:
        raise MetatrackError(f"survival table: unknown patient features {missing[:5]}")
    merged = visits[["patient_id", "time_days", *features]].merge(
        events[["patient_id", "time_days", "event"]].rename(columns={"time_days": "end_days"}), on="patient_id"
    )
    merged = merged[merged["time_days"] <= merged["end_days"]].sort_values(["patient_id", "time_days"], kind="stable")
    groups = merged.groupby("patient_id", sort=True)
    first, last = groups.head(1).set_index("patient_id"), groups.tail(1).set_index("patient_id")
    out = pd.DataFrame(
        {
            "time_days": last["end_days"].astype(float),
            "event": last["event"].astype(int),
            "latest_time_days": last["time_days"].astype(float),
        }
    )
    out = out.join(first[features].add_prefix(BASELINE_PREFIX)).join(last[features].add_prefix(LATEST_PREFIX))
    return out.reset_index()

"""Training tables for the demo's risk model: a large latent simulated cohort in the pipeline's feature names.

The demo images only a handful of patients, too few to train on. Its model is trained instead on the simulator's
latent cohort (no images: the true lesion trajectories, observed with measurement noise), whose per-visit values
are renamed to the patient features the pipeline computes from images and given the same deltas
(`tracker.deltas.patient_deltas`). It is a demonstration model, not a clinical one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracker.deltas import patient_deltas

# latent visit column -> pipeline patient feature
LATENT_TO_PIPELINE = {
    "time_days": "days_from_baseline",
    "total_volume_mm3": "total_volume_mm3",
    "lesion_count": "lesion_count",
    "new_lesion_count": "new_lesion_count",
    "sum_diameters_mm": "recist_sum_mm",
    "mean_hu": "vw_stat_mean",
    "growing_volume_mm3": "growing_volume_mm3",
    "max_track_growth_30d": "max_track_growth_30d",
}


def latent_training_tables(n_patients: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(visits, events) of a latent simulated cohort, with the pipeline's patient-feature columns."""
    from tracker.simulator import SimulationConfig, latent_visit_table, simulate_latent_cohort

    latent = simulate_latent_cohort(SimulationConfig(n_patients=n_patients, seed=seed))
    visits, events = latent_visit_table(latent, rng_seed=seed)
    rows = []
    for pid, group in visits.sort_values(["patient_id", "time_days"]).groupby("patient_id", sort=True):
        previous: dict | None = None
        baseline: dict | None = None
        prev_day = 0.0
        for _, v in group.iterrows():
            now: dict[str, float | None] = {dst: float(v[src]) for src, dst in LATENT_TO_PIPELINE.items() if src in v}
            now["vw_stat_var"] = float(v["heterogeneity_hu"]) ** 2 if "heterogeneity_hu" in v else np.nan
            day = float(v["time_days"])
            now.update(
                patient_deltas(
                    now,
                    previous,
                    baseline,
                    days_since_previous=day - prev_day,
                    days_since_baseline=day,
                )
            )
            rows.append({"patient_id": pid, "time_days": day, **now})
            baseline = baseline or now
            previous, prev_day = now, day
    return pd.DataFrame(rows), events[["patient_id", "time_days", "event"]].copy()

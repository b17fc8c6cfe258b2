"""The demo's risk model, and the latent training tables it comes from.

The demo images only a handful of patients, too few to train on. It ships a model (``DEMO_MODEL_FILE``) with a
card (``DEMO_CARD``), both written by ``benchmarks/demo_model.py``: an RNN trained on the simulator's latent cohort
(no images: the true lesion trajectories observed with measurement noise, 300 patients) restricted to the patient
features the pipeline measures the way the latent table defines them (``DEMO_BASE_FEATURES`` and their deltas), and
checked on a cohort of simulated patients it never saw, imaged and processed by the real pipeline. Intensity
statistics and the RECIST sum are left out: measured ones differ in scale (partial volume; targets only), which is
why the previous demo model, trained on every latent column, gave risks that fell while the disease progressed. It
is a demonstration model, not a clinical one.

``latent_training_tables`` gives every latent column in the pipeline's names: quick tables for tests and
benchmarks that need some trained model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tracker.deltas import patient_deltas

ENDPOINT = "metastasis"
DEMO_MODEL_FILE = Path(__file__).parent / "data" / "demo_model.zip"
DEMO_CARD = Path(__file__).parent / "data" / "demo_model.json"  # how it was made and checked (JSON)


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

# patient features measured from images as the latent table defines them: lesion volumes, counts and growth
DEMO_BASE_FEATURES = (
    "total_volume_mm3",
    "lesion_count",
    "new_lesion_count",
    "growing_volume_mm3",
    "max_track_growth_30d",
)


def demo_training_tables(n_patients: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(visits, events) of a latent cohort with ``DEMO_BASE_FEATURES``, their deltas and the visit day only."""
    visits, events = latent_training_tables(n_patients, seed)
    kept = [
        c
        for c in visits.columns
        if c in ("patient_id", "time_days", "days_from_baseline")
        or any(c == b or c.endswith(f"_{b}") for b in DEMO_BASE_FEATURES)
    ]
    return visits[kept].dropna(axis=1, how="all"), events


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

"""Observable per-visit features computed from the latent truth with realistic measurement noise (no images).

Volumes carry a lognormal segmentation error, diameters a Gaussian reading error, HU values the scanner's
calibration offset (as a harmonisation step would see it) plus noise; lesions below MIN_DETECTABLE_MM are missed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tracker.deltas import track_growth
from tracker.simulator.lesions import HET_HU, NECROTIC_HU, heterogeneity, necrosis, nominal_diameter

VOLUME_CV = 0.08  # relative segmentation error of a lesion volume
DIAMETER_SD_MM = 1.0
LONGEST_DIAMETER_FACTOR = 1.15  # longest axial diameter / equivalent-sphere diameter of a typical lesion
HU_SD = 3.0
MIN_DETECTABLE_MM = 4.0  # lesions smaller than this are missed by the reader/segmenter
VISIT_COLUMNS = [
    "patient_id",
    "visit",
    "time_days",
    "scanner",
    "total_volume_mm3",
    "log_total_volume",
    "liver_volume_mm3",
    "lung_volume_mm3",
    "lesion_count",
    "new_lesion_count",
    "cum_new_lesions",
    "sum_diameters_mm",
    "max_diameter_mm",
    "mean_hu",
    "max_hu",
    "heterogeneity_hu",
    "necrotic_fraction",
    "volume_change_rel",
    "volume_change_from_nadir",
    "growing_volume_mm3",
    "max_track_growth_30d",
]


def _lesion_hu(les: dict[str, Any], t: float) -> tuple[float, float, float]:
    """(mean HU, HU sd, necrotic volume fraction) of a lesion at day t, from its latent parameters."""
    nec = float(necrosis(les, t))
    frac = nec**3
    het = float(heterogeneity(les, t)) * HET_HU
    core = NECROTIC_HU[les["organ"]]
    mean = (1 - frac) * les["base_hu"] + frac * core
    var = (1 - frac) * het**2 + frac * (0.3 * het) ** 2 + frac * (1 - frac) * (les["base_hu"] - core) ** 2
    return mean, float(np.sqrt(var)), frac


LESION_COLUMNS = [
    "patient_id",
    "time_days",
    "track_id",
    "log_volume",
    "diameter_mm",
    "mean_hu",
    "heterogeneity_hu",
    "necrotic_fraction",
]


def latent_visit_table(latent: list[dict[str, Any]], rng_seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-visit observable features and the outcome table of a latent cohort.

    Returns ``visits`` (one row per kept visit: patient_id, visit, time_days, features; see VISIT_COLUMNS) and
    ``events`` (patient_id, time_days, event).
    """
    visits, events, _ = latent_tables(latent, rng_seed)
    return visits, events


def latent_tables(latent: list[dict[str, Any]], rng_seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """As :func:`latent_visit_table`, plus ``lesions``: one row per detected lesion per visit (patient_id,
    time_days, track_id = the true lesion identity, measured features; see LESION_COLUMNS), the very measurements
    the visit rows aggregate."""
    rng = np.random.default_rng(rng_seed)
    rows, lesion_rows = [], []
    for pat in latent:
        seen: set[str] = set()
        base_ids: set[str] = set()
        cum_new = 0
        tv_hist: list[float] = []
        last_seen: dict[str, tuple[float, float]] = {}  # lesion -> (volume, day) at its last sighting
        for k, day in enumerate(pat["days"]):
            vols, diams, hus, sds, fracs, organs, weights = [], [], [], [], [], [], []
            vol_now: dict[str, float] = {}
            n_new = 0
            for les in pat["lesions"]:
                d = float(nominal_diameter(les, day))
                if d < MIN_DETECTABLE_MM:
                    continue
                if k == 0:
                    base_ids.add(les["id"])
                elif les["id"] not in base_ids and les["id"] not in seen:
                    n_new += 1
                seen.add(les["id"])
                v = np.pi / 6 * d**3 * float(np.exp(rng.normal(0.0, VOLUME_CV)))
                vol_now[les["id"]] = v
                mean, sd, frac = _lesion_hu(les, day)
                vols.append(v)
                diams.append(max(d * LONGEST_DIAMETER_FACTOR + rng.normal(0.0, DIAMETER_SD_MM), 0.0))
                hus.append(mean + pat["scanner_hu_offsets"][k] + rng.normal(0.0, HU_SD))
                sds.append(abs(sd + rng.normal(0.0, HU_SD)))
                fracs.append(frac)
                organs.append(les["organ"])
                weights.append(v)
                lesion_rows.append(
                    {
                        "patient_id": pat["patient_id"],
                        "time_days": float(day),
                        "track_id": les["id"],
                        "log_volume": float(np.log(v)),
                        "diameter_mm": diams[-1],
                        "mean_hu": hus[-1],
                        "heterogeneity_hu": sds[-1],
                        "necrotic_fraction": frac,
                    }
                )
            cum_new += n_new
            # a lesion seen before continues its track, compared with its last sighting (as in the pipeline)
            growth = track_growth(
                [(v, last_seen[i][0], day - last_seen[i][1]) for i, v in vol_now.items() if i in last_seen]
            )
            last_seen.update({i: (v, day) for i, v in vol_now.items()})
            tv = float(np.sum(vols)) if vols else 0.0
            tv_hist.append(tv)
            w = np.asarray(weights) / tv if tv > 0 else np.zeros(0)
            rows.append(
                {
                    "patient_id": pat["patient_id"],
                    "visit": k,
                    "time_days": float(day),
                    "scanner": pat["scanners"][k],
                    "total_volume_mm3": tv,
                    "log_total_volume": float(np.log1p(tv)),
                    "liver_volume_mm3": float(sum(v for v, o in zip(vols, organs, strict=True) if o == "liver")),
                    "lung_volume_mm3": float(sum(v for v, o in zip(vols, organs, strict=True) if o == "lung")),
                    "lesion_count": len(vols),
                    "new_lesion_count": n_new,
                    "cum_new_lesions": cum_new,
                    "sum_diameters_mm": float(np.sum(diams)) if diams else 0.0,
                    "max_diameter_mm": float(np.max(diams)) if diams else 0.0,
                    "mean_hu": float(w @ np.asarray(hus)) if tv > 0 else np.nan,
                    "max_hu": float(np.max(hus)) if hus else np.nan,
                    "heterogeneity_hu": float(w @ np.asarray(sds)) if tv > 0 else np.nan,
                    "necrotic_fraction": float(w @ np.asarray(fracs)) if tv > 0 else 0.0,
                    "volume_change_rel": float(np.log((tv + 100.0) / (tv_hist[0] + 100.0))),
                    "volume_change_from_nadir": float(np.log((tv + 100.0) / (min(tv_hist) + 100.0))),
                    "growing_volume_mm3": growth["growing_volume_mm3"],
                    "max_track_growth_30d": np.nan
                    if growth["max_track_growth_30d"] is None
                    else growth["max_track_growth_30d"],
                }
            )
    visits = pd.DataFrame(rows, columns=VISIT_COLUMNS)
    events = pd.DataFrame(
        [{"patient_id": p["patient_id"], "time_days": p["time_days"], "event": p["event"]} for p in latent]
    )
    return visits, events, pd.DataFrame(lesion_rows, columns=LESION_COLUMNS)

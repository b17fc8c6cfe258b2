"""Patient-level track growth (mixed response) on hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from tracker.deltas import patient_features, track_growth


def test_track_growth_shows_a_growing_lesion_behind_a_shrinking_burden() -> None:
    # one lesion grows 900 -> 2100 mm3 while another shrinks 3100 -> 400 mm3 over 60 days: the burden falls
    continuing = [(2100.0, 900.0, 60.0), (400.0, 3100.0, 60.0)]
    out = track_growth(continuing)
    assert out["growing_volume_mm3"] == 2100.0
    assert out["max_track_growth_30d"] == pytest.approx(math.log(2200.0 / 1000.0) * 30.0 / 60.0, rel=1e-12)
    pf = patient_features([2100.0, 400.0], [], new_lesions=0, vanished_tracks=0, recist_sum_mm=None,
                          days_from_baseline=60.0, continuing=continuing)  # fmt: skip
    assert pf["total_volume_mm3"] == 2500.0 and pf["growing_volume_mm3"] == 2100.0


def test_track_growth_edges() -> None:
    # all shrinking: no growing volume, a negative fastest rate; a 10 % rise is within segmentation noise
    out = track_growth([(500.0, 900.0, 30.0), (1100.0, 1000.0, 0.0)])
    assert out["growing_volume_mm3"] == 0.0
    assert out["max_track_growth_30d"] == pytest.approx(math.log(1200.0 / 1100.0) * 30.0 / 1.0)  # days floored at 1
    assert track_growth([(500.0, 900.0, 30.0)])["max_track_growth_30d"] < 0
    assert track_growth([]) == {"growing_volume_mm3": 0.0, "max_track_growth_30d": None}


def test_latent_visit_table_track_growth_follows_last_sighting() -> None:
    from tracker.simulator import SimulationConfig, latent_visit_table, simulate_latent_cohort

    visits, _ = latent_visit_table(simulate_latent_cohort(SimulationConfig(n_patients=30, seed=4)), rng_seed=4)
    first = visits[visits.visit == 0]
    assert first["max_track_growth_30d"].isna().all() and (first["growing_volume_mm3"] == 0).all()
    later = visits[visits.visit > 0]
    assert later["max_track_growth_30d"].notna().mean() > 0.9
    assert (later["growing_volume_mm3"] <= later["total_volume_mm3"] + 1e-9).all()
    assert (later["growing_volume_mm3"] > 0).any()

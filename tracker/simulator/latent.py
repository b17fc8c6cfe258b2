"""Latent per-patient truth without images: visit schedule, scanners, lesions and their trajectories, outcome.

Random streams: patient i of a cohort with seed S draws from ``np.random.SeedSequence([S, i]).spawn(4)``:
stream 0 latent (this module), 1 anatomy, 2 motion, 3 image noise and label order. The latent stream never
depends on ``shape``/``spacing``, so the same seed gives the same patients at any resolution, with or without
images.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from tracker.simulator.config import SimulationConfig
from tracker.simulator.lesions import D_VISIBLE_MM, make_blobs, nominal_diameter
from tracker.simulator.outcome import conditional_survival, sample_event_time

STREAM_LATENT, STREAM_ANATOMY, STREAM_MOTION, STREAM_NOISE = range(4)
HU_LESION = {"liver": (15.0, 40.0), "lung": (20.0, 45.0)}  # liver metastases are hypodense (liver ~60)
LIVER_FRACTION = 0.6
HET0_RANGE = (0.3, 1.0)  # texture heterogeneity at onset
HET_TREND_PER_RESIST = 0.25  # per year and unit of resistance: resistant disease grows more heterogeneous
HET_RATE_SD = 0.1
# new lesions arise as a Poisson process, rate new_lesion_rate_per_year * exp(NEW_RATE_PER_RESIST * resistance),
# up to NEW_LESION_WINDOW_DAYS after the last planned visit
NEW_RATE_PER_RESIST = 0.9
NEW_LESION_WINDOW_DAYS = 3 * 365.0
NEW_D0_MM = (4.0, 9.0)
NEW_GROWTH_PER_DAY = (0.004, 0.012)
NEW_ONSET_FIRST_INTERVAL_FRACTION = 0.3
ONSET_TOLERANCE_DAYS = 1e-6


def patient_streams(cfg: SimulationConfig, index: int) -> list[np.random.Generator]:
    """The four independent random streams of patient ``index`` (0-based)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, index]).spawn(4)]


def patient_id(index: int) -> str:
    """ "SIM001" for index 0."""
    return f"SIM{index + 1:03d}"


def unit_ball(rng: np.random.Generator) -> list[float]:
    v = rng.normal(size=3)
    v *= rng.uniform() ** (1 / 3) / np.linalg.norm(v)
    return v.tolist()


def _lesion(
    rng: np.random.Generator,
    lid: str,
    organ: str,
    fate: str,
    d0: float,
    decay: float,
    growth: float,
    onset_day: float = 0.0,
    kind: str = "regular",
) -> dict[str, Any]:
    nec0 = float(rng.uniform(0.0, 0.45)) if d0 >= 15.0 else 0.0
    return {
        "id": lid,
        "organ": organ,
        "fate": fate,
        "onset_day": float(onset_day),
        "d0_mm": float(d0),
        "decay": float(decay),
        "growth": float(growth),
        "het0": float(rng.uniform(*HET0_RANGE)),
        "het_rate": 0.0,
        "nec0": nec0,
        "nec_rate": 0.0,
        "base_hu": float(rng.uniform(*HU_LESION[organ])),
        "side": float(rng.choice([-1.0, 1.0])),
        "position": unit_ball(rng),
        "anchor": None,
        "anchor_offset": None,
        "split_day": None,
        "lag_days": 0.0,
        "blobs": make_blobs(rng, d0, kind),
    }


def decay_to_vanish(d0: float, by_day: float) -> float:
    """Decay rate (per day) that takes a lesion of diameter d0 below visibility by ``by_day``."""
    return 3.0 * np.log(d0 / (0.8 * D_VISIBLE_MM)) / max(by_day, 1.0)


def sample_lesions(rng: np.random.Generator, cfg: SimulationConfig, resist: float, days: list[float]) -> list[dict]:
    """Baseline and new lesions of one patient, with fates and trajectory parameters."""
    t_last = days[-1]
    lesions: list[dict[str, Any]] = []
    n_base = int(rng.integers(cfg.lesions_per_patient[0], cfg.lesions_per_patient[1] + 1))
    het_trend = HET_TREND_PER_RESIST * resist
    for j in range(n_base):
        organ = "liver" if rng.uniform() < LIVER_FRACTION else "lung"
        d0 = float(np.exp(rng.uniform(np.log(5.0), np.log(40.0))))
        u = resist + 0.6 * rng.normal()
        if u > 0.4:
            fate, decay, growth = "grow", rng.uniform(0.0, 0.002), rng.uniform(0.003, 0.009) * np.exp(0.3 * u)
        elif u > -0.4:
            fate, decay, growth = "stable", rng.uniform(0.001, 0.003), rng.uniform(0.001, 0.003)
        elif u > -1.1 or d0 > 25.0:
            fate, decay, growth = "shrink", rng.uniform(0.004, 0.012), rng.uniform(0.0, 0.0015)
        else:
            fate, decay, growth = "vanish", decay_to_vanish(d0, days[min(2, len(days) - 1)]), 0.0
        les = _lesion(rng, f"L{j + 1:02d}", organ, fate, d0, decay, growth)
        les["het_rate"] = float(het_trend + HET_RATE_SD * rng.normal())
        les["nec_rate"] = float(np.clip(0.1 * (fate in ("shrink", "vanish")) + 0.05 * rng.normal(), -0.2, 0.3))
        lesions.append(les)

    hard = rng.uniform() < cfg.hard_case_prob
    nxt = len(lesions) + 1
    if hard:
        # a merging pair: two round liver lesions that grow into each other by a later visit
        merge_day = days[int(rng.integers(2, len(days)))] if len(days) > 2 else days[-1]
        d_a, d_b = rng.uniform(8.0, 14.0), rng.uniform(7.0, 12.0)
        g = np.log(1.9**3) / merge_day  # diameter x1.9 by merge_day (decay ~0)
        a = _lesion(rng, f"L{nxt:02d}", "liver", "merge", d_a, 0.0, g, kind="round")
        b = _lesion(rng, f"L{nxt + 1:02d}", "liver", "merge", d_b, 0.0, g, kind="round")
        a["position"] = (0.5 * np.asarray(a["position"])).tolist()
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        gap_scale = 0.9 * float(nominal_diameter(a, merge_day) + nominal_diameter(b, merge_day)) / 2.0
        b["anchor"], b["anchor_offset"] = a["id"], (direction * gap_scale).tolist()
        lesions += [a, b]
        nxt += 2
        # a lesion that shrinks below visibility by the first follow-up and comes back by the last visit
        d_r = rng.uniform(8.0, 15.0)
        ret = _lesion(rng, f"L{nxt:02d}", "lung", "return", d_r, decay_to_vanish(d_r, days[1]), 0.0)
        back_day = days[-1] if len(days) > 2 else days[-1] + 90.0
        ret["lag_days"] = float(days[1] + 1.0)
        ret["growth"] = float(np.log(1.0 + 0.6**3) / max(back_day - ret["lag_days"], 1.0))
        lesions.append(ret)
        nxt += 1
        # a splitting lesion: two lobes whose bridge vanishes by the last visit
        sp = _lesion(rng, f"L{nxt:02d}", "liver", "split", rng.uniform(16.0, 24.0), 0.002, 0.002, kind="split")
        sp["split_day"] = float(max(days[1] + 1.0, 0.6 * t_last))
        lesions.append(sp)
        nxt += 1
        # a near pair (close but distinct, both shrinking slightly)
        if rng.uniform() < 0.5:
            c = _lesion(rng, f"L{nxt:02d}", "lung", "shrink", rng.uniform(8.0, 12.0), 0.003, 0.0, kind="round")
            d = _lesion(rng, f"L{nxt + 1:02d}", "lung", "shrink", rng.uniform(8.0, 12.0), 0.003, 0.0, kind="round")
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            d["anchor"] = c["id"]
            d["anchor_offset"] = (direction * ((c["d0_mm"] + d["d0_mm"]) / 2.0 * 1.05 + 5.0)).tolist()
            lesions += [c, d]
            nxt += 2

    # new lesions, also after the imaging window (they drive the hazard there)
    horizon = t_last + NEW_LESION_WINDOW_DAYS
    rate = new_lesion_rate_per_day(cfg, resist)
    t = 0.0
    while True:
        t += rng.exponential(1.0 / rate)
        if t > horizon:
            break
        les = _lesion(
            rng,
            f"L{nxt:02d}",
            "liver" if rng.uniform() < LIVER_FRACTION else "lung",
            "new",
            rng.uniform(*NEW_D0_MM),
            0.0,
            rng.uniform(*NEW_GROWTH_PER_DAY),
            onset_day=new_lesion_onset(t, days),
        )
        les["het_rate"] = float(het_trend + HET_RATE_SD * rng.normal())
        lesions.append(les)
        nxt += 1
    return lesions


def new_lesion_rate_per_day(cfg: SimulationConfig, resist: float) -> float:
    """Rate of new lesions (per day) of a patient with latent resistance ``resist`` (a numpy float: a zero rate
    gives an infinite waiting time, no lesions)."""
    return cfg.new_lesion_rate_per_year * np.exp(NEW_RATE_PER_RESIST * resist) / 365.25


def new_lesion_onset(arrival_day: float, days: list[float]) -> float:
    """Onset day of a new lesion arriving at ``arrival_day``: not before 30 % of the first follow-up interval,
    so that the baseline scan holds only baseline lesions."""
    return max(arrival_day, NEW_ONSET_FIRST_INTERVAL_FRACTION * days[1])


def latent_conditional_survival(
    patient: dict[str, Any],
    cfg: SimulationConfig,
    from_day: float,
    days_ahead: np.ndarray,
    rng: np.random.Generator,
    n_draws: int = 32,
) -> np.ndarray:
    """Probability of no progression by ``from_day + days_ahead`` given none by ``from_day``, for one who knows
    the patient's latent state at ``from_day`` but not the future: the resistance and every lesion that exists
    by then with its kinetics; the new lesions after ``from_day`` are drawn from the simulator's own process
    (mean over ``n_draws`` draws). Scans up to ``from_day`` carry at most that state: the ceiling for any model
    of them, below the oracle that also knows the future lesions.
    """
    ahead = np.asarray(days_ahead, dtype=np.float64)
    # landmark days rebuilt from months carry rounding error: a lesion of onset day 0 is present at day -1e-13
    present = [les for les in patient["lesions"] if les["onset_day"] <= from_day + ONSET_TOLERANCE_DAYS]
    until = from_day + float(ahead.max(initial=0.0))
    total = np.zeros(ahead.shape)
    for _ in range(n_draws):
        future = future_new_lesions(rng, cfg, float(patient["resistance"]), from_day, until, patient["planned_days"])
        lesions = {**patient, "lesions": present + future}
        total += conditional_survival(lesions, from_day, ahead, cfg.base_hazard_per_day)
    return total / n_draws


def future_new_lesions(
    rng: np.random.Generator,
    cfg: SimulationConfig,
    resist: float,
    from_day: float,
    until_day: float,
    planned_days: list[float],
) -> list[dict[str, Any]]:
    """One draw of the new lesions with onset after ``from_day`` up to ``until_day`` (within the simulator's
    window), from the process of resistance ``resist``; each holds only what the hazard reads (nominal volume and
    heterogeneity). Arrivals before ``from_day`` whose onset is deferred past it are still to come."""
    rate = new_lesion_rate_per_day(cfg, resist)
    end = min(until_day, planned_days[-1] + NEW_LESION_WINDOW_DAYS)
    t = (from_day if new_lesion_onset(0.0, planned_days) <= from_day else 0.0) + rng.exponential(1.0 / rate)
    future = []
    while t <= end:
        future.append({
            "onset_day": new_lesion_onset(t, planned_days), "d0_mm": rng.uniform(*NEW_D0_MM), "decay": 0.0,
            "growth": rng.uniform(*NEW_GROWTH_PER_DAY), "lag_days": 0.0, "het0": rng.uniform(*HET0_RANGE),
            "het_rate": HET_TREND_PER_RESIST * resist + HET_RATE_SD * rng.normal(),
        })  # fmt: skip
        t += rng.exponential(1.0 / rate)
    return future


def sample_patient(cfg: SimulationConfig, index: int) -> dict[str, Any]:
    """The latent truth of patient ``index``: schedule, scanners, lesions, outcome."""
    rng = patient_streams(cfg, index)[STREAM_LATENT]
    d_lo = dt.date.fromisoformat(cfg.baseline_date_range[0])
    d_hi = dt.date.fromisoformat(cfg.baseline_date_range[1])
    baseline = d_lo + dt.timedelta(days=int(rng.integers(0, (d_hi - d_lo).days + 1)))
    n_fu = int(rng.integers(cfg.min_followups, cfg.max_followups + 1))
    days = [0.0]
    for _ in range(n_fu):
        days.append(days[-1] + float(np.round(rng.uniform(*cfg.interval_days))))
    resist = float(rng.normal())
    lesions = sample_lesions(rng, cfg, resist, days)

    admin_end = float((dt.date.fromisoformat(cfg.study_end_date) - baseline).days)
    t_start = days[min(2, len(days) - 1)]
    event_t = sample_event_time(rng, lesions, t_start, admin_end, cfg.base_hazard_per_day)
    dropout = t_start + rng.exponential(365.25 / max(cfg.dropout_rate_per_year, 1e-9))
    censor_t = min(admin_end, dropout)
    event = bool(event_t <= censor_t)
    time_days = float(np.floor(event_t if event else censor_t))
    kept = [d for d in days if d <= time_days]

    n_sc = int(rng.integers(1, min(cfg.max_scanners_per_patient, len(cfg.scanners)) + 1))
    own = rng.choice(len(cfg.scanners), size=n_sc, replace=False)
    scanners = [int(own[0])] + [int(rng.choice(own)) for _ in kept[1:]]
    large_motion = bool(rng.uniform() < cfg.large_motion_prob)
    return {
        "patient_id": patient_id(index),
        "index": index,
        "baseline_date": baseline.isoformat(),
        "planned_days": days,
        "days": kept,
        "dates": [(baseline + dt.timedelta(days=int(d))).isoformat() for d in kept],
        "scanners": [cfg.scanners[s].name for s in scanners],
        "scanner_index": scanners,
        "scanner_hu_offsets": [cfg.scanners[s].hu_offset for s in scanners],
        "resistance": resist,
        "large_motion": large_motion,
        "lesions": lesions,
        "time_days": time_days,
        "event": int(event),
        "event_date": (baseline + dt.timedelta(days=int(time_days))).isoformat(),
        "hazard_start_day": t_start,
        "admin_end_day": admin_end,
    }


def simulate_latent_cohort(cfg: SimulationConfig) -> list[dict[str, Any]]:
    """Latent truth of every patient of the cohort (fast: no images). Same patients as ``simulate_cohort``."""
    return [sample_patient(cfg, i) for i in range(cfg.n_patients)]

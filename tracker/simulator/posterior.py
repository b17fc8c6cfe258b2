"""The simulator's own best prediction from the scans: posterior-predictive survival given the measured lesions.

:func:`latent_conditional_survival` knows each lesion's kinetics exactly, including what no scan shows yet (the
regrowth rate of a lesion that is still shrinking, the resistance itself). Here the latent state is instead
inferred from what the scans measured up to the landmark, with the simulator's true priors and noise model:

- resistance r on a grid over its N(0, 1) prior;
- every regular baseline lesion and every new lesion: its kinetics and heterogeneity drawn from the simulator's
  prior given r (importance samples), weighted by the likelihood of its measured log volumes (lognormal error
  ``VOLUME_CV``), of its heterogeneity readings (``HU_SD``) and of the visits where it was below detection;
- the number of new lesions seen by the landmark: Poisson with the rate of r;
- the special lesions of the hard cases (merging, returning, splitting, near pairs), whose kinetics do not depend
  on r, are taken as known.

The survival curve is the mean over joint posterior draws of the true conditional survival, with future new
lesions drawn from the process, each draw weighted by its probability of no event by the landmark (the patient is
event-free there). It is a model of the scans that knows the data-generating process: a learner trained on
unlimited data could come close to it, so it is the practical ceiling between the landmark Cox and
``latent_conditional_survival``. Caveats both ways: it uses the true track identities and onset days, each lesion's
organ, base HU and exact necrotic fraction (for the heterogeneity reading) and knows the special lesions; it leaves
out the diameter and mean-HU readings. The models it is compared with read the visit table only.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd

from tracker.simulator.config import SimulationConfig
from tracker.simulator.features import HU_SD, MIN_DETECTABLE_MM, VOLUME_CV
from tracker.simulator.latent import (
    HET0_RANGE,
    HET_RATE_SD,
    HET_TREND_PER_RESIST,
    NEW_D0_MM,
    NEW_GROWTH_PER_DAY,
    ONSET_TOLERANCE_DAYS,
    decay_to_vanish,
    future_new_lesions,
    new_lesion_onset,
    new_lesion_rate_per_day,
)
from tracker.simulator.lesions import D_MAX_MM, DAYS_PER_YEAR, HET_HU, NECROTIC_HU
from tracker.simulator.outcome import cumulative_hazard

REGULAR_FATES = ("grow", "stable", "shrink", "vanish")
RESIST_GRID = np.linspace(-4.0, 4.0, 49)
D0_RANGE_MM = (5.0, 40.0)


def _diameter(d0: np.ndarray, decay: np.ndarray, growth: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Nominal diameter (mm) at tau days after onset, as ``lesions.nominal_diameter`` (lag 0), broadcast."""
    taup = np.maximum(tau, 0.0)
    ratio = np.exp(-decay * taup) + np.exp(np.minimum(growth * taup, 50.0)) - 1.0
    ratio = np.clip(ratio, 0.0, (D_MAX_MM / d0) ** 3)
    return d0 * np.cbrt(ratio)


def _regular_prior(
    rng: np.random.Generator, r: np.ndarray, n: int, log_v0: float, planned_days: list[float]
) -> dict[str, np.ndarray]:
    """(len(r), n) draws of a regular baseline lesion's parameters given resistance r, as ``sample_lesions`` draws
    them, with the same random numbers on every grid row of r (so the evidence is smooth in r); d0 from its
    baseline measurement (flat prior in log d0 on ``D0_RANGE_MM``), whose likelihood ``log_prior`` cancels."""
    rr = r[:, None]
    eps_d, eps_u, u1, u2, u_het, eps_het = (
        rng.normal(size=n),
        rng.normal(size=n),
        *rng.uniform(size=(3, n)),
        rng.normal(size=n),
    )
    d0 = np.broadcast_to(np.exp((log_v0 - np.log(np.pi / 6.0) - VOLUME_CV * eps_d) / 3.0), (len(r), n))
    inside = (d0 >= D0_RANGE_MM[0]) & (d0 <= D0_RANGE_MM[1])
    u = rr + 0.6 * eps_u
    grow, stable = u > 0.4, (u <= 0.4) & (u > -0.4)
    shrink = ~grow & ~stable & ((u > -1.1) | (d0 > 25.0))
    span = lambda lo, hi, x: lo + (hi - lo) * x  # noqa: E731
    decay = np.select(
        [grow, stable, shrink],
        [span(0.0, 0.002, u1), span(0.001, 0.003, u1), span(0.004, 0.012, u1)],
        default=decay_to_vanish(cast(Any, d0), planned_days[min(2, len(planned_days) - 1)]),
    )
    growth = np.select(
        [grow, stable, shrink],
        [span(0.003, 0.009, u2) * np.exp(0.3 * u), span(0.001, 0.003, u2), span(0.0, 0.0015, u2)],
        default=0.0,
    )
    return {
        "d0": np.clip(d0, *D0_RANGE_MM),
        "decay": decay,
        "growth": growth,
        "het0": np.broadcast_to(span(*HET0_RANGE, u_het), (len(r), n)),
        "het_rate": HET_TREND_PER_RESIST * rr + HET_RATE_SD * eps_het,
        # the proposal is the baseline reading's likelihood: its term in _log_likelihood is cancelled here
        "log_prior": np.where(inside, 0.5 * eps_d**2, -np.inf),
    }


def _new_prior(rng: np.random.Generator, r: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """(len(r), n) draws of a new lesion's parameters given r (the same random numbers on every grid row)."""
    shape = (len(r), n)
    return {
        "d0": np.broadcast_to(rng.uniform(*NEW_D0_MM, n), shape),
        "decay": np.zeros(shape),
        "growth": np.broadcast_to(rng.uniform(*NEW_GROWTH_PER_DAY, n), shape),
        "het0": np.broadcast_to(rng.uniform(*HET0_RANGE, n), shape),
        "het_rate": HET_TREND_PER_RESIST * r[:, None] + HET_RATE_SD * rng.normal(size=n),
        "log_prior": np.zeros(shape),
    }


def _log_likelihood(
    draws: dict[str, np.ndarray], lesion: dict[str, Any], seen: pd.DataFrame, visit_days: np.ndarray
) -> np.ndarray:
    """log p(measurements of one lesion | each draw): log volumes and heterogeneity where it was seen, below
    detection at the other visits since its onset."""
    ll = draws["log_prior"].copy()
    by_day = seen.set_index("time_days")
    for day in visit_days[visit_days >= lesion["onset_day"] - ONSET_TOLERANCE_DAYS]:
        tau = day - lesion["onset_day"]
        d = _diameter(draws["d0"], draws["decay"], draws["growth"], tau)
        if day not in by_day.index:
            ll = np.where(d < MIN_DETECTABLE_MM, ll, -np.inf)
            continue
        row = by_day.loc[day]
        log_v = np.log(np.pi / 6.0) + 3.0 * np.log(np.maximum(d, 1e-6))
        ll = ll + np.where(d >= MIN_DETECTABLE_MM, -0.5 * ((row["log_volume"] - log_v) / VOLUME_CV) ** 2, -np.inf)
        het = np.clip(draws["het0"] + draws["het_rate"] * tau / DAYS_PER_YEAR, 0.05, 2.0) * HET_HU
        frac = float(row["necrotic_fraction"])
        spread = lesion["base_hu"] - NECROTIC_HU[lesion["organ"]]
        sd = np.sqrt((1 - frac) * het**2 + frac * (0.3 * het) ** 2 + frac * (1 - frac) * spread**2)
        # the reading is |sd + noise|: a folded normal
        x = float(row["heterogeneity_hu"])
        ll = ll + np.logaddexp(-0.5 * ((x - sd) / HU_SD) ** 2, -0.5 * ((x + sd) / HU_SD) ** 2)
    return ll


def scan_posterior(
    patient: dict[str, Any],
    cfg: SimulationConfig,
    lesion_rows: pd.DataFrame,
    from_day: float,
    rng: np.random.Generator,
    n_samples: int = 1024,
) -> tuple[np.ndarray, list[dict[str, Any]], list[tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]]]:
    """Posterior over the resistance grid ``RESIST_GRID`` given the measurements up to ``from_day``, the lesions
    taken as known, and per inferred lesion its importance draws (grid points x samples) with their log weights."""
    rows = lesion_rows[lesion_rows["time_days"] <= from_day + ONSET_TOLERANCE_DAYS]
    visit_days = np.asarray([d for d in patient["days"] if d <= from_day + ONSET_TOLERANCE_DAYS], dtype=np.float64)
    planned = patient["planned_days"]
    r = RESIST_GRID
    log_post = -0.5 * r**2
    known, inferred = [], []
    regular = True
    for les in patient["lesions"]:
        # the regular baseline lesions come first, before the hard cases' special lesions and the new ones
        regular = regular and les["onset_day"] == 0.0 and les["fate"] in REGULAR_FATES
        if les["onset_day"] > from_day + ONSET_TOLERANCE_DAYS:
            continue
        seen = rows[rows["track_id"] == les["id"]]
        if regular and not seen.empty:
            first = seen.sort_values("time_days").iloc[0]
            draws = _regular_prior(rng, r, n_samples, float(first["log_volume"]), planned)
        elif les["fate"] == "new":
            draws = _new_prior(rng, r, n_samples)
        else:
            known.append(les)
            continue
        ll = _log_likelihood(draws, les, seen, visit_days)
        top = ll.max()
        if not np.isfinite(top):  # no draw explains the measurements: keep the lesion as it is
            known.append(les)
            continue
        with np.errstate(divide="ignore"):
            log_post = log_post + np.log(np.mean(np.exp(ll - top), axis=1)) + top
        inferred.append((les, draws, ll))
    # new lesions seen so far: every arrival up to the landmark is visible there (Poisson in r)
    if from_day >= new_lesion_onset(0.0, planned):
        n_new = sum(
            1
            for les in patient["lesions"]
            if les["fate"] == "new" and les["onset_day"] <= from_day + ONSET_TOLERANCE_DAYS
        )
        rate = np.array([new_lesion_rate_per_day(cfg, v) for v in r]) * from_day
        log_post = log_post + n_new * np.log(rate) - rate
    post = np.exp(log_post - log_post.max())
    return post / post.sum(), known, inferred


def scan_conditional_survival(
    patient: dict[str, Any],
    cfg: SimulationConfig,
    lesion_rows: pd.DataFrame,
    from_day: float,
    days_ahead: np.ndarray,
    rng: np.random.Generator,
    n_samples: int = 1024,
    n_draws: int = 64,
) -> np.ndarray:
    """Posterior-predictive probability of no progression by ``from_day + days_ahead`` given none by ``from_day``
    and the lesion measurements up to ``from_day`` (``lesion_rows``: this patient's rows of the simulator's lesion
    table: time_days, track_id, log_volume, heterogeneity_hu, necrotic_fraction)."""
    ahead = np.asarray(days_ahead, dtype=np.float64)
    post, known, inferred = scan_posterior(patient, cfg, lesion_rows, from_day, rng, n_samples)
    until = from_day + float(ahead.max(initial=0.0))
    curves, survived = [], []
    for _ in range(n_draws):
        i = int(rng.choice(len(RESIST_GRID), p=post))
        resist = float(RESIST_GRID[i])
        lesions = list(known)
        for les, draws, ll in inferred:
            w = np.exp(ll[i] - ll[i].max())
            j = int(rng.choice(n_samples, p=w / w.sum()))
            drawn = {k: float(draws[k][i, j]) for k in ("decay", "growth", "het0", "het_rate")}
            lesions.append({**les, **drawn, "d0_mm": float(draws["d0"][i, j]), "lag_days": 0.0})
        lesions += future_new_lesions(rng, cfg, resist, from_day, until, patient["planned_days"])
        t, cum = cumulative_hazard(lesions, patient["hazard_start_day"], until, cfg.base_hazard_per_day)
        at = np.interp(from_day, t, cum)
        curves.append(np.exp(-(np.interp(from_day + ahead, t, cum) - at)))
        survived.append(-at)
    # the patient is event-free at the landmark: each draw weighs by its probability of that, exp(-H(from_day))
    w = np.exp(np.asarray(survived) - max(survived))
    return (w / w.sum()) @ np.asarray(curves)

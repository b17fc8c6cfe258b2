"""Kinds blend and auto: the weight and the kind chosen by inner cross-validation, recorded with the reason."""

from __future__ import annotations

import numpy as np

from tracker.survival import SurvivalModelConfig
from tracker.survival.blend import CANDIDATES, OutOfFold, choose, train_auto
from tracker.survival.synthetic import baseline_memory_cohort
from tracker.survival.toy import ToyCohortConfig, toy_cohort

CFG = SurvivalModelConfig(max_epochs=100, min_epochs=20, n_ensemble=2)
GRID = SurvivalModelConfig().grid_months


def _oof(n: int = 600, seed: int = 0) -> tuple[OutOfFold, np.ndarray]:
    """Out-of-fold curves where the 'rnn' column is the true curve and the 'cox' one the population's."""
    rng = np.random.default_rng(seed)
    lam = 0.03 * np.exp(rng.normal(0.0, 1.0, n))
    t, c = rng.exponential(1.0 / lam), rng.uniform(6.0, 36.0, n)
    g = np.asarray(GRID)
    truth = np.exp(-lam[:, None] * g[None, :])
    flat = np.tile(truth.mean(axis=0), (n, 1))
    months = np.minimum(np.minimum(t, c), 36.0)
    events = ((t <= c) & (t <= 36.0)).astype(int)
    return OutOfFold(months, events, rng.integers(1, 3, n), truth, flat), truth


def test_choose_takes_the_informative_member() -> None:
    oof, _ = _oof()
    choice = choose(oof, SurvivalModelConfig())
    assert choice.blend_weight >= 0.8
    assert choice.auto_kind == "rnn" and choice.weight("auto") == 1.0
    assert set(choice.scores) == set(CANDIDATES)
    assert choice.scores["rnn"]["c_td"] > choice.scores["landmark-cox"]["c_td"] + 0.1
    swapped = OutOfFold(oof.months, oof.events, oof.landmark, oof.cox, oof.rnn)
    assert choose(swapped, SurvivalModelConfig()).auto_kind == "landmark-cox"


def test_auto_picks_the_cox_where_only_the_latest_value_matters() -> None:
    """The hazard follows the marker's level, which every visit measures (the latest value is all there is): the
    landmark Cox is kept, and the model needs no RNN."""
    toy = ToyCohortConfig(
        n_patients=120, slope_log_hazard_ratio=0.0, level_log_hazard_ratio=1.2, marker_noise_sd=0.1, n_noise_features=1
    )
    visits, events, _ = toy_cohort(toy, seed=1)
    model = train_auto(visits, events, CFG, seed=0)
    why = model.metadata["metrics"]["inner_cv"]
    assert why["chosen"] == "landmark-cox" and model.weight == 0.0 and model.rnn is None
    assert set(why["candidates"]) == set(CANDIDATES) and "landmark-cox is the simplest" in why["reason"]
    assert all({"ibs", "c_td"} <= set(s) for s in why["candidates"].values())


def test_auto_picks_the_rnn_where_the_trajectory_matters() -> None:
    """The hazard is set by the first visit's marker, which later visits no longer show: from the third visit on
    only the trajectory carries it, and the RNN is chosen."""
    visits, events = baseline_memory_cohort(200, seed=2)
    model = train_auto(visits, events, CFG, seed=0)
    why = model.metadata["metrics"]["inner_cv"]
    assert why["chosen"] == "rnn" and model.weight == 1.0 and model.cox is None
    assert why["candidates"]["rnn"]["c_td"] > why["candidates"]["landmark-cox"]["c_td"] + 0.05

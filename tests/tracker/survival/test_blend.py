"""Kinds blend and auto: the RNN weight per landmark chosen by inner cross-validation, recorded with the reason;
per-landmark mixing; files of the one-weight format still read."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from tracker.errors import MetatrackError
from tracker.survival import SurvivalModelConfig
from tracker.survival.blend import (
    CANDIDATES,
    MAX_LANDMARK,
    CombinedModel,
    OutOfFold,
    Scored,
    best_of,
    choose,
    train_auto,
)
from tracker.survival.kinds import model_from_bytes
from tracker.survival.landmark_cox import train_landmark_cox
from tracker.survival.model import train_model
from tracker.survival.synthetic import baseline_memory_cohort
from tracker.survival.toy import ToyCohortConfig, toy_cohort

CFG = SurvivalModelConfig(max_epochs=100, min_epochs=20, n_ensemble=2)
FAST = SurvivalModelConfig(max_epochs=10, min_epochs=10, n_ensemble=2)
GRID = SurvivalModelConfig().grid_months


def _oof(n: int = 600, seed: int = 0, landmarks: int = 2) -> tuple[OutOfFold, np.ndarray]:
    """Out-of-fold curves where the 'rnn' column is the true curve and the 'cox' one another patient's (it does
    not rank: mixing it in costs C)."""
    rng = np.random.default_rng(seed)
    lam = 0.03 * np.exp(rng.normal(0.0, 1.0, n))
    t, c = rng.exponential(1.0 / lam), rng.uniform(6.0, 36.0, n)
    g = np.asarray(GRID)
    truth = np.exp(-lam[:, None] * g[None, :])
    flat = truth[rng.permutation(n)]
    months = np.minimum(np.minimum(t, c), 36.0)
    events = ((t <= c) & (t <= 36.0)).astype(int)
    return OutOfFold(months, events, rng.integers(1, landmarks + 1, n), truth, flat), truth


def test_choose_takes_the_informative_member() -> None:
    oof, _ = _oof()
    choice = choose(oof, SurvivalModelConfig())
    assert min(choice.blend_weights) >= 0.8
    assert choice.auto_picks == ("rnn",) * MAX_LANDMARK and choice.weights("auto") == (1.0,) * MAX_LANDMARK
    assert set(choice.scores) == set(CANDIDATES)
    assert choice.scores["rnn"]["c_td"] > choice.scores["landmark-cox"]["c_td"] + 0.1
    swapped = OutOfFold(oof.months, oof.events, oof.landmark, oof.cox, oof.rnn)
    assert choose(swapped, SurvivalModelConfig()).auto_picks == ("landmark-cox",) * MAX_LANDMARK


def test_each_landmark_gets_its_own_weight_where_the_better_member_differs() -> None:
    """Landmark 1: the Cox column holds the truth; landmarks 2-4: the RNN's. The weights follow, per landmark."""
    oof, _ = _oof(n=1600, seed=3, landmarks=4)
    first = oof.landmark == 1
    rnn = np.where(first[:, None], oof.cox, oof.rnn)
    cox = np.where(first[:, None], oof.rnn, oof.cox)
    choice = choose(OutOfFold(oof.months, oof.events, oof.landmark, rnn, cox), SurvivalModelConfig())
    assert choice.blend_weights[0] <= 0.2 and min(choice.blend_weights[1:]) >= 0.8
    assert choice.auto_picks[0] == "landmark-cox" and choice.auto_picks[1:] != ("landmark-cox",) * 3
    assert choice.weights("auto")[0] == 0.0 and min(choice.weights("auto")[1:]) >= 0.8
    by_k = choice.landmark_scores
    assert by_k["landmark-cox"][1]["c_td"] > by_k["rnn"][1]["c_td"] + 0.1
    assert by_k["rnn"][2]["c_td"] > by_k["landmark-cox"][2]["c_td"] + 0.1


def test_the_criterion_ranks_c_first_and_breaks_near_ties_by_ibs() -> None:
    def scored(c: float, ibs: float, noise: float = 0.0) -> Scored:
        return Scored(ibs, c, c + noise * np.array([-1.0, 1.0] * 10))  # draws with standard error ~noise

    scores = {
        "a": scored(0.702, 0.150),
        "b": scored(0.703, 0.140),  # within C_TOLERANCE of the best C, lowest IBS
        "c": scored(0.706, 0.160),
        "d": scored(0.650, 0.100),  # best IBS, but far worse C
    }
    order = ["a", "b", "c", "d"]
    assert best_of(scores, order) == "b"
    assert best_of(scores, order, ibs_slack=0.011) == "a"  # the first in order within the slack
    scores["d"] = scored(0.650, 0.100, noise=0.06)  # its C is within one standard error of the best
    assert best_of(scores, order) == "d"


@pytest.fixture(scope="module")
def members():
    toy = ToyCohortConfig(n_patients=80, slope_log_hazard_ratio=1.0, n_noise_features=1)
    visits, events, _ = toy_cohort(toy, seed=5)
    return visits, train_model(visits, events, FAST, seed=0), train_landmark_cox(visits, events, FAST, seed=0)


def test_combined_model_mixes_with_the_weight_of_each_visits_landmark(members) -> None:
    visits, rnn, cox = members
    model = CombinedModel("blend", FAST, cox.standardizer, rnn, cox, (0.0, 1.0, 0.25), None)
    index, surv = model.survival_all_visits(visits)
    _, s_rnn = rnn.survival_all_visits(visits)
    _, s_cox = cox.survival_all_visits(visits)
    k = index["visit_index"].to_numpy()
    assert (k >= 4).any() and np.abs(s_rnn - s_cox).max() > 0.01
    np.testing.assert_allclose(surv[k == 1], s_cox[k == 1])
    np.testing.assert_allclose(surv[k == 2], s_rnn[k == 2])
    later = k >= 3  # landmark 3 and every visit after the last landmark: weight 0.25
    np.testing.assert_allclose(surv[later], 0.25 * s_rnn[later] + 0.75 * s_cox[later])
    cox_only = CombinedModel("auto", FAST, cox.standardizer, None, cox, (0.0,) * MAX_LANDMARK, None)
    assert model_from_bytes(cox_only.to_bytes()).rnn is None  # type: ignore[attr-defined]
    with pytest.raises(MetatrackError, match="need a member that is missing"):
        CombinedModel("auto", FAST, cox.standardizer, None, cox, (0.0, 0.5), None)


def test_files_of_format_1_one_weight_for_every_visit_still_read(members) -> None:
    """A format-1 file (scalar "weight", as written before per-landmark weights) reads with that weight everywhere."""
    visits, rnn, cox = members
    new = CombinedModel("blend", FAST, cox.standardizer, rnn, cox, (0.3,), None)
    with zipfile.ZipFile(io.BytesIO(new.to_bytes())) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    header = json.loads(entries["model.json"])
    header["format_version"] = 1
    header["weight"] = header.pop("weights")[0]
    entries["model.json"] = json.dumps(header).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)
    old = model_from_bytes(buf.getvalue())
    assert isinstance(old, CombinedModel) and old.weights == (0.3,)
    _, surv = old.survival_all_visits(visits)
    _, s_rnn = rnn.survival_all_visits(visits)
    _, s_cox = cox.survival_all_visits(visits)
    np.testing.assert_allclose(surv, 0.3 * s_rnn + 0.7 * s_cox)
    assert json.loads(zipfile.ZipFile(io.BytesIO(old.to_bytes())).read("model.json"))["weights"] == [0.3]


def test_auto_picks_the_cox_where_only_the_latest_value_matters() -> None:
    """The hazard follows the marker's level, which every visit measures (the latest value is all there is): the
    landmark Cox is kept at every landmark, and the model needs no RNN."""
    toy = ToyCohortConfig(
        n_patients=120, slope_log_hazard_ratio=0.0, level_log_hazard_ratio=1.2, marker_noise_sd=0.1, n_noise_features=1
    )
    visits, events, _ = toy_cohort(toy, seed=1)
    model = train_auto(visits, events, CFG, seed=0)
    why = model.metadata["metrics"]["inner_cv"]
    assert why["chosen"] == "landmark-cox" and model.weights == (0.0,) * MAX_LANDMARK and model.rnn is None
    assert [p["chosen"] for p in why["per_landmark"]] == ["landmark-cox"] * MAX_LANDMARK
    assert set(why["candidates"]) == set(CANDIDATES) and "pooled pick landmark-cox" in why["reason"]
    assert all({"ibs", "c_td"} <= set(s) for s in why["candidates"].values())
    assert model.metadata["versions"].get("torch") is None


def test_auto_picks_the_rnn_where_the_trajectory_matters() -> None:
    """The hazard is set by the first visit's marker, which later visits no longer show: from the third visit on
    only the trajectory carries it, and the RNN takes (almost) all the weight; at the first two visits, where the
    Cox's design (values and their change since the previous visit) holds that marker too, the two tie on C and the
    landmark Cox stays (the early-visit default)."""
    visits, events = baseline_memory_cohort(200, seed=2)
    model = train_auto(visits, events, CFG, seed=0)
    why = model.metadata["metrics"]["inner_cv"]
    assert model.weights[:2] == (0.0, 0.0) and min(model.weights[2:]) >= 0.8
    assert all(p["why"].startswith("early-visit default") for p in why["per_landmark"][:2])
    assert why["chosen"] in ("rnn", "blend") and model.rnn is not None
    assert why["candidates"]["rnn"]["c_td"] > why["candidates"]["landmark-cox"]["c_td"] + 0.05

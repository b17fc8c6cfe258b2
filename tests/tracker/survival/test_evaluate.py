"""Feature selection, Cox baselines and grouped cross-validation."""

import numpy as np
import pandas as pd
import pytest

from tracker.survival import SurvivalModelConfig, evaluate_models
from tracker.survival.baselines import CoxBaseline
from tracker.survival.evaluate import cross_validated_predictions
from tracker.survival.selection import select_features
from tracker.survival.toy import ToyCohortConfig, exponential_cohort, toy_cohort

FAST = SurvivalModelConfig(max_epochs=10, min_epochs=10)


def test_selection_prefers_informative_and_drops_duplicates():
    toy = ToyCohortConfig(n_patients=300, marker_noise_sd=0.1, n_noise_features=8, missing_fraction=0.0)
    visits, events, _ = toy_cohort(toy, seed=3)
    rng = np.random.default_rng(0)
    visits["marker_copy"] = 2.0 * visits["marker"] + rng.normal(0, 1e-3, len(visits))
    end = visits["patient_id"].map(events.set_index("patient_id")["time_days"]).to_numpy()
    flag = visits["patient_id"].map(events.set_index("patient_id")["event"]).to_numpy()
    feats = [c for c in visits.columns if c not in ("patient_id", "time_days")]
    chosen, relevance = select_features(visits, end - visits["time_days"].to_numpy(), flag, feats, "patient_id", 3, 0.9)
    assert chosen[0] in ("marker", "marker_copy")
    assert not {"marker", "marker_copy"} <= set(chosen)
    assert len(chosen) == 3
    assert relevance["marker"] > max(relevance[f"noise_{j}"] for j in range(8))


def test_cox_baseline_recovers_known_hazard_ratio():
    rng = np.random.default_rng(4)
    x = rng.normal(size=3000)
    t = rng.exponential(1.0 / (0.05 * np.exp(0.8 * x)))
    c = rng.uniform(0, 60, 3000)
    cox = CoxBaseline.fit(pd.DataFrame({"x": x}), np.minimum(t, c), (t <= c).astype(int), penalizer=0.0)
    assert float(cox.fitter.params_["x"]) == pytest.approx(0.8, abs=0.06)
    # conditional survival from an elapsed time: constant hazard -> S(e + g) / S(e) = exp(-0.05 g) at x = 0
    s = cox.survival(pd.DataFrame({"x": [0.0]}), np.array([6.0]), [12.0])
    assert float(s[0, 0]) == pytest.approx(np.exp(-0.05 * 12.0), abs=0.03)


def test_cross_validation_is_patient_grouped_and_landmarked():
    visits, events, _ = toy_cohort(ToyCohortConfig(n_patients=80), seed=6)
    preds = cross_validated_predictions(visits, events, FAST, folds=3, seed=0, landmarks=(1, 3))
    counts = visits.groupby("patient_id").size()
    for k, pred in preds.items():
        ids = np.concatenate(pred.patient_ids)
        assert len(ids) == len(set(ids)) == int((counts >= k).sum())  # every eligible patient once, out of fold
        months, _, curves = pred.arrays()
        assert all(c.shape == (len(ids), 36) for c in curves.values())
        # time origin at the k-th visit
        ev = events.set_index("patient_id")
        kth = visits.groupby("patient_id")["time_days"].nth(k - 1)
        kth.index = visits.loc[kth.index, "patient_id"]
        np.testing.assert_allclose(months * 365.25 / 12, ev.loc[ids, "time_days"] - kth.loc[ids].to_numpy())


def test_evaluate_models_table():
    visits, events = exponential_cohort(120, 0.05, 40.0, seed=2)
    visits["noise"] = np.random.default_rng(1).normal(size=len(visits))
    table = evaluate_models(visits, events, FAST, folds=2, seed=0, landmarks=(1,), n_bootstrap=20)
    assert {"model", "landmark", "metric", "pooling", "mean", "ci_low", "ci_high"} <= set(table.columns)
    assert set(table["model"]) == {"rnn", "cox_baseline", "cox_landmark", "km", "rnn-cox_baseline", "rnn-cox_landmark"}
    assert set(table["pooling"]) == {"pooled", "per_fold"}
    table = table[table["pooling"] == "pooled"]
    c = table[(table["metric"] == "c_td")].set_index("model")
    assert (c["ci_low"] <= c["ci_high"]).all()
    # no feature carries information: every model ranks at chance
    assert c.loc[["rnn", "cox_baseline", "cox_landmark"], "estimate"].between(0.35, 0.65).all()
    # and the RNN's curves are no better or worse than the fold's Kaplan-Meier curve
    ibs = table[table["metric"] == "ibs"].set_index("model")["estimate"]
    assert ibs["rnn"] == pytest.approx(ibs["km"], abs=0.02)


def test_per_fold_scores_rank_within_each_fitted_model():
    """Two folds, each ranked perfectly by its own model, but fold 1's model predicts far lower risks for everyone:
    per fold the C is 1; pooled, the cross-fold pairs are discordant."""
    from tracker.survival.evaluate import LandmarkPredictions, score_predictions

    cfg = SurvivalModelConfig()
    grid = np.asarray(cfg.grid_months)
    pred = LandmarkPredictions(2)
    for f, scale in ((0, 1.0), (1, 0.05)):
        months = np.array([3.0, 6.0, 9.0, 12.0, 15.0, 18.0]) + f  # fold 1's patients fail a month later
        hazard = scale * 0.2 / months  # earlier failure, higher hazard: perfect ranking within the fold
        pred.patient_ids.append(np.arange(6) + 6 * f)
        pred.months.append(months)
        pred.events.append(np.ones(6, dtype=int))
        pred.folds.append(np.full(6, f))
        curve = np.exp(-hazard[:, None] * grid[None, :])
        for m in pred.curves:
            pred.curves[m].append(curve)
    table = score_predictions({2: pred}, cfg, (12.0,), n_bootstrap=0)
    c = table[(table["metric"] == "c_td") & (table["model"] == "rnn")].set_index("pooling")["estimate"]
    assert c["per_fold"] == pytest.approx(1.0)
    assert c["pooled"] < 0.8


def test_every_kind_side_by_side_with_bands_and_calibration():
    """combined=True: blend and auto are scored beside the RNN and the Cox fits (auto's pick recorded per fold),
    every band brackets its curves, and the calibration slope/intercept rows are point estimates."""
    from tracker.survival.evaluate import reliability, score_predictions

    visits, events, _ = toy_cohort(ToyCohortConfig(n_patients=100, n_noise_features=1), seed=8)
    cfg = SurvivalModelConfig(max_epochs=10, min_epochs=10, n_ensemble=2)
    preds = cross_validated_predictions(visits, events, cfg, folds=2, seed=0, landmarks=(1, 2), combined=True)
    pred = preds[2]
    assert {"rnn", "cox_landmark", "blend", "auto"} <= set(pred.curves) and len(pred.auto_picks) == 2
    _, _, curves = pred.arrays()
    for model, (lower, upper) in pred.bands().items():
        assert np.all(lower <= curves[model] + 1e-12) and np.all(curves[model] <= upper + 1e-12)
    table = score_predictions(preds, cfg, (12.0,), n_bootstrap=2, seed=0)
    cal = table[(table["metric"] == "calib_slope_12m") & (table["pooling"] == "pooled")].set_index(
        ["model", "landmark"]
    )
    assert set(cal.index.get_level_values("model")) >= {"rnn", "cox_landmark", "blend", "auto"}
    assert cal["estimate"].between(0.05, 20.0).all() and cal["ci_low"].isna().all()  # point estimates only
    deciles = reliability(preds, cfg, "auto", 2, 12.0)
    assert sum(r["n"] for r in deciles) == len(np.concatenate(pred.months))

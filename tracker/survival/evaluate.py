"""Patient-grouped cross-validation of the RNN against Cox baselines at visit landmarks, with bootstrap CIs.

At landmark k (a visit index, 1-based) the patients with >= k visits before their outcome are scored from their
k-th visit: time origin at that visit, follow-up truncated at the model horizon. Metrics are computed on the
out-of-fold predictions within each fold and averaged, and on all of them pooled; CIs come from a patient bootstrap
of the out-of-fold predictions (paired across models).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracker.survival.config import SurvivalModelConfig

MODELS = ("rnn", "cox_baseline", "cox_landmark", "km")
COMBINED = ("blend", "auto")  # the kinds trained with an inner CV (tracker.survival.blend), with ``combined``
INTERVAL_MODELS = ("rnn", "cox_landmark", *COMBINED)  # models whose 90 % bands are kept
PAIRED = (
    ("rnn", "cox_baseline"),
    ("rnn", "cox_landmark"),
    ("blend", "cox_baseline"),
    ("blend", "cox_landmark"),
    ("auto", "cox_baseline"),
    ("auto", "cox_landmark"),
)
CI_LEVEL = 0.95
IBS_TIME_QUANTILE = 0.9  # the IBS integral stops before the sparse tail of follow-up, where IPCW weights explode


@dataclass
class LandmarkPredictions:
    """Pooled out-of-fold survival curves at one landmark: per patient months to outcome, event, fold, curves."""

    landmark: int
    patient_ids: list = field(default_factory=list)
    months: list = field(default_factory=list)
    events: list = field(default_factory=list)
    folds: list = field(default_factory=list)
    curves: dict[str, list] = field(default_factory=lambda: {m: [] for m in MODELS})
    # per model of INTERVAL_MODELS: the 90 % band's lower and upper survival curves, in the order of ``curves``
    lower: dict[str, list] = field(default_factory=dict)
    upper: dict[str, list] = field(default_factory=dict)
    auto_picks: list[str] = field(default_factory=list)  # per fold: the candidate auto chose at this landmark
    cox_fits_not_converged: int = 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        return (
            np.concatenate(self.months),
            np.concatenate(self.events),
            {m: np.concatenate(v, axis=0) for m, v in self.curves.items()},
        )

    def bands(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(lower, upper) survival curves per model with a band."""
        return {m: (np.concatenate(self.lower[m]), np.concatenate(self.upper[m])) for m in self.lower}


def cross_validated_predictions(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    folds: int = 5,
    seed: int = 0,
    landmarks: Sequence[int] = (1, 2, 3, 4),
    progress: Callable[[str], None] | None = None,
    *,
    combined: bool = False,
) -> dict[int, LandmarkPredictions]:
    """Out-of-fold survival curves of every model at every landmark (folds split patients, never visits), and the
    90 % bands of the RNN and the landmark Cox.

    With ``combined`` every fold also trains the kinds "blend" and "auto" (their inner CV on the fold's training
    patients); the RNN is then the one they trained on the whole training fold (same data and seed as alone).
    """
    from tracker.survival.baselines import CoxBaseline, KaplanMeierBaseline, landmark_design, outcome_from
    from tracker.survival.blend import fit_combined
    from tracker.survival.intervals import INTERVAL_SCALES, Z_90, band
    from tracker.survival.landmark_cox import KIND as COX_KIND
    from tracker.survival.landmark_cox import CoxFit
    from tracker.survival.model import prepare_training_tables, train_model

    kept, ev, _ = prepare_training_tables(visits, events, cfg)
    pid = cfg.patient_col
    patients = kept[pid].drop_duplicates().to_numpy()
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(patients[rng.permutation(len(patients))], np.arange(len(patients)) % folds, strict=True))
    visit_fold = kept[pid].map(fold_of).to_numpy()
    event_fold = ev[pid].map(fold_of).to_numpy()
    grid = cfg.grid_months
    out = {k: LandmarkPredictions(k) for k in landmarks}
    for f in range(folds):
        tr_v, te_v = kept[visit_fold != f], kept[visit_fold == f]
        tr_e, te_e = ev[event_fold != f], ev[event_fold == f]
        fit = fit_combined(tr_v, tr_e, cfg, seed=seed + f) if combined else None
        model = fit.rnn if fit is not None and fit.rnn is not None else train_model(tr_v, tr_e, cfg, seed=seed + f)
        stats = model.standardizer
        index, surv, low, high = model.survival_interval_all_visits(te_v)
        extra = {}
        for kind in COMBINED if fit is not None else ():
            extra[kind] = fit.model(kind).survival_interval_all_visits(te_v)  # type: ignore[union-attr]
        tr_ids, tr_rem, tr_evt, _ = outcome_from(tr_v, tr_e, cfg, 1)
        cox_base = CoxBaseline.fit(landmark_design(tr_v, stats, cfg, 1, tr_ids), tr_rem, tr_evt, cfg.cox_penalizer)
        for k in landmarks:
            te_ids, te_rem, te_evt, elapsed = outcome_from(te_v, te_e, cfg, k)
            if len(te_ids) == 0:
                continue
            rows = index[index["visit_index"] == k].set_index(pid).index.get_indexer(te_ids)
            rnn_rows = np.nonzero((index["visit_index"] == k).to_numpy())[0][rows]
            lk_ids, lk_rem, lk_evt, _ = outcome_from(tr_v, tr_e, cfg, k)
            cox_lm = CoxBaseline.fit(landmark_design(tr_v, stats, cfg, k, lk_ids), lk_rem, lk_evt, cfg.cox_penalizer)
            pred = out[k]
            pred.cox_fits_not_converged += int(not cox_base.converged) + int(not cox_lm.converged)
            pred.curves["rnn"].append(surv[rnn_rows])
            pred.lower.setdefault("rnn", []).append(low[rnn_rows])
            pred.upper.setdefault("rnn", []).append(high[rnn_rows])
            for kind, (_, s_k, lo_k, hi_k) in extra.items():
                pred.curves.setdefault(kind, []).append(s_k[rnn_rows])
                pred.lower.setdefault(kind, []).append(lo_k[rnn_rows])
                pred.upper.setdefault(kind, []).append(hi_k[rnn_rows])
            if fit is not None:
                pred.auto_picks.append(fit.choice.pick_label(k))
            pred.curves["cox_baseline"].append(
                cox_base.survival(landmark_design(te_v, stats, cfg, 1, te_ids), elapsed, grid)
            )
            te_design = landmark_design(te_v, stats, cfg, k, te_ids)
            s_lm = cox_lm.survival(te_design, np.zeros(len(te_ids)), grid)
            hw = Z_90 * INTERVAL_SCALES[COX_KIND] * CoxFit.from_lifelines(k, cox_lm).linear_predictor_sd(te_design)
            lm_low, lm_high = band(s_lm, hw[:, None])
            pred.curves["cox_landmark"].append(s_lm)
            pred.lower.setdefault("cox_landmark", []).append(lm_low)
            pred.upper.setdefault("cox_landmark", []).append(lm_high)
            pred.curves["km"].append(KaplanMeierBaseline.fit(lk_rem, lk_evt).survival(len(te_ids), grid))
            pred.patient_ids.append(te_ids)
            pred.months.append(te_rem)
            pred.events.append(te_evt)
            pred.folds.append(np.full(len(te_ids), f))
        if progress is not None:
            progress(f"fold {f + 1}/{folds} done")
    return {k: p for k, p in out.items() if p.months}


def score_curves(
    months: np.ndarray,
    events: np.ndarray,
    surv: np.ndarray,
    cfg: SurvivalModelConfig,
    horizons_months: Sequence[float],
    ibs_end_months: float,
    calibration_groups: int = 5,
) -> dict[str, float]:
    """All metrics of one model's curves (follow-up already truncated at the horizon)."""
    from tracker.survival.metrics import (
        calibration_error,
        concordance_td,
        integrated_brier_score,
        survival_at,
        uno_c,
    )

    grid = np.asarray(cfg.grid_months)
    res = {"c_td": concordance_td(months, events, surv, grid)}
    for h in horizons_months:
        risk = 1.0 - survival_at(surv, grid, np.array([h]))[:, 0]
        res[f"uno_c_{h:g}m"] = uno_c(months, events, risk, h)
        res[f"calib_{h:g}m"] = calibration_error(months, events, risk, h, calibration_groups)
    eval_times = grid[grid <= ibs_end_months]
    res["ibs"] = integrated_brier_score(months, events, surv, grid, eval_times) if len(eval_times) > 1 else np.nan
    return res


def evaluate_models(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    folds: int = 5,
    seed: int = 0,
    landmarks: Sequence[int] = (1, 2, 3, 4),
    *,
    horizons_months: Sequence[float] = (12.0, 24.0),
    n_bootstrap: int = 200,
    progress: Callable[[str], None] | None = None,
    combined: bool = False,
) -> pd.DataFrame:
    """RNN vs baseline Cox vs landmark Cox (and Kaplan-Meier; with ``combined`` also the kinds blend and auto) at
    each landmark.

    Returns one row per model x landmark x metric x pooling with columns model, landmark, metric, pooling ("pooled"
    over all out-of-fold predictions or "per_fold" mean, see :func:`score_predictions`), estimate, mean, ci_low,
    ci_high (bootstrap over patients), n_patients, n_events. Rows with model "rnn-cox_baseline" /
    "rnn-cox_landmark" hold paired differences.
    """
    preds = cross_validated_predictions(visits, events, cfg, folds, seed, landmarks, progress, combined=combined)
    return score_predictions(preds, cfg, horizons_months, n_bootstrap, seed)


def _fold_mean(per_fold: list[dict], model: str, metric: str, minus: str | None = None) -> float:
    """Mean over folds of a model's metric (minus another model's, fold by fold), skipping folds where it is NaN
    (e.g. a bootstrap fold without events); NaN when no fold has it."""
    vals = np.array([f[model][metric] - (f[minus][metric] if minus else 0.0) for f in per_fold], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if len(vals) else np.nan


def calibration_estimates(
    months: np.ndarray,
    events: np.ndarray,
    surv: np.ndarray,
    groups: list[np.ndarray],
    cfg: SurvivalModelConfig,
    h: float,
) -> dict[str, float]:
    """Mean over the groups of rows (the folds, or one group: all pooled) of the calibration slope and intercept at
    horizon h (:func:`tracker.survival.calibration.calibration_at`; NaN where a group has too few events)."""
    from tracker.survival.calibration import calibration_at
    from tracker.survival.metrics import survival_at

    risk = 1.0 - survival_at(surv, np.asarray(cfg.grid_months), np.array([h]))[:, 0]
    cals = [calibration_at(months[g], events[g], risk[g], h) for g in groups]
    out = {}
    for name, key in (("calib_slope", "slope"), ("calib_intercept", "intercept")):
        vals = np.array([c[key] for c in cals], dtype=np.float64)
        out[name] = float(np.nanmean(vals)) if np.isfinite(vals).any() else np.nan
    return out


def reliability(
    preds: dict[int, LandmarkPredictions], cfg: SurvivalModelConfig, model: str, landmark: int, horizon: float
) -> list[dict]:
    """Deciles of a model's pooled out-of-fold risk at a landmark: n, mean predicted, Kaplan-Meier observed."""
    from tracker.survival.calibration import calibration_at
    from tracker.survival.metrics import survival_at

    months, evt, curves = preds[landmark].arrays()
    evt = np.where(months > cfg.horizon_months, 0, evt)
    months = np.minimum(months, cfg.horizon_months)
    risk = 1.0 - survival_at(curves[model], np.asarray(cfg.grid_months), np.array([horizon]))[:, 0]
    return calibration_at(months, evt, risk, horizon)["reliability"]


def score_predictions(
    preds: dict[int, LandmarkPredictions],
    cfg: SurvivalModelConfig,
    horizons_months: Sequence[float] = (12.0, 24.0),
    n_bootstrap: int = 200,
    seed: int = 0,
    paired: Sequence[tuple[str, str]] = PAIRED,
) -> pd.DataFrame:
    """Metrics with paired patient-bootstrap CIs from out-of-fold predictions; ``paired`` lists the (a, b) model
    pairs whose differences a - b get rows (pairs with a model not present are skipped).

    Every metric is computed two ways (column ``pooling``): "pooled" over all out-of-fold predictions at once, and
    "per_fold", within each fold (one fitted model) and averaged over folds. Pooling also compares patients scored
    by different fitted models, so it penalises a model whose absolute risk scale varies between folds (an unstable
    Cox fit) even where each fit ranks its own patients well; the per-fold mean is what one deployed model would show.
    """
    rows = []
    rng = np.random.default_rng(seed)
    alpha = (1.0 - CI_LEVEL) / 2.0
    for k, pred in preds.items():
        months, evt, curves = pred.arrays()
        folds = np.concatenate(pred.folds)
        horizon = cfg.horizon_months
        evt = np.where(months > horizon, 0, evt)
        months = np.minimum(months, horizon)
        ibs_end = min(float(np.quantile(months, IBS_TIME_QUANTILE)), horizon)

        def scores(idx: np.ndarray, months=months, evt=evt, curves=curves, ibs_end=ibs_end) -> dict:
            return {
                m: score_curves(months[idx], evt[idx], c[idx], cfg, horizons_months, ibs_end) for m, c in curves.items()
            }

        def all_scores(idx: np.ndarray, folds=folds) -> dict:
            within = [scores(idx[folds[idx] == f]) for f in np.unique(folds[idx])]
            return {"pooled": [scores(idx)], "per_fold": within}

        point = all_scores(np.arange(len(months)))
        boots = [all_scores(rng.integers(0, len(months), len(months))) for _ in range(n_bootstrap)]
        for pooling in ("pooled", "per_fold"):
            models = point[pooling][0]
            table = {
                (m, metric): (_fold_mean(point[pooling], m, metric), [_fold_mean(b[pooling], m, metric) for b in boots])
                for m in models
                for metric in models[m]
            }
            for a, b in paired:
                if a not in models or b not in models:
                    continue
                for metric in models[a]:
                    # per fold, the difference is taken within each fold, then averaged
                    table[(f"{a}-{b}", metric)] = (
                        _fold_mean(point[pooling], a, metric, b),
                        [_fold_mean(bt[pooling], a, metric, b) for bt in boots],
                    )
            groups = (
                [np.arange(len(months))]
                if pooling == "pooled"
                else [np.flatnonzero(folds == f) for f in np.unique(folds)]
            )
            for model in models:  # calibration slope and intercept: point estimates only (no bootstrap)
                for h in horizons_months:
                    for name, value in calibration_estimates(months, evt, curves[model], groups, cfg, h).items():
                        table[(model, f"{name}_{h:g}m")] = (value, [])
            for (model, metric), (est, samples) in table.items():
                s = np.asarray(samples, dtype=np.float64)
                s = s[np.isfinite(s)]
                rows.append(
                    {
                        "model": model,
                        "landmark": k,
                        "metric": metric,
                        "pooling": pooling,
                        "estimate": est,
                        "mean": float(s.mean()) if len(s) else np.nan,
                        "ci_low": float(np.quantile(s, alpha)) if len(s) else np.nan,
                        "ci_high": float(np.quantile(s, 1 - alpha)) if len(s) else np.nan,
                        "n_patients": len(months),
                        "n_events": int(evt.sum()),
                    }
                )
    return pd.DataFrame(rows)


RELIABILITY_LANDMARK, RELIABILITY_HORIZON = 2, 12.0


def evaluate_report(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    folds: int = 5,
    seed: int = 0,
    *,
    n_bootstrap: int = 200,
    progress: Callable[[str], None] | None = None,
    combined: bool = True,
) -> dict:
    """What `model evaluate` shows: the metric rows of :func:`evaluate_models` (every kind side by side, with the
    calibration slope and intercept), the reliability table of every model (deciles of risk at 12 months from
    landmark 2, or the first landmark scored), and per landmark the candidate auto picked in each fold."""
    preds = cross_validated_predictions(visits, events, cfg, folds, seed, progress=progress, combined=combined)
    table = score_predictions(preds, cfg, (12.0, 24.0), n_bootstrap, seed)
    k = RELIABILITY_LANDMARK if RELIABILITY_LANDMARK in preds else min(preds)
    return {
        "metrics": table,
        "reliability": {
            "landmark": k,
            "horizon_months": RELIABILITY_HORIZON,
            "models": {m: reliability(preds, cfg, m, k, RELIABILITY_HORIZON) for m in preds[k].curves},
        },
        "auto_picks": {str(lm): p.auto_picks for lm, p in preds.items() if p.auto_picks},
    }

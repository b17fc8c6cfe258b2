"""Feature selection for the risk model: correlation clustering, then mRMR with a survival relevance score.

Relevance of a feature = the larger absolute Spearman correlation of its value (or its change since the previous
visit) with the martingale residual of the null (Nelson-Aalen) model of the time remaining from each visit.
Redundancy = mean absolute Spearman correlation with the features already chosen.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MIN_OBSERVED_FRACTION = 0.05  # features seen in fewer visits than this are never selected


def _rank_columns(values: np.ndarray) -> np.ndarray:
    """Column-wise average ranks with NaNs replaced by the column's mean rank (0 after centring)."""
    from scipy.stats import rankdata

    out = np.zeros_like(values, dtype=np.float64)
    for j in range(values.shape[1]):
        col = values[:, j]
        ok = np.isfinite(col)
        if ok.sum() > 1:
            r = rankdata(col[ok])
            out[ok, j] = r - r.mean()
    return out


def _abs_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|Pearson correlation| between columns of centred a (n, p) and centred b (n, q) -> (p, q)."""
    na = np.sqrt((a**2).sum(axis=0))
    nb = np.sqrt((b**2).sum(axis=0))
    denom = np.outer(na, nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.abs(a.T @ b) / denom
    return np.nan_to_num(c)


def null_martingale_residuals(remaining: np.ndarray, event: np.ndarray) -> np.ndarray:
    """delta_i - H_NA(t_i): martingale residuals of the covariate-free model (Nelson-Aalen cumulative hazard)."""
    order = np.argsort(remaining, kind="stable")
    t, d = remaining[order], event[order].astype(np.float64)
    uniq, first = np.unique(t, return_index=True)
    at_risk = len(t) - first
    deaths = np.add.reduceat(d, first)
    cum = np.cumsum(deaths / at_risk)
    h = cum[np.searchsorted(uniq, remaining)]
    return event - h


def survival_relevance(values: np.ndarray, deltas: np.ndarray, remaining: np.ndarray, event: np.ndarray) -> np.ndarray:
    """Per-feature relevance (0..1) of visit values and their changes to the time remaining from the visit."""
    resid = null_martingale_residuals(remaining, event)
    r_res = _rank_columns(resid[:, None])
    rel_v = _abs_corr(_rank_columns(values), r_res)[:, 0]
    rel_d = _abs_corr(_rank_columns(deltas), r_res)[:, 0]
    return np.maximum(rel_v, rel_d)


def select_features(
    visits: pd.DataFrame,
    remaining: np.ndarray,
    event: np.ndarray,
    features: list[str],
    patient_col: str,
    max_features: int | None,
    corr_threshold: float,
) -> tuple[list[str], dict[str, float]]:
    """Choose up to ``max_features`` features from a prepared visit table.

    Parameters
    ----------
    visits : prepared training visits (sorted by patient and time), one row per visit.
    remaining, event : per visit row, days from the visit to the event/censoring, and the event flag.
    features : candidate columns.
    max_features : how many to keep (None keeps all).
    corr_threshold : features whose |Spearman| with a more relevant feature exceeds this are dropped first.

    Returns
    -------
    (chosen features in selection order, relevance of every candidate)
    """
    values = visits[features].to_numpy(dtype=np.float64)
    prev = visits.groupby(patient_col)[features].shift(1).to_numpy(dtype=np.float64)
    deltas = values - prev
    relevance = survival_relevance(values, deltas, remaining, event)
    observed = np.isfinite(values).mean(axis=0) >= MIN_OBSERVED_FRACTION
    rel_map = {f: float(r) for f, r in zip(features, relevance, strict=True)}
    if max_features is None or max_features >= len(features):
        return [f for f in features], rel_map
    ranks = _rank_columns(values)
    corr = _abs_corr(ranks, ranks)
    # correlation clustering: walk features by relevance; a feature joins the cluster of a kept one if too close
    order = [j for j in np.argsort(-relevance, kind="stable") if observed[j]]
    representatives: list[int] = []
    for j in order:
        if all(corr[j, k] <= corr_threshold for k in representatives):
            representatives.append(j)
    # mRMR (difference form) among the cluster representatives
    chosen: list[int] = []
    pool = list(representatives)
    while pool and len(chosen) < max_features:
        if chosen:
            scores = [relevance[j] - corr[j, chosen].mean() for j in pool]
        else:
            scores = [relevance[j] for j in pool]
        best = pool[int(np.argmax(scores))]
        chosen.append(best)
        pool.remove(best)
    return [features[j] for j in chosen], rel_map

"""The trained risk model: training entry point and predictions as survival curves / risks per visit."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tracker.errors import MetatrackError
from tracker.survival.config import SurvivalModelConfig
from tracker.survival.data import (
    Standardizer,
    build_sequences,
    build_targets,
    data_fingerprint,
    drop_visits_after_outcome,
    infer_feature_columns,
    prepare_events,
    prepare_visits,
)
from tracker.survival.selection import select_features

if TYPE_CHECKING:
    from tracker.survival.rnn import EnsembleNet

DEFAULT_HORIZONS_MONTHS = (6.0, 12.0, 24.0)
MIN_TRAIN_PATIENTS = 10
FORMAT_VERSION = 2  # 2: the network is an ensemble (weights under members.<i>.)
MEMBER_SEED_STRIDE = 7919  # member m of an ensemble trained with seed s uses seed s + m * stride


def survival_from_logits(logits: np.ndarray) -> np.ndarray:
    """S at the end of each bin: cumulative product of (1 - sigmoid(logit)), computed in float64."""
    return np.exp(np.cumsum(-np.logaddexp(0.0, logits.astype(np.float64)), axis=-1))


def interpolate_survival(surv: np.ndarray, grid: Sequence[float], months: float) -> np.ndarray:
    """S at ``months`` from curves on ``grid`` (bin ends), log-linear within a bin (constant hazard), S(0) = 1."""
    g = np.r_[0.0, np.asarray(grid, dtype=np.float64)]
    if months < 0 or months > g[-1] + 1e-9:
        raise MetatrackError(f"horizon {months} months is outside the model's range 0..{g[-1]:g} months")
    log_s = np.log(np.clip(np.concatenate([np.ones((surv.shape[0], 1)), surv], axis=1), 1e-300, None))
    j = int(np.clip(np.searchsorted(g, months, side="right") - 1, 0, len(g) - 2))
    frac = (months - g[j]) / (g[j + 1] - g[j])
    return np.exp(log_s[:, j] + frac * (log_s[:, j + 1] - log_s[:, j]))


def curve_column(months: float) -> str:
    """Name of the survival-curve column for a grid point, e.g. ``s_12m``."""
    return f"s_{months:g}m"


@dataclass
class RiskModel:
    """A trained GRU discrete-time survival model with everything needed to apply it to new visit tables."""

    cfg: SurvivalModelConfig
    standardizer: Standardizer
    net: EnsembleNet
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        """The (selected) feature columns the model reads, in input order."""
        return list(self.standardizer.features)

    @property
    def grid_months(self) -> list[float]:
        """Time points (months after a visit) of the survival curves."""
        return self.cfg.grid_months

    def survival_all_visits(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """Survival curve from every visit on.

        Returns
        -------
        (index table with patient_id, visit_index (1-based), time_days; array (visits, bins) of S at grid_months)
        """
        from tracker.survival.rnn import deterministic_torch, predict_logits

        prepared = prepare_visits(visits, self.cfg)
        missing = [c for c in self.features if c not in prepared.columns]
        if missing:
            raise MetatrackError(f"visits: the model needs feature columns {missing[:10]} that are missing")
        seq = build_sequences(prepared, self.standardizer, self.cfg)
        with deterministic_torch(int(self.metadata.get("seed", 0)), self.cfg.num_threads):
            logits = predict_logits(self.net, seq.x)
        valid = np.arange(seq.x.shape[1])[None, :] < seq.lengths[:, None]
        surv = survival_from_logits(logits)[valid]
        pat, step = np.nonzero(valid)
        index = pd.DataFrame(
            {
                self.cfg.patient_col: seq.patient_ids[pat],
                "visit_index": step + 1,
                self.cfg.time_col: seq.times_days[pat, step],
            }
        )
        return index, surv

    def predict(self, visits: pd.DataFrame) -> pd.DataFrame:
        """One row per patient as of its last visit: patient_id, as_of_time_days, s_<m>m survival columns."""
        index, surv = self.survival_all_visits(visits)
        last = index.groupby(self.cfg.patient_col, sort=False)["visit_index"].transform("max") == index["visit_index"]
        out = index.loc[last, [self.cfg.patient_col, self.cfg.time_col]].rename(
            columns={self.cfg.time_col: "as_of_time_days"}
        )
        curves = pd.DataFrame(surv[last.to_numpy()], columns=[curve_column(m) for m in self.grid_months])
        return pd.concat([out.reset_index(drop=True), curves], axis=1)

    def risk_at(self, visits: pd.DataFrame, horizons_months: Sequence[float] = DEFAULT_HORIZONS_MONTHS) -> pd.DataFrame:
        """Risk 1 - S(h) as of each patient's last visit: patient_id, as_of_time_days, horizon_months, risk."""
        table = self.predict_all_visits(visits, horizons_months)
        last = table.groupby(self.cfg.patient_col, sort=False)["visit_index"].transform("max") == table["visit_index"]
        out = table.loc[last].rename(columns={self.cfg.time_col: "as_of_time_days"})
        return out[[self.cfg.patient_col, "as_of_time_days", "horizon_months", "risk"]].reset_index(drop=True)

    def predict_all_visits(
        self, visits: pd.DataFrame, horizons_months: Sequence[float] = DEFAULT_HORIZONS_MONTHS
    ) -> pd.DataFrame:
        """Risk after every visit: patient_id, visit_index (1-based), time_days, horizon_months, risk."""
        index, surv = self.survival_all_visits(visits)
        parts = []
        for h in horizons_months:
            part = index.copy()
            part["horizon_months"] = float(h)
            part["risk"] = 1.0 - interpolate_survival(surv, self.grid_months, float(h))
            parts.append(part)
        out = pd.concat(parts, ignore_index=True)
        return out.sort_values([self.cfg.patient_col, "visit_index", "horizon_months"], kind="stable").reset_index(
            drop=True
        )

    def to_bytes(self) -> bytes:
        """Self-contained serialisation (weights, config, features, standardisation, metadata)."""
        from tracker.survival.model_io import model_to_bytes

        return model_to_bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> RiskModel:
        """Inverse of :meth:`to_bytes`."""
        from tracker.survival.model_io import model_from_bytes

        return model_from_bytes(data)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the model's numbers."""
    import torch

    try:
        lifelines_version = importlib.metadata.version("lifelines")
    except importlib.metadata.PackageNotFoundError:
        lifelines_version = "absent"
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "torch": torch.__version__,
        "lifelines": lifelines_version,
        "format": str(FORMAT_VERSION),
    }


def prepare_training_tables(
    visits: pd.DataFrame, events: pd.DataFrame, cfg: SurvivalModelConfig
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Checked visits (only those before each patient's outcome), checked events, candidate feature columns."""
    prepared = prepare_visits(visits, cfg)
    ev = prepare_events(events, cfg)
    candidates = infer_feature_columns(prepared, cfg)
    kept = drop_visits_after_outcome(prepared, ev, cfg)
    ev = ev[ev[cfg.patient_col].isin(kept[cfg.patient_col])].reset_index(drop=True)
    return kept, ev, candidates


def train_model(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    *,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> RiskModel:
    """Select features, standardise, and train the GRU survival model on every visit prefix.

    ``cfg.n_ensemble`` networks are trained, each with its own seed and validation split of the training patients
    (early stopping), and their survival curves averaged.

    Parameters
    ----------
    visits : long table (patient_id, time_days or date, feature columns...), one row per scan.
    events : (patient_id, time_days, event) per patient, time from the same baseline as the visits.
    cfg : hyperparameters.
    seed : fixes the internal validation splits, initialisations and minibatch orders.
    progress : called as progress(epoch, n_ensemble * max_epochs, validation_loss) after each epoch, epochs counted
        over all ensemble members in turn.
    """
    from tracker.survival.rnn import EnsembleNet, fit_network

    start = time.perf_counter()
    kept, ev, candidates = prepare_training_tables(visits, events, cfg)
    n_pat = kept[cfg.patient_col].nunique()
    if n_pat < MIN_TRAIN_PATIENTS:
        raise MetatrackError(
            f"training data: {n_pat} patients with a visit before their event/censoring time; "
            f"need at least {MIN_TRAIN_PATIENTS}"
        )
    if int(ev[cfg.event_col].sum()) == 0:
        raise MetatrackError("events: no patient has event = 1; a risk model needs at least one event")
    end = kept[cfg.patient_col].map(ev.set_index(cfg.patient_col)[cfg.time_col]).to_numpy()
    flag = kept[cfg.patient_col].map(ev.set_index(cfg.patient_col)[cfg.event_col]).to_numpy()
    remaining = end - kept[cfg.time_col].to_numpy()
    if candidates:
        chosen, relevance = select_features(
            kept, remaining, flag, candidates, cfg.patient_col, cfg.max_features, cfg.corr_threshold
        )
    else:
        chosen, relevance = [], {}
    stats = Standardizer.fit(kept, chosen)
    seq = build_sequences(kept, stats, cfg)
    tgt = build_targets(seq, ev, cfg)
    results = []
    for m in range(cfg.n_ensemble):
        member_seed = seed + m * MEMBER_SEED_STRIDE
        order = np.random.default_rng(member_seed).permutation(len(seq.patient_ids))
        n_val = round(cfg.val_fraction * len(order))
        val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
        member_progress = None
        if progress is not None:
            total, offset = cfg.n_ensemble * cfg.max_epochs, m * cfg.max_epochs
            member_progress = lambda e, _n, loss, offset=offset, total=total: progress(offset + e, total, loss)  # noqa: E731
        res = fit_network(
            seq.x, tgt.bin_index, tgt.event, tgt.valid, train_rows, val_rows, cfg, member_seed, member_progress
        )
        results.append(res)
    metadata = {
        "features": chosen,
        "candidate_features": candidates,
        "relevance": relevance,
        "hyperparameters": cfg.to_dict(),
        "metrics": {
            "best_val_nll": float(np.mean([r.best_val_loss for r in results])),
            "epochs": [r.epochs for r in results],
            "best_epoch": [r.best_epoch for r in results],
            "train_seconds": time.perf_counter() - start,
            "n_patients": int(n_pat),
            "n_visits": len(kept),
            "n_events": int(ev[cfg.event_col].sum()),
        },
        "versions": library_versions(),
        "seed": seed,
        "num_threads": cfg.num_threads,
        "device": cfg.device,
        "data_fingerprint": data_fingerprint(visits, events),
    }
    return RiskModel(cfg, stats, EnsembleNet([r.net for r in results]).eval(), metadata)

"""The trained risk model: training entry point and predictions as survival curves / risks per visit."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import pandas as pd

from tracker.errors import MetatrackError
from tracker.survival.config import SurvivalModelConfig, library_versions
from tracker.survival.curves import curve_column as curve_column  # re-exported
from tracker.survival.curves import survival_at
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
from tracker.survival.protocol import DEFAULT_HORIZONS_MONTHS as DEFAULT_HORIZONS_MONTHS  # re-exported
from tracker.survival.protocol import VisitPredictions
from tracker.survival.selection import select_features

if TYPE_CHECKING:
    from tracker.survival.rnn import EnsembleNet

MIN_TRAIN_PATIENTS = 10
FORMAT_VERSION = 2  # 2: the network is an ensemble (weights under members.<i>.)
MEMBER_SEED_STRIDE = 7919  # member m of an ensemble trained with seed s uses seed s + m * stride


def survival_from_logits(logits: np.ndarray) -> np.ndarray:
    """S at the end of each bin: cumulative product of (1 - sigmoid(logit)), computed in float64."""
    return np.exp(np.cumsum(-np.logaddexp(0.0, logits.astype(np.float64)), axis=-1))


def interpolate_survival(surv: np.ndarray, grid: Sequence[float], months: float) -> np.ndarray:
    """S at ``months`` from curves on ``grid`` (bin ends), log-linear within a bin (constant hazard), S(0) = 1;
    a time outside the grid's range raises."""
    return survival_at(surv, grid, [months], pairing="outer", past_end="raise")[:, 0]


@dataclass
class RiskModel(VisitPredictions):
    """A trained GRU discrete-time survival model with everything needed to apply it to new visit tables.

    Model kind "rnn" of the :class:`~tracker.survival.protocol.SurvivalModel` protocol.
    """

    kind: ClassVar[str] = "rnn"
    cfg: SurvivalModelConfig
    standardizer: Standardizer
    net: EnsembleNet
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._default_hyperparameters()

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

    def survival_spread(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """(index, curves, spread): the ensemble's curves and the standard deviation of log(-log S) over its
        members (zero for a single network)."""
        from tracker.survival.intervals import member_spread
        from tracker.survival.rnn import RiskNet, deterministic_torch, predict_logits

        index, surv = self.survival_all_visits(visits)
        if len(self.net.members) < 2:
            return index, surv, np.zeros_like(surv)
        prepared = prepare_visits(visits, self.cfg)
        seq = build_sequences(prepared, self.standardizer, self.cfg)
        valid = np.arange(seq.x.shape[1])[None, :] < seq.lengths[:, None]
        with deterministic_torch(int(self.metadata.get("seed", 0)), self.cfg.num_threads):
            members = [survival_from_logits(predict_logits(cast(RiskNet, m), seq.x))[valid] for m in self.net.members]
        return index, surv, member_spread(np.stack(members))

    def to_bytes(self) -> bytes:
        """Self-contained serialisation (weights, config, features, standardisation, metadata)."""
        from tracker.survival.model_io import rnn_to_bytes

        return rnn_to_bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> RiskModel:
        """Inverse of :meth:`to_bytes` (any model file of kind "rnn"; another kind raises)."""
        from tracker.survival.kinds import model_from_bytes

        model = model_from_bytes(data)
        if not isinstance(model, cls):
            raise MetatrackError(f"risk model bytes: a {model.kind!r} model, not an {cls.kind!r} one")
        return model


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


@dataclass
class TrainingData:
    """Checked training tables with the chosen features and their standardisation (shared by the model kinds)."""

    kept: pd.DataFrame  # visits before each patient's outcome, 0-based visit_index
    events: pd.DataFrame
    candidates: list[str]
    chosen: list[str]
    relevance: dict[str, float]
    standardizer: Standardizer
    n_patients: int


def prepare_training(visits: pd.DataFrame, events: pd.DataFrame, cfg: SurvivalModelConfig) -> TrainingData:
    """Check the tables (enough patients, an event), select features (mRMR, ``cfg.max_features``) and fit their
    standardisation on the kept visits."""
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
    return TrainingData(kept, ev, candidates, chosen, relevance, Standardizer.fit(kept, chosen), int(n_pat))


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
    td = prepare_training(visits, events, cfg)
    kept, ev, stats = td.kept, td.events, td.standardizer
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
        "features": td.chosen,
        "candidate_features": td.candidates,
        "relevance": td.relevance,
        "hyperparameters": cfg.to_dict(),
        "metrics": {
            "best_val_nll": float(np.mean([r.best_val_loss for r in results])),
            "epochs": [r.epochs for r in results],
            "best_epoch": [r.best_epoch for r in results],
            "train_seconds": time.perf_counter() - start,
            "n_patients": td.n_patients,
            "n_visits": len(kept),
            "n_events": int(ev[cfg.event_col].sum()),
        },
        "versions": library_versions(FORMAT_VERSION, torch=True),
        "seed": seed,
        "num_threads": cfg.num_threads,
        "device": cfg.device,
        "data_fingerprint": data_fingerprint(visits, events),
    }
    return RiskModel(cfg, stats, EnsembleNet([r.net for r in results]).eval(), metadata)

"""Model kinds "blend" and "auto": the RNN and the landmark Cox combined, chosen by inner cross-validation.

Training runs one inner patient-grouped cross-validation (INNER_FOLDS folds) of both kinds on the training data;
every held-out visit is scored from that visit (each visit a landmark), with follow-up truncated at the horizon.
On those out-of-fold curves:

- blend: S = w S_rnn + (1 - w) S_cox (a mixture of the two curves), w on a grid of BLEND_WEIGHTS chosen by the
  lowest integrated Brier score (IBS, mean over landmarks 1..MAX_LANDMARK) of the recalibrated mixture;
- auto: the candidates landmark-cox (w = 0), rnn (w = 1) and blend (w chosen as above), by the same IBS; the
  simplest candidate (in that order) within AUTO_TOLERANCE_IBS of the best is taken, so that small data sets keep
  the Cox unless the RNN is clearly better; every candidate's inner-CV IBS and time-dependent C are recorded in
  ``metadata["metrics"]["inner_cv"]`` with the reason.

Then the kind's out-of-fold curves fit a recalibration per horizon (:mod:`tracker.survival.calibration`), stored
in the model and applied to its predictions and intervals; the final members are trained on all the data.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tracker.errors import MetatrackError
from tracker.survival.calibration import CALIBRATION_HORIZONS, Recalibration, calibration_at, fit_recalibration
from tracker.survival.config import DAYS_PER_MONTH, SurvivalModelConfig, library_versions
from tracker.survival.data import Standardizer, data_fingerprint
from tracker.survival.model_io import check_version, standardizer_from_json, standardizer_to_json, write_model_zip
from tracker.survival.protocol import VisitPredictions

if TYPE_CHECKING:
    from tracker.survival.landmark_cox import LandmarkCoxModel
    from tracker.survival.model import RiskModel

FORMAT_VERSION = 1
INNER_FOLDS = 3
INNER_SEED_OFFSET = 1009  # inner fold models use seed + offset + fold, never the final model's seed
BLEND_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
AUTO_TOLERANCE_IBS = 0.005
CANDIDATES = ("landmark-cox", "rnn", "blend")  # simplest first
MAX_LANDMARK = 4
MIN_LANDMARK_PATIENTS = 20  # a landmark with fewer held-out patients is not scored
MEMBERS_DIR = "members/"
IBS_TIME_QUANTILE = 0.9


@dataclass
class OutOfFold:
    """Inner cross-validation curves per held-out visit (follow-up truncated at the horizon)."""

    months: np.ndarray
    events: np.ndarray
    landmark: np.ndarray  # 1-based visit index
    rnn: np.ndarray
    cox: np.ndarray

    def curves(self, weight: float) -> np.ndarray:
        return weight * self.rnn + (1.0 - weight) * self.cox


def inner_predictions(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    seed: int,
    folds: int = INNER_FOLDS,
    progress: Callable[[int, int, float], None] | None = None,
) -> OutOfFold:
    """Out-of-fold curves of the RNN and the landmark Cox from every held-out visit (folds split patients)."""
    from tracker.survival.landmark_cox import train_landmark_cox
    from tracker.survival.model import prepare_training_tables, train_model

    kept, ev, _ = prepare_training_tables(visits, events, cfg)
    pid = cfg.patient_col
    patients = kept[pid].drop_duplicates().to_numpy()
    if len(patients) < 2 * folds * 5:
        raise MetatrackError(
            f"training data: {len(patients)} patients; blend/auto need at least {2 * folds * 5} for their "
            f"{folds}-fold inner cross-validation (train --kind rnn or landmark-cox instead)"
        )
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = dict(zip(patients[order], np.arange(len(patients)) % folds, strict=True))
    vf, ef = kept[pid].map(fold_of).to_numpy(), ev[pid].map(fold_of).to_numpy()
    end = ev.set_index(pid)
    parts: list[tuple[np.ndarray, ...]] = []
    for f in range(folds):
        tr_v, tr_e, te_v = kept[vf != f], ev[ef != f], kept[vf == f]
        fold_seed = seed + INNER_SEED_OFFSET + f
        rnn = train_model(tr_v, tr_e, cfg, seed=fold_seed)
        cox = train_landmark_cox(tr_v, tr_e, cfg, seed=fold_seed)
        index, s_rnn = rnn.survival_all_visits(te_v)
        index_c, s_cox = cox.survival_all_visits(te_v)
        if not index[[pid, "visit_index"]].equals(index_c[[pid, "visit_index"]]):
            raise MetatrackError("blend: the RNN and the landmark Cox scored different visits")
        ids = index[pid].to_numpy()
        remaining = (end.loc[ids, cfg.time_col].to_numpy(dtype=np.float64) - index[cfg.time_col].to_numpy()) / (
            DAYS_PER_MONTH
        )
        flag = end.loc[ids, cfg.event_col].to_numpy(dtype=int)
        parts.append((remaining, flag, index["visit_index"].to_numpy(), s_rnn, s_cox))
        if progress is not None:
            progress(f + 1, folds, float("nan"))
    months, flag, landmark, s_rnn, s_cox = (np.concatenate(p) for p in zip(*parts, strict=True))
    horizon = cfg.horizon_months
    flag = np.where(months > horizon, 0, flag)
    return OutOfFold(np.minimum(months, horizon), flag, landmark, s_rnn, s_cox)


def score_out_of_fold(oof: OutOfFold, surv: np.ndarray, cfg: SurvivalModelConfig) -> dict[str, float]:
    """Mean over landmarks 1..MAX_LANDMARK (those with enough held-out patients and events) of the IBS and of
    Antolini's time-dependent C."""
    from tracker.survival.metrics import concordance_td, integrated_brier_score

    grid = np.asarray(cfg.grid_months)
    ibs, c_td = [], []
    for k in range(1, MAX_LANDMARK + 1):
        rows = oof.landmark == k
        if rows.sum() < MIN_LANDMARK_PATIENTS or oof.events[rows].sum() < 2:
            continue
        m, e, s = oof.months[rows], oof.events[rows], surv[rows]
        end = min(float(np.quantile(m, IBS_TIME_QUANTILE)), cfg.horizon_months)
        eval_times = grid[grid <= end]
        if len(eval_times) > 1:
            ibs.append(integrated_brier_score(m, e, s, grid, eval_times))
        c_td.append(concordance_td(m, e, s, grid))
    if not ibs:
        raise MetatrackError("blend/auto: no landmark has enough held-out patients and events to compare the kinds")
    return {"ibs": float(np.mean(ibs)), "c_td": float(np.nanmean(c_td)), "landmarks_scored": len(ibs)}


@dataclass
class Choice:
    """What the inner cross-validation decided: the blend weight, auto's pick, every candidate's scores, and the
    recalibration fitted on each candidate's out-of-fold curves."""

    blend_weight: float
    auto_kind: str
    scores: dict[str, dict[str, float]]
    weight_scores: dict[str, float]
    calibrations: dict[str, Recalibration]
    calibration_reports: dict[str, list[dict[str, Any]]]
    reason: str

    def weight(self, kind: str) -> float:
        """The RNN's weight in the kind's mixture ("blend", "auto" or a candidate)."""
        pick = self.auto_kind if kind == "auto" else kind
        return {"landmark-cox": 0.0, "rnn": 1.0}.get(pick, self.blend_weight)

    def candidate(self, kind: str) -> str:
        return self.auto_kind if kind == "auto" else kind


def choose(oof: OutOfFold, cfg: SurvivalModelConfig) -> Choice:
    """The blend weight and auto's candidate from the out-of-fold curves, with their recalibrations.

    Every candidate is scored after its own recalibration (part of what the kind predicts), so that a model which
    ranks well but is off in scale is not passed over for it.
    """
    grid = cfg.grid_months

    def recalibrated(w: float) -> tuple[Recalibration, np.ndarray]:
        curves = oof.curves(w)
        recal = fit_recalibration(oof.months, oof.events, curves, grid)
        return recal, recal.apply(curves, grid)

    weight_scores = {f"{w:g}": score_out_of_fold(oof, recalibrated(w)[1], cfg)["ibs"] for w in BLEND_WEIGHTS}
    blend_w = float(min(BLEND_WEIGHTS, key=lambda w: weight_scores[f"{w:g}"]))
    weights = {"landmark-cox": 0.0, "rnn": 1.0, "blend": blend_w}
    scores = {c: score_out_of_fold(oof, recalibrated(w)[1], cfg) for c, w in weights.items()}
    best = min(s["ibs"] for s in scores.values())
    pick = next(c for c in CANDIDATES if scores[c]["ibs"] <= best + AUTO_TOLERANCE_IBS)
    reason = (
        f"inner {INNER_FOLDS}-fold CV IBS: "
        + ", ".join(f"{c} {scores[c]['ibs']:.4f} (C {scores[c]['c_td']:.3f})" for c in CANDIDATES)
        + f"; blend weight of the RNN {blend_w:g}; {pick} is the simplest within {AUTO_TOLERANCE_IBS} IBS of the best"
    )
    calibrations, reports = {}, {}
    for c, w in weights.items():
        curves = oof.curves(w)
        calibrations[c], fixed = recalibrated(w)
        reports[c] = [
            {"when": when, **calibration_at(oof.months, oof.events, 1.0 - _at(s, grid, h), h)}
            for h in CALIBRATION_HORIZONS
            if h <= grid[-1]
            for when, s in (("before", curves), ("after", fixed))
        ]
    return Choice(blend_w, pick, scores, weight_scores, calibrations, reports, reason)


def _at(surv: np.ndarray, grid: list[float], h: float) -> np.ndarray:
    from tracker.survival.curves import survival_at

    return survival_at(surv, grid, [h], pairing="outer", past_end="raise")[:, 0]


@dataclass
class CombinedModel(VisitPredictions):
    """Kinds "blend" and "auto": S = weight * S_rnn + (1 - weight) * S_cox, then recalibrated. A member with
    weight 0 is not kept (an auto model that picked the Cox needs no torch)."""

    kind: str
    cfg: SurvivalModelConfig
    standardizer: Standardizer
    rnn: RiskModel | None
    cox: LandmarkCoxModel | None
    weight: float
    calibration: Recalibration | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("blend", "auto"):
            raise MetatrackError(f"combined model: kind {self.kind!r} is not blend or auto")
        if (self.weight > 0 and self.rnn is None) or (self.weight < 1 and self.cox is None):
            raise MetatrackError(f"combined model: weight {self.weight} needs a member that is missing")
        self._default_hyperparameters()

    def _members(self) -> list[tuple[float, VisitPredictions]]:
        out: list[tuple[float, VisitPredictions]] = []
        if self.weight > 0 and self.rnn is not None:
            out.append((self.weight, self.rnn))
        if self.weight < 1 and self.cox is not None:
            out.append((1.0 - self.weight, self.cox))
        return out

    def interval_half_width(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """(index, mixed curves before recalibration, weighted sum of the members' 90 % half-widths)."""
        index: pd.DataFrame | None = None
        surv: np.ndarray | None = None
        hw: np.ndarray | None = None
        for w, member in self._members():
            idx, s, h = member.interval_half_width(visits)
            if index is None:
                index, surv, hw = idx, w * s, w * h
            else:
                if not index["visit_index"].equals(idx["visit_index"]):
                    raise MetatrackError("combined model: the members scored different visits")
                surv, hw = surv + w * s, hw + w * h  # type: ignore[operator]
        assert index is not None and surv is not None and hw is not None
        return index, surv, hw

    def _calibrated(self, surv: np.ndarray) -> np.ndarray:
        return surv if self.calibration is None else self.calibration.apply(surv, self.grid_months)

    def survival_all_visits(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """The recalibrated mixture of the members' curves from every visit."""
        index: pd.DataFrame | None = None
        surv: np.ndarray | None = None
        for w, member in self._members():
            idx, s = member.survival_all_visits(visits)
            index, surv = (idx, w * s) if index is None else (index, surv + w * s)  # type: ignore[operator]
        assert index is not None and surv is not None
        return index, self._calibrated(surv)

    def survival_interval_all_visits(
        self, visits: pd.DataFrame
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
        """The mixture's band (members' half-widths combined), recalibrated with the curves (a monotone map)."""
        from tracker.survival.intervals import band

        index, surv, hw = self.interval_half_width(visits)
        lower, upper = band(surv, hw)
        return index, self._calibrated(surv), self._calibrated(lower), self._calibrated(upper)

    def to_bytes(self) -> bytes:
        """The zip: ``model.json`` (weight, recalibration, metadata) and each kept member's own model file."""
        members = [(f"{MEMBERS_DIR}{m.kind}.zip", m.to_bytes()) for m in (self.rnn, self.cox) if m is not None]
        header = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "config": self.cfg.to_dict(),
            **standardizer_to_json(self.standardizer),
            "weight": self.weight,
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "members": [name for name, _ in members],
            "metadata": self.metadata,
        }
        return write_model_zip(header, members)


def combined_from_zip(header: dict[str, Any], zf: zipfile.ZipFile) -> CombinedModel:
    """Rebuild a blend/auto model: its members are model files inside its zip."""
    from tracker.survival.kinds import model_from_bytes
    from tracker.survival.landmark_cox import LandmarkCoxModel
    from tracker.survival.model import RiskModel

    check_version(header, (FORMAT_VERSION,))
    members = [model_from_bytes(zf.read(name)) for name in header["members"]]
    rnn = next((m for m in members if isinstance(m, RiskModel)), None)
    cox = next((m for m in members if isinstance(m, LandmarkCoxModel)), None)
    cal = header.get("calibration")
    return CombinedModel(
        str(header["kind"]),
        SurvivalModelConfig.from_dict(header["config"]),
        standardizer_from_json(header),
        rnn,
        cox,
        float(header["weight"]),
        None if cal is None else Recalibration.from_json(cal),
        header["metadata"],
    )


@dataclass
class CombinedFit:
    """The inner-CV choice and the members trained on all the data: any of rnn, landmark-cox, blend, auto."""

    choice: Choice
    rnn: RiskModel | None
    cox: LandmarkCoxModel
    visits_fingerprint: str
    seconds: float
    seed: int

    def model(self, kind: str) -> CombinedModel:
        """The "blend" or "auto" model of this fit."""
        c = self.choice
        w = c.weight(kind)
        pick = c.candidate(kind)
        metrics = {
            **{k: v for k, v in self.cox.metadata["metrics"].items() if k.startswith("n_")},
            "train_seconds": self.seconds,
            "inner_cv": {
                "folds": INNER_FOLDS,
                "candidates": c.scores,
                "blend_weights_ibs": c.weight_scores,
                "chosen": pick,
                "reason": c.reason,
            },
            "weight_rnn": w,
            "calibration": c.calibration_reports[pick],
        }
        return CombinedModel(
            kind,
            self.cox.cfg,
            self.cox.standardizer,
            self.rnn if w > 0 else None,
            self.cox if w < 1 else None,
            w,
            c.calibrations[pick],
            {
                "features": self.cox.metadata["features"],
                "candidate_features": self.cox.metadata["candidate_features"],
                "relevance": self.cox.metadata["relevance"],
                "hyperparameters": {**self.cox.cfg.to_dict(), "inner_folds": INNER_FOLDS},
                "metrics": metrics,
                "versions": library_versions(FORMAT_VERSION, torch=w > 0),
                "seed": self.seed,
                "data_fingerprint": self.visits_fingerprint,
            },
        )


def fit_combined(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    *,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    need_rnn: bool = True,
) -> CombinedFit:
    """Inner CV, choice, and the final members on all the data (the RNN only if ``need_rnn`` or auto picks one
    with it)."""
    from tracker.survival.landmark_cox import train_landmark_cox
    from tracker.survival.model import train_model

    start = time.perf_counter()
    oof = inner_predictions(visits, events, cfg, seed, progress=progress)
    choice = choose(oof, cfg)
    cox = train_landmark_cox(visits, events, cfg, seed=seed)
    rnn = train_model(visits, events, cfg, seed=seed) if need_rnn or choice.weight("auto") > 0 else None
    return CombinedFit(choice, rnn, cox, data_fingerprint(visits, events), time.perf_counter() - start, seed)


def train_blend(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    *,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> CombinedModel:
    """Kind "blend": RNN and landmark Cox curves mixed with the weight chosen by inner CV, recalibrated."""
    return fit_combined(visits, events, cfg, seed=seed, progress=progress).model("blend")


def train_auto(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    *,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> CombinedModel:
    """Kind "auto": landmark-cox, rnn or blend, whichever inner CV prefers (see the module), recalibrated."""
    return fit_combined(visits, events, cfg, seed=seed, progress=progress, need_rnn=False).model("auto")

"""Model kinds "blend" and "auto": the RNN and the landmark Cox combined, chosen per landmark by inner cross-validation.

Training runs one inner patient-grouped cross-validation (INNER_FOLDS folds) of both kinds on the training data;
every held-out visit is scored from that visit (each visit a landmark), with follow-up truncated at the horizon.
A model mixes the two curves, S = w_k S_rnn + (1 - w_k) S_cox, with the RNN's weight w_k of the visit's landmark k
(visit index 1..MAX_LANDMARK; later visits use w of MAX_LANDMARK). On the out-of-fold curves, every weight of
BLEND_WEIGHTS is scored per landmark (integrated Brier score, IBS, of the recalibrated mixture, and Antolini's
time-dependent C, each after a recalibration on that landmark) and the weights are chosen:

- **criterion** (:func:`best_of`): the options whose C is within max(C_TOLERANCE, one bootstrap standard error
  of the paired difference) of the best C are tied on C (the "one standard error" rule of model selection); among
  them the lowest IBS wins. The bars of issue 18 are on C, so C comes first; but C differences within their noise
  (about 70-250 held-out patients per landmark) do not pick, and between near-ties the IBS, which also rewards the
  scale of the risks and is a smoother function of the weight, decides. The earlier rule (IBS alone) chose the
  RNN where it ranked the first visits 0.01 C worse than the Cox;
- **shrinkage** (:func:`per_landmark`): one pooled choice on the scores averaged over landmarks; a landmark leaves
  it only where its own choice beats the pooled one's C at that landmark by LANDMARK_Z (2) bootstrap standard
  errors of the difference and at least LANDMARK_MARGIN_C, so that the noise of one landmark's few patients does
  not pick. Landmarks with too few held-out patients or events keep the pooled choice. Landmarks 1 and 2 (up to
  COX_HISTORY_LANDMARK) start from the landmark Cox instead (weight 0): there the Cox's design, the visit's
  values and their change since the previous visit, holds the whole history (at visit 2 the first visit's values
  are the difference of the two), so the RNN's one advantage, the memory of a longer trajectory, has nothing to
  add; measured, the RNN ranked the first visits up to 0.013 C below the Cox, and auto choosing it the second visits
  0.015 C below, gaps a 3-fold inner CV cannot see. It leaves the Cox there by the same rule;
- **blend**: w_k from the whole grid BLEND_WEIGHTS;
- **auto**: per landmark one of the candidates landmark-cox (w = 0), rnn (w = 1) and blend (its w_k); the pooled
  pick is the simplest candidate (in that order) that meets the criterion with AUTO_TOLERANCE_IBS of slack in IBS,
  so that small data sets keep the Cox unless the RNN is clearly better. An auto model that is the Cox at every
  landmark keeps no RNN (and needs no torch).

Every candidate's inner-CV IBS and C (pooled and per landmark), the weights and the reasons are recorded in
``metadata["metrics"]["inner_cv"]``. Then the chosen per-landmark mixture's out-of-fold curves fit a recalibration
per horizon (:mod:`tracker.survival.calibration`), stored in the model and applied to its predictions and
intervals; the final members are trained on all the data.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

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

FORMAT_VERSION = 2  # 2: one RNN weight per landmark ("weights"); 1: one weight for every visit ("weight")
INNER_FOLDS = 3
INNER_SEED_OFFSET = 1009  # inner fold models use seed + offset + fold, never the final model's seed
BLEND_WEIGHTS = tuple(float(w) for w in np.round(np.linspace(0.0, 1.0, 11), 2))
C_TOLERANCE = 0.005  # options within this C of the best are tied on C; the IBS decides between them
LANDMARK_MARGIN_C = 0.005  # a landmark leaves the pooled choice only where its own beats it by this C there
LANDMARK_Z = 2.0  # ... and by this many bootstrap standard errors of the C difference
AUTO_TOLERANCE_IBS = 0.005
CANDIDATES = ("landmark-cox", "rnn", "blend")  # simplest first
CANDIDATE_WEIGHTS = {"landmark-cox": 0.0, "rnn": 1.0}
MAX_LANDMARK = 4
COX_HISTORY_LANDMARK = 2  # up to this landmark the landmark Cox sees every earlier visit: the default there
MIN_LANDMARK_PATIENTS = 20  # a landmark with fewer held-out patients is not scored
MEMBERS_DIR = "members/"
IBS_TIME_QUANTILE = 0.9
C_DRAWS = 50  # bootstrap draws of each landmark's held-out patients: the noise of C differences
DRAW_SEED = 7919
Option = TypeVar("Option", bound=Hashable)


def row_weights(weights: Sequence[float], visit_index: np.ndarray) -> np.ndarray:
    """The RNN's weight of every row: that of its landmark (1-based visit index), the last one's after them."""
    w = np.asarray(weights, dtype=np.float64)
    k = np.clip(np.asarray(visit_index, dtype=np.int64), 1, len(w))
    return w[k - 1]


@dataclass
class OutOfFold:
    """Inner cross-validation curves per held-out visit (follow-up truncated at the horizon)."""

    months: np.ndarray
    events: np.ndarray
    landmark: np.ndarray  # 1-based visit index
    rnn: np.ndarray
    cox: np.ndarray

    def curves(self, weights: float | Sequence[float]) -> np.ndarray:
        """The mixture with one RNN weight for all rows or one per landmark."""
        seq = [float(weights)] if np.isscalar(weights) else list(weights)  # type: ignore[arg-type]
        w = row_weights(seq, self.landmark)[:, None]
        return w * self.rnn + (1.0 - w) * self.cox


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


@dataclass(frozen=True, eq=False)
class Scored:
    """One option's inner-CV scores (at one landmark, or averaged over landmarks): IBS, C, and C on the bootstrap
    draws of held-out patients (the same draws for every option, so differences are paired)."""

    ibs: float
    c_td: float
    c_draws: np.ndarray

    def to_json(self) -> dict[str, float]:
        return {"ibs": self.ibs, "c_td": self.c_td}


def landmark_scores(
    oof: OutOfFold, surv: np.ndarray, cfg: SurvivalModelConfig, *, recalibrate: bool = False
) -> dict[int, Scored]:
    """Per landmark 1..MAX_LANDMARK with enough held-out patients and events: the IBS (NaN where the follow-up
    spans one grid point) and Antolini's time-dependent C of the curves ``surv`` (rows as ``oof``), with C on
    C_DRAWS bootstrap draws of the landmark's patients; with ``recalibrate`` each landmark's curves are first
    recalibrated on that landmark's rows (so that a weight is judged at a landmark by what it is there, not by a
    recalibration that fits the other landmarks)."""
    from tracker.survival.metrics import concordance_td, integrated_brier_score

    grid = np.asarray(cfg.grid_months)
    out: dict[int, Scored] = {}
    for k in range(1, MAX_LANDMARK + 1):
        rows = oof.landmark == k
        if rows.sum() < MIN_LANDMARK_PATIENTS or oof.events[rows].sum() < 2:
            continue
        m, e, s = oof.months[rows], oof.events[rows], surv[rows]
        if recalibrate:
            s = fit_recalibration(m, e, s, cfg.grid_months).apply(s, cfg.grid_months)
        end = min(float(np.quantile(m, IBS_TIME_QUANTILE)), cfg.horizon_months)
        eval_times = grid[grid <= end]
        ibs = integrated_brier_score(m, e, s, grid, eval_times) if len(eval_times) > 1 else float("nan")
        draws = np.random.default_rng(DRAW_SEED + k).integers(0, len(m), (C_DRAWS, len(m)))
        c_draws = np.array([concordance_td(m[d], e[d], s[d], grid) for d in draws])
        out[k] = Scored(float(ibs), float(concordance_td(m, e, s, grid)), c_draws)
    return out


def mean_scores(by_landmark: Mapping[int, Scored]) -> Scored:
    """The mean over the scored landmarks of the IBS and of C (NaNs skipped), draw by draw."""
    if not by_landmark:
        raise MetatrackError("blend/auto: no landmark has enough held-out patients and events to compare the kinds")
    ibs = np.array([s.ibs for s in by_landmark.values()])
    c = np.array([s.c_td for s in by_landmark.values()])
    with np.errstate(all="ignore"):
        draws = np.nanmean(np.stack([s.c_draws for s in by_landmark.values()]), axis=0)
    return Scored(
        float(np.nanmean(ibs)) if np.isfinite(ibs).any() else float("nan"),
        float(np.nanmean(c)) if np.isfinite(c).any() else float("nan"),
        draws,
    )


def score_out_of_fold(oof: OutOfFold, surv: np.ndarray, cfg: SurvivalModelConfig) -> dict[str, float]:
    """Mean over landmarks 1..MAX_LANDMARK (those with enough held-out patients and events) of the IBS and C."""
    return mean_scores(landmark_scores(oof, surv, cfg)).to_json()


def c_noise(a: Scored, b: Scored) -> float:
    """The bootstrap standard error of C(a) - C(b) (paired draws); 0 where it cannot be estimated."""
    d = a.c_draws - b.c_draws
    d = d[np.isfinite(d)]
    return float(d.std(ddof=1)) if len(d) > 1 else 0.0


def best_of(scores: Mapping[Option, Scored], order: Sequence[Option], ibs_slack: float = 0.0) -> Option:
    """The criterion: the options whose C is within max(C_TOLERANCE, one bootstrap standard error of the
    difference) of the best C are tied on C; among them the first in ``order`` whose IBS is within ``ibs_slack``
    of their lowest IBS (NaN C counts as worst, NaN IBS as highest)."""
    c = {o: scores[o].c_td if np.isfinite(scores[o].c_td) else -np.inf for o in order}
    ibs = {o: scores[o].ibs if np.isfinite(scores[o].ibs) else np.inf for o in order}
    top = max(order, key=lambda o: c[o])
    tied = [o for o in order if c[o] >= c[top] - max(C_TOLERANCE, c_noise(scores[top], scores[o]))]
    low = min(ibs[o] for o in tied)
    return next(o for o in tied if ibs[o] <= low + ibs_slack)


def per_landmark(
    scores: Mapping[int, Mapping[Option, Scored]],
    pooled: Option,
    order: Sequence[Option],
    ibs_slack: float = 0.0,
    early: Option | None = None,
) -> list[tuple[Option, str]]:
    """Per landmark 1..MAX_LANDMARK, (choice, why): the landmark's own :func:`best_of` where its C beats the
    default's there by max(LANDMARK_MARGIN_C, LANDMARK_Z bootstrap standard errors of the difference), else the
    default: the pooled choice, or at landmarks up to COX_HISTORY_LANDMARK ``early`` where given (see
    :func:`choose`)."""
    out: list[tuple[Option, str]] = []
    for k in range(1, MAX_LANDMARK + 1):
        default, name = (
            (early, "early-visit default")
            if k <= COX_HISTORY_LANDMARK and early is not None
            else (pooled, "pooled choice")
        )
        if k not in scores:
            out.append((default, f"{name} (too few held-out patients or events to score this landmark)"))
            continue
        own = best_of(scores[k], order, ibs_slack)
        gain = scores[k][own].c_td - scores[k][default].c_td
        need = max(LANDMARK_MARGIN_C, LANDMARK_Z * c_noise(scores[k][own], scores[k][default]))
        if own != default and gain >= need:
            out.append((own, f"own choice: C {gain:+.3f} over the {name} here (needed {need:.3f})"))
        else:
            out.append((default, f"{name} (the landmark's own best gains C {gain:+.3f}, needed {need:.3f})"))
    return out


@dataclass
class Choice:
    """What the inner cross-validation decided: the blend's RNN weight per landmark, auto's candidate per landmark,
    the scores behind them, and the recalibration fitted on each kind's out-of-fold curves."""

    blend_weights: tuple[float, ...]
    auto_picks: tuple[str, ...]
    auto_pooled: str
    scores: dict[str, dict[str, float]]  # per candidate (landmark-cox, rnn, blend): mean over landmarks
    landmark_scores: dict[str, dict[int, dict[str, float]]]  # per candidate and landmark
    weight_scores: dict[str, dict[str, float]]  # per weight of BLEND_WEIGHTS: mean over landmarks
    kind_scores: dict[str, dict[str, Any]]  # blend and auto as chosen (per-landmark mixtures, recalibrated)
    calibrations: dict[str, Recalibration]  # blend and auto
    calibration_reports: dict[str, list[dict[str, Any]]]
    reasons: dict[str, list[str]]  # blend and auto: why, per landmark
    reason: str

    def weights(self, kind: str) -> tuple[float, ...]:
        """The RNN's weight per landmark in the kind's mixture ("blend", "auto" or a candidate)."""
        if kind == "auto":
            return tuple(
                self.blend_weights[i] if p == "blend" else CANDIDATE_WEIGHTS[p] for i, p in enumerate(self.auto_picks)
            )
        if kind == "blend":
            return self.blend_weights
        return (CANDIDATE_WEIGHTS[kind],) * MAX_LANDMARK

    def pick_label(self, landmark: int) -> str:
        """Auto's candidate at a landmark (later visits: the last), with the blend's weight."""
        i = min(landmark, len(self.auto_picks)) - 1
        p = self.auto_picks[i]
        return f"blend {self.blend_weights[i]:g}" if p == "blend" else p


def _simplest(pick: str, weight: float) -> str:
    """A blend whose weight is 0 or 1 is the landmark Cox or the RNN."""
    if pick == "blend" and weight in (0.0, 1.0):
        return "rnn" if weight == 1.0 else "landmark-cox"
    return pick


def choose(oof: OutOfFold, cfg: SurvivalModelConfig) -> Choice:
    """The blend's and auto's per-landmark weights from the out-of-fold curves (see the module), with their
    recalibrations.

    Every weight is scored at every landmark after a recalibration on that landmark's curves (part of what the kind
    predicts), so that a mixture which ranks well but is off in scale is not passed over for it.
    """
    grid = cfg.grid_months
    by_weight = {w: landmark_scores(oof, oof.curves(w), cfg, recalibrate=True) for w in BLEND_WEIGHTS}
    pooled_w = {w: mean_scores(s) for w, s in by_weight.items()}
    landmarks = sorted(by_weight[BLEND_WEIGHTS[0]])
    w_pool = best_of(pooled_w, BLEND_WEIGHTS)
    # up to COX_HISTORY_LANDMARK the Cox's design holds the whole history: the Cox is the default there
    blend = per_landmark(
        {k: {w: by_weight[w][k] for w in BLEND_WEIGHTS} for k in landmarks}, w_pool, BLEND_WEIGHTS, early=0.0
    )
    blend_weights = tuple(w for w, _ in blend)

    cand_by_landmark: dict[str, dict[int, Scored]] = {
        "landmark-cox": by_weight[0.0],
        "rnn": by_weight[1.0],
        "blend": {k: by_weight[blend_weights[k - 1]][k] for k in landmarks},
    }
    cand_pooled = {c: mean_scores(s) for c, s in cand_by_landmark.items()}
    auto_pool = best_of(cand_pooled, CANDIDATES, AUTO_TOLERANCE_IBS)
    auto = per_landmark(
        {k: {c: cand_by_landmark[c][k] for c in CANDIDATES} for k in landmarks},
        auto_pool,
        CANDIDATES,
        AUTO_TOLERANCE_IBS,
        early="landmark-cox",
    )
    auto_picks = tuple(_simplest(c, blend_weights[i]) for i, (c, _) in enumerate(auto))
    choice_weights = {
        "blend": blend_weights,
        "auto": tuple(blend_weights[i] if p == "blend" else CANDIDATE_WEIGHTS[p] for i, p in enumerate(auto_picks)),
    }
    kind_scores: dict[str, dict[str, Any]] = {}
    calibrations, reports = {}, {}
    for kind, weights in choice_weights.items():
        curves = oof.curves(weights)
        recal = fit_recalibration(oof.months, oof.events, curves, grid)
        fixed = recal.apply(curves, grid)
        calibrations[kind] = recal
        kind_scores[kind] = {**score_out_of_fold(oof, fixed, cfg), "weights_rnn": list(weights)}
        reports[kind] = [
            {"when": when, **calibration_at(oof.months, oof.events, 1.0 - _at(s, grid, h), h)}
            for h in CALIBRATION_HORIZONS
            if h <= grid[-1]
            for when, s in (("before", curves), ("after", fixed))
        ]
    reason = (
        f"inner {INNER_FOLDS}-fold CV, mean over landmarks of IBS (C): "
        + ", ".join(f"{c} {cand_pooled[c].ibs:.4f} ({cand_pooled[c].c_td:.3f})" for c in CANDIDATES)
        + f"; pooled pick {auto_pool} (the simplest within max({C_TOLERANCE}, 1 bootstrap SE) C of the best C and "
        + f"{AUTO_TOLERANCE_IBS} IBS of the lowest among those); per landmark: "
        + ", ".join(f"L{k} {c}" for k, c in enumerate(auto_picks, start=1))
        + f"; blend weights of the RNN {', '.join(f'{w:g}' for w in blend_weights)} (pooled {w_pool:g})"
    )
    return Choice(
        blend_weights,
        auto_picks,
        auto_pool,
        {c: s.to_json() for c, s in cand_pooled.items()},
        {c: {k: s.to_json() for k, s in by_k.items()} for c, by_k in cand_by_landmark.items()},
        {f"{w:g}": s.to_json() for w, s in pooled_w.items()},
        kind_scores,
        calibrations,
        reports,
        {"blend": [why for _, why in blend], "auto": [why for _, why in auto]},
        reason,
    )


def _at(surv: np.ndarray, grid: list[float], h: float) -> np.ndarray:
    from tracker.survival.curves import survival_at

    return survival_at(surv, grid, [h], pairing="outer", past_end="raise")[:, 0]


@dataclass
class CombinedModel(VisitPredictions):
    """Kinds "blend" and "auto": S = w_k S_rnn + (1 - w_k) S_cox with the RNN weight w_k of the visit's landmark
    (``weights[k - 1]``; later visits the last), then recalibrated. A member that no landmark uses is not kept (an
    auto model that is the Cox at every landmark needs no torch)."""

    kind: str
    cfg: SurvivalModelConfig
    standardizer: Standardizer
    rnn: RiskModel | None
    cox: LandmarkCoxModel | None
    weights: tuple[float, ...]
    calibration: Recalibration | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("blend", "auto"):
            raise MetatrackError(f"combined model: kind {self.kind!r} is not blend or auto")
        self.weights = tuple(float(w) for w in self.weights)
        if not self.weights or not all(0.0 <= w <= 1.0 for w in self.weights):
            raise MetatrackError(f"combined model: RNN weights {list(self.weights)} must be 1 or more values in [0, 1]")
        if (self.uses_rnn and self.rnn is None) or (self.uses_cox and self.cox is None):
            raise MetatrackError(f"combined model: weights {list(self.weights)} need a member that is missing")
        self._default_hyperparameters()

    @property
    def uses_rnn(self) -> bool:
        return any(w > 0 for w in self.weights)

    @property
    def uses_cox(self) -> bool:
        return any(w < 1 for w in self.weights)

    def _mix(
        self, score: Callable[[VisitPredictions], tuple[pd.DataFrame, np.ndarray, np.ndarray]]
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """(index, mixed curves, mixed second array) of the members' ``score`` outputs, weighted per row."""
        kept = (self.rnn if self.uses_rnn else None, self.cox if self.uses_cox else None)
        parts = [(m, score(m)) for m in kept if m is not None]
        index = parts[0][1][0]
        if len(parts) == 1:
            _, (_, s, x) = parts[0]
            return index, s, x
        (_, (_, s_r, x_r)), (_, (idx_c, s_c, x_c)) = parts
        if not index["visit_index"].equals(idx_c["visit_index"]):
            raise MetatrackError("combined model: the members scored different visits")
        w = row_weights(self.weights, index["visit_index"].to_numpy())[:, None]
        return index, w * s_r + (1.0 - w) * s_c, w * x_r + (1.0 - w) * x_c

    def interval_half_width(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """(index, mixed curves before recalibration, 90 % half-width): the members' half-widths mixed with the
        weights, times the kind's width scale (:data:`~tracker.survival.intervals.INTERVAL_SCALES`)."""
        from tracker.survival.intervals import INTERVAL_SCALES

        index, surv, hw = self._mix(lambda m: m.interval_half_width(visits))
        return index, surv, hw * INTERVAL_SCALES.get(self.kind, 1.0)

    def _calibrated(self, surv: np.ndarray) -> np.ndarray:
        return surv if self.calibration is None else self.calibration.apply(surv, self.grid_months)

    def survival_all_visits(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """The recalibrated mixture of the members' curves from every visit."""

        def curves(m: VisitPredictions) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
            index, s = m.survival_all_visits(visits)
            return index, s, s

        index, surv, _ = self._mix(curves)
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
        """The zip: ``model.json`` (weights, recalibration, metadata) and each kept member's own model file."""
        kept = (self.rnn if self.uses_rnn else None, self.cox if self.uses_cox else None)
        members = [(f"{MEMBERS_DIR}{m.kind}.zip", m.to_bytes()) for m in kept if m is not None]
        header = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "config": self.cfg.to_dict(),
            **standardizer_to_json(self.standardizer),
            "weights": list(self.weights),
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "members": [name for name, _ in members],
            "metadata": self.metadata,
        }
        return write_model_zip(header, members)


def combined_from_zip(header: dict[str, Any], zf: zipfile.ZipFile) -> CombinedModel:
    """Rebuild a blend/auto model: its members are model files inside its zip. Format 1 (one weight for every
    visit) reads as a single-landmark list of weights."""
    from tracker.survival.kinds import model_from_bytes
    from tracker.survival.landmark_cox import LandmarkCoxModel
    from tracker.survival.model import RiskModel

    version = check_version(header, (1, FORMAT_VERSION))
    members = [model_from_bytes(zf.read(name)) for name in header["members"]]
    rnn = next((m for m in members if isinstance(m, RiskModel)), None)
    cox = next((m for m in members if isinstance(m, LandmarkCoxModel)), None)
    cal = header.get("calibration")
    weights = (float(header["weight"]),) if version == 1 else tuple(float(w) for w in header["weights"])
    return CombinedModel(
        str(header["kind"]),
        SurvivalModelConfig.from_dict(header["config"]),
        standardizer_from_json(header),
        rnn,
        cox,
        weights,
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
        weights = c.weights(kind)
        uses_rnn = any(w > 0 for w in weights)
        per_landmark = [
            {
                "landmark": k,
                "chosen": c.pick_label(k) if kind == "auto" else f"blend {w:g}",
                "weight_rnn": w,
                "why": why,
            }
            for k, (w, why) in enumerate(zip(weights, c.reasons[kind], strict=True), start=1)
        ]
        metrics = {
            **{k: v for k, v in self.cox.metadata["metrics"].items() if k.startswith("n_")},
            "train_seconds": self.seconds,
            "inner_cv": {
                "folds": INNER_FOLDS,
                "candidates": c.scores,
                "candidates_per_landmark": {
                    cand: {str(k): s for k, s in by_k.items()} for cand, by_k in c.landmark_scores.items()
                },
                "blend_weights_scores": c.weight_scores,
                "chosen": c.auto_pooled if kind == "auto" else "blend",
                "chosen_scores": c.kind_scores[kind],
                "per_landmark": per_landmark,
                "reason": c.reason,
            },
            "weights_rnn": list(weights),
            "calibration": c.calibration_reports[kind],
        }
        return CombinedModel(
            kind,
            self.cox.cfg,
            self.cox.standardizer,
            self.rnn if uses_rnn else None,
            self.cox if any(w < 1 for w in weights) else None,
            weights,
            c.calibrations[kind],
            {
                "features": self.cox.metadata["features"],
                "candidate_features": self.cox.metadata["candidate_features"],
                "relevance": self.cox.metadata["relevance"],
                "hyperparameters": {**self.cox.cfg.to_dict(), "inner_folds": INNER_FOLDS},
                "metrics": metrics,
                "versions": library_versions(FORMAT_VERSION, torch=uses_rnn),
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
    """Inner CV, choice, and the final members on all the data (the RNN only if ``need_rnn`` or auto uses it at
    some landmark)."""
    from tracker.survival.landmark_cox import train_landmark_cox
    from tracker.survival.model import train_model

    start = time.perf_counter()
    oof = inner_predictions(visits, events, cfg, seed, progress=progress)
    choice = choose(oof, cfg)
    cox = train_landmark_cox(visits, events, cfg, seed=seed)
    use_rnn = need_rnn or any(w > 0 for w in choice.weights("auto"))
    rnn = train_model(visits, events, cfg, seed=seed) if use_rnn else None
    return CombinedFit(choice, rnn, cox, data_fingerprint(visits, events), time.perf_counter() - start, seed)


def train_blend(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    *,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> CombinedModel:
    """Kind "blend": RNN and landmark Cox curves mixed with per-landmark weights chosen by inner CV, recalibrated."""
    return fit_combined(visits, events, cfg, seed=seed, progress=progress).model("blend")


def train_auto(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    *,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> CombinedModel:
    """Kind "auto": per landmark landmark-cox, rnn or blend, as inner CV prefers (see the module), recalibrated."""
    return fit_combined(visits, events, cfg, seed=seed, progress=progress, need_rnn=False).model("auto")

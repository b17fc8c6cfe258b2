"""Model kind "landmark-cox": one Cox proportional-hazards fit per landmark visit.

The fit of landmark k uses, for every training patient with >= k visits before the outcome, the standardised values
at visit k, their change since visit k - 1 and years since baseline (:func:`~tracker.survival.baselines.
landmark_design`, as the benchmark's "cox_landmark"), and the months from visit k to the outcome. A visit k is
scored with the landmark-k fit; visits after the last fitted landmark use the last fit (on their own covariates).

Features are chosen exactly as for the RNN (:func:`~tracker.survival.model.prepare_training`: mRMR up to
``cfg.max_features``): with deltas every feature is two Cox columns, and all numeric columns of a radiomics table
would give far more columns than events; the same choice also makes a registered landmark Cox the benchmark's
cox_landmark and keeps the two kinds comparable on the same inputs.

The file holds no pickle and needs no lifelines to read: per landmark the coefficients, the covariate means the
linear predictor is centred on, and the Breslow baseline cumulative hazard at its knots (months), all as JSON.
"""

from __future__ import annotations

import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tracker.errors import MetatrackError
from tracker.survival.baselines import CoxBaseline, cox_survival, landmark_design, outcome_from
from tracker.survival.config import SurvivalModelConfig, library_versions
from tracker.survival.data import Standardizer, data_fingerprint, prepare_visits
from tracker.survival.model_io import (
    check_version,
    standardizer_from_json,
    standardizer_to_json,
    write_model_zip,
)
from tracker.survival.protocol import VisitPredictions

KIND = "landmark-cox"
FORMAT_VERSION = 1
DEFAULT_MAX_LANDMARKS = 4
MIN_LANDMARK_PATIENTS = 10  # a later landmark is fitted only with this many patients and events at that visit
MIN_LANDMARK_EVENTS = 5


@dataclass(frozen=True, eq=False)
class CoxFit:
    """One fitted Cox model as numbers: S(g | x) = exp(-H0(g) * exp((x - center) . coef))."""

    landmark: int
    columns: tuple[str, ...]
    coef: np.ndarray
    center: np.ndarray
    knots: np.ndarray  # months from the landmark visit
    cumhaz: np.ndarray  # baseline cumulative hazard at the knots (at x = center)
    converged: bool = True
    cov: np.ndarray | None = None  # covariance of coef (files written before intervals have none: zero width)

    @classmethod
    def from_lifelines(cls, landmark: int, cox: CoxBaseline) -> CoxFit:
        """The numbers of a fitted :class:`CoxBaseline` (lifelines CoxPHFitter)."""
        fitter: Any = cox.fitter
        params = fitter.params_
        columns = tuple(str(c) for c in params.index)
        if set(columns) != set(cox.columns):
            raise MetatrackError(f"landmark {landmark}: the Cox fit's coefficients do not match its columns")
        knots, cumhaz = cox.baseline_cumulative_hazard()
        return cls(
            landmark,
            columns,
            params.to_numpy(dtype=np.float64),
            fitter._norm_mean.loc[list(params.index)].to_numpy(dtype=np.float64),
            knots,
            cumhaz,
            bool(cox.converged),
            fitter.variance_matrix_.loc[list(params.index), list(params.index)].to_numpy(dtype=np.float64),
        )

    def partial_hazard(self, design: pd.DataFrame) -> np.ndarray:
        x = design[list(self.columns)].to_numpy(dtype=np.float64)
        return np.exp(np.dot(x - self.center, self.coef))

    def survival(self, design: pd.DataFrame, grid: list[float]) -> np.ndarray:
        """S at each grid point (months after the visit) for each row of a landmark design."""
        ph = self.partial_hazard(design)
        return cox_survival(ph, self.knots, self.cumhaz, np.zeros(len(ph)), grid)

    def linear_predictor_sd(self, design: pd.DataFrame) -> np.ndarray:
        """Standard error of each row's linear predictor (x - center) . coef by the delta method; 0 without cov."""
        if self.cov is None:
            return np.zeros(len(design))
        x = design[list(self.columns)].to_numpy(dtype=np.float64) - self.center
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", x, self.cov, x), 0.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "landmark": self.landmark,
            "columns": list(self.columns),
            "coef": [float(v) for v in self.coef],
            "center": [float(v) for v in self.center],
            "baseline_cumulative_hazard": {
                "months": [float(v) for v in self.knots],
                "values": [float(v) for v in self.cumhaz],
            },
            "converged": self.converged,
            **({} if self.cov is None else {"cov": [[float(v) for v in row] for row in self.cov]}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CoxFit:
        base = d["baseline_cumulative_hazard"]
        return cls(
            int(d["landmark"]),
            tuple(d["columns"]),
            np.asarray(d["coef"], dtype=np.float64),
            np.asarray(d["center"], dtype=np.float64),
            np.asarray(base["months"], dtype=np.float64),
            np.asarray(base["values"], dtype=np.float64),
            bool(d.get("converged", True)),
            np.asarray(d["cov"], dtype=np.float64) if "cov" in d else None,
        )


@dataclass
class LandmarkCoxModel(VisitPredictions):
    """Model kind "landmark-cox" of the :class:`~tracker.survival.protocol.SurvivalModel` protocol.

    ``fits[k - 1]`` is the fit of landmark k; ``lifelines_fits`` (after training only; not saved) are the lifelines
    fitters they came from.
    """

    kind: ClassVar[str] = KIND
    cfg: SurvivalModelConfig
    standardizer: Standardizer
    fits: list[CoxFit]
    metadata: dict[str, Any] = field(default_factory=dict)
    lifelines_fits: list[CoxBaseline] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.fits:
            raise MetatrackError("landmark Cox model: needs at least the landmark-1 fit")
        if [f.landmark for f in self.fits] != list(range(1, len(self.fits) + 1)):
            raise MetatrackError("landmark Cox model: fits must be for landmarks 1, 2, ... in order")
        self._default_hyperparameters()

    def fit_for(self, visit: int) -> CoxFit:
        """The fit that scores visit ``visit`` (1-based): its landmark's, else the last one."""
        return self.fits[min(visit, len(self.fits)) - 1]

    def survival_all_visits(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
        """Survival curve from every visit on: (patient_id, visit_index (1-based), time_days; (visits, bins))."""
        index, surv, _ = self.survival_spread(visits)
        return index, surv

    def survival_spread(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """(index, curves, spread): the standard error of each visit's linear predictor (the delta method on its
        landmark fit's coefficient covariance), which is that of log(-log S) at every grid point."""
        cfg = self.cfg
        prepared = prepare_visits(visits, cfg)
        missing = [c for c in self.features if c not in prepared.columns]
        if missing:
            raise MetatrackError(f"visits: the model needs feature columns {missing[:10]} that are missing")
        grid = self.grid_months
        pids = prepared[cfg.patient_col].to_numpy()
        step = prepared["visit_index"].to_numpy()
        surv = np.empty((len(prepared), len(grid)), dtype=np.float64)
        spread = np.empty(len(prepared), dtype=np.float64)
        for k0 in np.unique(step):
            rows = np.flatnonzero(step == k0)
            design = landmark_design(prepared, self.standardizer, cfg, int(k0) + 1, pids[rows])
            fit = self.fit_for(int(k0) + 1)
            surv[rows] = fit.survival(design, grid)
            spread[rows] = fit.linear_predictor_sd(design)
        index = pd.DataFrame(
            {
                cfg.patient_col: pids,
                "visit_index": step + 1,
                cfg.time_col: prepared[cfg.time_col].to_numpy(dtype=np.float64),
            }
        )
        return index, surv, np.repeat(spread[:, None], len(grid), axis=1)

    def to_bytes(self) -> bytes:
        """The model zip: ``model.json`` only (config, standardisation, fits, metadata)."""
        header = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "config": self.cfg.to_dict(),
            **standardizer_to_json(self.standardizer),
            "fits": [f.to_json() for f in self.fits],
            "metadata": self.metadata,
        }
        return write_model_zip(header)


def landmark_cox_from_zip(header: dict[str, Any], zf: zipfile.ZipFile) -> LandmarkCoxModel:
    """Rebuild a landmark Cox model from its header (the zip has nothing else)."""
    check_version(header, (FORMAT_VERSION,))
    return LandmarkCoxModel(
        SurvivalModelConfig.from_dict(header["config"]),
        standardizer_from_json(header),
        [CoxFit.from_json(d) for d in header["fits"]],
        header["metadata"],
    )


def train_landmark_cox(
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    *,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    max_landmarks: int = DEFAULT_MAX_LANDMARKS,
) -> LandmarkCoxModel:
    """Select features, standardise (as :func:`~tracker.survival.model.train_model`), fit a Cox model per landmark.

    Landmark 1 is always fitted; landmark k > 1 (up to ``max_landmarks``) only while at least
    MIN_LANDMARK_PATIENTS patients with MIN_LANDMARK_EVENTS events have a k-th visit. ``cfg.cox_penalizer`` is
    lifelines' L2 penalizer. The fits are deterministic; ``seed`` is recorded (it would fix nothing else).
    ``progress`` is called as progress(landmark, max_landmarks, negative log partial likelihood) after each fit.
    """
    from tracker.survival.model import prepare_training

    if max_landmarks < 1:
        raise MetatrackError(f"max_landmarks must be >= 1, got {max_landmarks}")
    start = time.perf_counter()
    td = prepare_training(visits, events, cfg)
    kept, ev, stats = td.kept, td.events, td.standardizer
    lifelines_fits: list[CoxBaseline] = []
    fits: list[CoxFit] = []
    per_landmark: list[dict[str, Any]] = []
    for k in range(1, max_landmarks + 1):
        ids, remaining, flags, _ = outcome_from(kept, ev, cfg, k)
        if k > 1 and (len(ids) < MIN_LANDMARK_PATIENTS or int(flags.sum()) < MIN_LANDMARK_EVENTS):
            break
        cox = CoxBaseline.fit(landmark_design(kept, stats, cfg, k, ids), remaining, flags, cfg.cox_penalizer)
        lifelines_fits.append(cox)
        fits.append(CoxFit.from_lifelines(k, cox))
        fitter: Any = cox.fitter
        per_landmark.append(
            {
                "landmark": k,
                "n_patients": len(ids),
                "n_events": int(flags.sum()),
                "converged": bool(cox.converged),
                "concordance": float(fitter.concordance_index_),
            }
        )
        if progress is not None:
            progress(k, max_landmarks, -float(fitter.log_likelihood_))
    metadata = {
        "features": td.chosen,
        "candidate_features": td.candidates,
        "relevance": td.relevance,
        "hyperparameters": {**cfg.to_dict(), "max_landmarks": max_landmarks},
        "metrics": {
            "n_landmarks": len(fits),
            "landmarks": per_landmark,
            "train_seconds": time.perf_counter() - start,
            "n_patients": td.n_patients,
            "n_visits": len(kept),
            "n_events": int(ev[cfg.event_col].sum()),
        },
        "versions": library_versions(FORMAT_VERSION, torch=False),
        "seed": seed,
        "data_fingerprint": data_fingerprint(visits, events),
    }
    return LandmarkCoxModel(cfg, stats, fits, metadata, lifelines_fits)

"""What every kind of survival model offers (the ``SurvivalModel`` protocol) and the per-visit risk tables that
follow from its survival curves (``VisitPredictions``, shared by the kinds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from tracker.survival.curves import curve_column, survival_at

if TYPE_CHECKING:
    from tracker.survival.config import SurvivalModelConfig
    from tracker.survival.data import Standardizer

DEFAULT_HORIZONS_MONTHS = (6.0, 12.0, 24.0)


@runtime_checkable
class SurvivalModel(Protocol):
    """A trained model that turns a long visit table into survival curves from every visit.

    ``survival_all_visits`` returns (key frame with patient_id, visit_index (1-based), time_days; array (visits,
    len(grid_months)) of S at grid_months after each visit), one row per visit in patient/time order. A visit's
    curve depends only on that visit and earlier ones of the same patient.
    """

    metadata: dict[str, Any]  # data_fingerprint, hyperparameters, metrics, versions, seed, ...

    @property
    def kind(self) -> str:
        """The model kind, a key of ``tracker.survival.kinds.MODEL_KINDS``; written into the file header."""
        ...

    @property
    def features(self) -> list[str]:
        """The feature columns the model reads."""
        ...

    @property
    def grid_months(self) -> list[float]:
        """Time points (months after a visit) of the survival curves."""
        ...

    def survival_all_visits(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]: ...

    def predict(self, visits: pd.DataFrame) -> pd.DataFrame: ...

    def predict_all_visits(
        self, visits: pd.DataFrame, horizons_months: Sequence[float] = DEFAULT_HORIZONS_MONTHS
    ) -> pd.DataFrame: ...

    def risk_at(
        self, visits: pd.DataFrame, horizons_months: Sequence[float] = DEFAULT_HORIZONS_MONTHS
    ) -> pd.DataFrame: ...

    def to_bytes(self) -> bytes: ...


class VisitPredictions:
    """What every kind shares: ``features``, ``grid_months``, default hyperparameters, and ``predict``,
    ``predict_all_visits`` and ``risk_at`` from ``survival_all_visits`` (needs ``cfg``, ``standardizer``,
    ``metadata``)."""

    cfg: SurvivalModelConfig
    standardizer: Standardizer
    metadata: dict[str, Any]

    if TYPE_CHECKING:

        def survival_all_visits(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]: ...

    def _default_hyperparameters(self) -> None:
        """Every trained model has hyperparameters in its metadata; a hand-built one gets its config."""
        if "hyperparameters" not in self.metadata:
            self.metadata = {**self.metadata, "hyperparameters": self.cfg.to_dict()}

    @property
    def features(self) -> list[str]:
        """The (selected) feature columns the model reads, in input order."""
        return list(self.standardizer.features)

    @property
    def grid_months(self) -> list[float]:
        """Time points (months after a visit) of the survival curves."""
        return self.cfg.grid_months

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
        """Risk after every visit: patient_id, visit_index (1-based), time_days, horizon_months, risk.

        A horizon outside the model's grid (0..last grid month) raises.
        """
        index, surv = self.survival_all_visits(visits)
        parts = []
        for h in horizons_months:
            part = index.copy()
            part["horizon_months"] = float(h)
            part["risk"] = (
                1.0 - survival_at(surv, self.grid_months, [float(h)], pairing="outer", past_end="raise")[:, 0]
            )
            parts.append(part)
        out = pd.concat(parts, ignore_index=True)
        return out.sort_values([self.cfg.patient_col, "visit_index", "horizon_months"], kind="stable").reset_index(
            drop=True
        )

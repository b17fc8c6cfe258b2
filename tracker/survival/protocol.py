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

    def survival_interval_all_visits(
        self, visits: pd.DataFrame
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]: ...

    def predict(self, visits: pd.DataFrame) -> pd.DataFrame: ...

    def predict_all_visits(
        self,
        visits: pd.DataFrame,
        horizons_months: Sequence[float] = DEFAULT_HORIZONS_MONTHS,
        *,
        interval: bool = False,
    ) -> pd.DataFrame: ...

    def risk_at(
        self,
        visits: pd.DataFrame,
        horizons_months: Sequence[float] = DEFAULT_HORIZONS_MONTHS,
        *,
        interval: bool = False,
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

    def survival_spread(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """(index, curves, spread): the standard deviation of log(-log S) per visit and grid point that the kind's
        fit implies (see :mod:`tracker.survival.intervals`); every kind defines it."""
        raise NotImplementedError

    def interval_half_width(self, visits: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """(index, curves, 90 % half-width of log(-log S)): the spread times Z_90 and the kind's width scale."""
        from tracker.survival.intervals import INTERVAL_SCALES, Z_90

        index, surv, spread = self.survival_spread(visits)
        scale = INTERVAL_SCALES.get(str(getattr(self, "kind", "")), 1.0)
        return index, surv, Z_90 * scale * spread

    def survival_interval_all_visits(
        self, visits: pd.DataFrame
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`survival_all_visits` with the 90 % interval: (index, curves, lower curves, upper curves); the
        lower survival curve is the upper risk."""
        from tracker.survival.intervals import band

        index, surv, hw = self.interval_half_width(visits)
        lower, upper = band(surv, hw)
        return index, surv, lower, upper

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

    def risk_at(
        self,
        visits: pd.DataFrame,
        horizons_months: Sequence[float] = DEFAULT_HORIZONS_MONTHS,
        *,
        interval: bool = False,
    ) -> pd.DataFrame:
        """Risk 1 - S(h) as of each patient's last visit: patient_id, as_of_time_days, horizon_months, risk (and
        with ``interval`` its 90 % interval, lower and upper)."""
        table = self.predict_all_visits(visits, horizons_months, interval=interval)
        last = table.groupby(self.cfg.patient_col, sort=False)["visit_index"].transform("max") == table["visit_index"]
        out = table.loc[last].rename(columns={self.cfg.time_col: "as_of_time_days"})
        cols = [self.cfg.patient_col, "as_of_time_days", "horizon_months", "risk"]
        return out[[*cols, "lower", "upper"] if interval else cols].reset_index(drop=True)

    def predict_all_visits(
        self,
        visits: pd.DataFrame,
        horizons_months: Sequence[float] = DEFAULT_HORIZONS_MONTHS,
        *,
        interval: bool = False,
    ) -> pd.DataFrame:
        """Risk after every visit: patient_id, visit_index (1-based), time_days, horizon_months, risk (and with
        ``interval`` its 90 % interval, lower and upper).

        A horizon outside the model's grid (0..last grid month) raises.
        """
        if interval:
            index, surv, s_low, s_high = self.survival_interval_all_visits(visits)
        else:
            index, surv = self.survival_all_visits(visits)

        def risk(curves: np.ndarray, h: float) -> np.ndarray:
            return 1.0 - survival_at(curves, self.grid_months, [h], pairing="outer", past_end="raise")[:, 0]

        parts = []
        for h in horizons_months:
            part = index.copy()
            part["horizon_months"] = float(h)
            part["risk"] = risk(surv, float(h))
            if interval:
                part["lower"] = risk(s_high, float(h))
                part["upper"] = risk(s_low, float(h))
            parts.append(part)
        out = pd.concat(parts, ignore_index=True)
        return out.sort_values([self.cfg.patient_col, "visit_index", "horizon_months"], kind="stable").reset_index(
            drop=True
        )

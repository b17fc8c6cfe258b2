"""Configuration of the longitudinal risk model and its baselines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from tracker.errors import MetatrackError

DAYS_PER_MONTH = 365.25 / 12.0
DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class SurvivalModelConfig:
    """Hyperparameters of the GRU discrete-time survival model, its feature selection and the Cox baselines.

    Times in the tables are in days; the survival head works on bins of ``bin_months`` up to ``horizon_months``.
    """

    horizon_months: float = 36.0
    bin_months: float = 1.0
    hidden_size: int = 16
    dropout: float = 0.3
    learning_rate: float = 3e-3
    weight_decay: float = 3e-2  # strong: small cohorts overfit within tens of epochs
    max_epochs: int = 300
    min_epochs: int = 20
    patience: int = 40
    val_fraction: float = 0.2
    batch_size: int | None = None  # patients per minibatch; None = full batch
    ranking_weight: float = 0.0  # > 0 adds the Dynamic-DeepHit ranking term
    ranking_sigma: float = 0.1
    n_ensemble: int = 10  # networks with their own seed and validation split; their survival curves are averaged
    max_features: int | None = 32  # None = keep every feature column
    corr_threshold: float = 0.9
    cox_penalizer: float = 0.1
    num_threads: int = 1  # tiny matrices: one thread is fastest and avoids contention
    device: str = "auto"  # "auto", "cpu" or "cuda"
    feature_columns: tuple[str, ...] | None = None  # None = every numeric column but id/time/date
    patient_col: str = "patient_id"
    time_col: str = "time_days"
    date_col: str = "date"
    event_col: str = "event"

    def __post_init__(self) -> None:
        if self.horizon_months <= 0 or self.bin_months <= 0 or self.bin_months > self.horizon_months:
            raise MetatrackError(
                f"SurvivalModelConfig: need 0 < bin_months <= horizon_months "
                f"(got bin_months={self.bin_months}, horizon_months={self.horizon_months})"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise MetatrackError(f"SurvivalModelConfig.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise MetatrackError(f"SurvivalModelConfig.device must be auto, cpu or cuda, got {self.device!r}")
        if self.n_ensemble < 1:
            raise MetatrackError(f"SurvivalModelConfig.n_ensemble must be >= 1, got {self.n_ensemble}")
        if self.max_features is not None and self.max_features < 1:
            raise MetatrackError(f"SurvivalModelConfig.max_features must be >= 1 or None, got {self.max_features}")

    @property
    def n_bins(self) -> int:
        """Number of discrete time bins of the survival head."""
        return round(self.horizon_months / self.bin_months)

    @property
    def grid_months(self) -> list[float]:
        """Ends of the time bins in months after the visit: bin_months, 2 * bin_months, ..., horizon."""
        return [self.bin_months * (b + 1) for b in range(self.n_bins)]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (tuples become lists)."""
        out = asdict(self)
        if out["feature_columns"] is not None:
            out["feature_columns"] = list(out["feature_columns"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SurvivalModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MetatrackError(f"SurvivalModelConfig: unknown fields {unknown}")
        values = dict(data)
        if values.get("feature_columns") is not None:
            values["feature_columns"] = tuple(values["feature_columns"])
        return cls(**values)


def library_versions(format_version: int, *, torch: bool) -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers, and its file format (torch only where it runs)."""
    import importlib.metadata
    import platform

    import numpy as np
    import pandas as pd

    try:
        lifelines_version = importlib.metadata.version("lifelines")
    except importlib.metadata.PackageNotFoundError:
        lifelines_version = "absent"
    versions = {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__}
    if torch:
        import torch as torch_module

        versions["torch"] = torch_module.__version__
    return versions | {"lifelines": lifelines_version, "format": str(format_version)}

"""What several test modules share: synthetic cohorts, a tiny trained model, where the IBSI data are."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from db.synthetic import fill_cohort
from tracker.survival.synthetic import SLOPE_FEATURES as FEATURES
from tracker.survival.synthetic import slope_cohort as synthetic_tables

__all__ = [
    "FEATURES",
    "VENDORED_IBSI",
    "fill_cohort",
    "gaussian_bump_field",
    "shared_ibsi",
    "synthetic_tables",
    "tiny_model",
    "tiny_model_bytes",
]

VENDORED_IBSI = Path(__file__).resolve().parent / "data" / "ibsi"


def shared_ibsi() -> Path:
    """The full IBSI data (CT phantom, IBSI 2; not vendored): $METATRACK_IBSI_DATA, else ../shared/data/ibsi.

    The small IBSI 1 digital phantom and its reference values are vendored: :data:`VENDORED_IBSI`.
    """
    env = os.environ.get("METATRACK_IBSI_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ibsi"


@functools.lru_cache(maxsize=1)
def tiny_model_bytes() -> bytes:
    """A small trained RiskModel (few epochs) on a 200-patient synthetic cohort, trained once per process."""
    from tracker.survival import SurvivalModelConfig, train_model

    visits, events = synthetic_tables(200, seed=5)
    cfg = SurvivalModelConfig(max_epochs=8, min_epochs=1, hidden_size=4, val_fraction=0.2)
    model = train_model(
        visits[["patient_id", "time_days", *FEATURES]], events[["patient_id", "time_days", "event"]], cfg, seed=0
    )
    return model.to_bytes()


def tiny_model():
    """A fresh copy of the tiny model."""
    from tracker.survival import RiskModel

    return RiskModel.from_bytes(tiny_model_bytes())


def gaussian_bump_field(reference: Any, peak_mm: Any, sigma_mm: float) -> Any:
    """A known deformation: a Gaussian bump of displacement (peak (x, y, z) mm) centred in ``reference``, on its
    grid (a SimpleITK vector image, LPS mm)."""
    import numpy as np
    import SimpleITK as sitk

    size = np.asarray(reference.GetSize())
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), axis=-1)[..., ::-1]
    points = np.asarray(reference.GetOrigin()) + idx * np.asarray(reference.GetSpacing())
    centre = np.asarray(reference.GetOrigin()) + (size - 1) / 2.0 * np.asarray(reference.GetSpacing())
    weight = np.exp(-((points - centre) ** 2).sum(-1) / (2.0 * sigma_mm**2))
    field = sitk.GetImageFromArray(weight[..., None] * np.asarray(peak_mm), isVector=True)
    field.CopyInformation(reference)
    return field

"""Longitudinal risk models (kinds "rnn": GRU discrete-time survival; "landmark-cox": a Cox fit per landmark
visit) behind one protocol (``SurvivalModel``), Cox/Kaplan-Meier baselines, metrics and evaluation.

Importing this package is light (only the config): the models, torch, scipy and lifelines load on first use of
``train_model``, ``RiskModel``, ``model_from_bytes``, ``evaluate_models``, etc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracker.survival.config import SurvivalModelConfig

if TYPE_CHECKING:
    from tracker.survival.cache import cached_model
    from tracker.survival.evaluate import evaluate_models
    from tracker.survival.kinds import MODEL_KINDS, model_from_bytes
    from tracker.survival.landmark_cox import LandmarkCoxModel, train_landmark_cox
    from tracker.survival.model import RiskModel, train_model
    from tracker.survival.protocol import SurvivalModel

__all__ = [
    "MODEL_KINDS",
    "LandmarkCoxModel",
    "RiskModel",
    "SurvivalModel",
    "SurvivalModelConfig",
    "cached_model",
    "evaluate_models",
    "model_from_bytes",
    "train_landmark_cox",
    "train_model",
]

_LAZY = {
    "RiskModel": "tracker.survival.model",
    "train_model": "tracker.survival.model",
    "LandmarkCoxModel": "tracker.survival.landmark_cox",
    "train_landmark_cox": "tracker.survival.landmark_cox",
    "SurvivalModel": "tracker.survival.protocol",
    "MODEL_KINDS": "tracker.survival.kinds",
    "model_from_bytes": "tracker.survival.kinds",
    "cached_model": "tracker.survival.cache",
    "evaluate_models": "tracker.survival.evaluate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tracker.survival' has no attribute {name!r}")

"""Longitudinal risk model (GRU, discrete-time survival), Cox/Kaplan-Meier baselines, metrics and evaluation.

Importing this package is light (only the config): the model, torch, scipy and lifelines load on first use of
``train_model``, ``RiskModel`` or ``evaluate_models``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracker.survival.config import SurvivalModelConfig

if TYPE_CHECKING:
    from tracker.survival.evaluate import evaluate_models
    from tracker.survival.model import RiskModel, train_model

__all__ = ["RiskModel", "SurvivalModelConfig", "evaluate_models", "train_model"]

_LAZY = {
    "RiskModel": "tracker.survival.model",
    "train_model": "tracker.survival.model",
    "evaluate_models": "tracker.survival.evaluate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tracker.survival' has no attribute {name!r}")

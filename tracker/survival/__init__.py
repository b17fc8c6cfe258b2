"""Longitudinal risk model (GRU, discrete-time survival), Cox/Kaplan-Meier baselines, metrics and evaluation.

Importing this package is light: torch and lifelines are imported only when training, predicting or evaluating.
"""

from tracker.survival.config import SurvivalModelConfig
from tracker.survival.evaluate import evaluate_models
from tracker.survival.model import RiskModel, train_model

__all__ = ["RiskModel", "SurvivalModelConfig", "evaluate_models", "train_model"]

"""IBSI 1 compliant radiomics engine.

>>> from tracker.radiomics import load_config, extract
>>> fs = extract(image, mask, spacing, load_config("ct_default"))  # doctest: +SKIP
"""

from tracker.radiomics.config import load_config, preset_names
from tracker.radiomics.extractor import ENGINE_VERSION, FeatureSet, extract, feature_columns
from tracker.radiomics.peritumoral import peritumoral_shell

__all__ = [
    "ENGINE_VERSION",
    "FeatureSet",
    "extract",
    "feature_columns",
    "load_config",
    "peritumoral_shell",
    "preset_names",
]

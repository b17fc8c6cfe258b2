"""Radiomics configuration: a YAML file checked against a JSON schema, plus built-in presets.

A configuration is a plain dict (see ``SCHEMA``). Spacings are (z, y, x) in mm; a ``null`` entry keeps that
axis's native spacing (e.g. ``[null, 2, 2]`` for IBSI configuration B's in-plane resampling).
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

from tracker.errors import MetatrackError

ALL_FAMILIES: tuple[str, ...] = ("morph", "loc", "stat", "ih", "ivh", "cm", "rlm", "szm", "dzm", "ngt", "ngl")
TEXTURE_FAMILIES: tuple[str, ...] = ("cm", "rlm", "szm", "dzm", "ngt", "ngl")

_NUMBER_OR_NULL = {"type": ["number", "null"]}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "resampling", "discretisation", "ivh", "texture"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "resampling": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["spacing"],
                    "properties": {
                        "spacing": {
                            "type": "array",
                            "items": {"type": ["number", "null"], "exclusiveMinimum": 0},
                            "minItems": 3,
                            "maxItems": 3,
                        },
                        "interpolator": {"enum": ["nearest", "linear", "cubic"]},
                        "mask_interpolator": {"enum": ["nearest", "linear", "cubic"]},
                        "mask_threshold": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    },
                },
            ]
        },
        "round_intensities": {"type": "boolean"},
        "normalisation": {"enum": ["none", "zscore"]},
        "resegmentation": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "range": {
                    "oneOf": [
                        {"type": "null"},
                        {"type": "array", "items": _NUMBER_OR_NULL, "minItems": 2, "maxItems": 2},
                    ]
                },
                "outlier_sd": {"oneOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0}]},
            },
        },
        "discretisation": {"$ref": "#/$defs/discretisation"},
        "ivh": {"$ref": "#/$defs/discretisation"},
        "texture": {
            "type": "object",
            "additionalProperties": False,
            "required": ["modes"],
            "properties": {
                "modes": {
                    "type": "array",
                    "items": {"enum": ["2D", "3D"]},
                    "uniqueItems": True,
                }
            },
        },
        "families": {"type": "array", "items": {"enum": list(ALL_FAMILIES)}, "uniqueItems": True},
    },
    "$defs": {
        "discretisation": {
            "type": "object",
            "additionalProperties": False,
            "required": ["method"],
            "properties": {
                "method": {"enum": ["none", "fixed_bin_size", "fixed_bin_number"]},
                "bin_width": {"type": "number", "exclusiveMinimum": 0},
                "n_bins": {"type": "integer", "minimum": 1},
                "lower_bound": {"type": ["number", "null"]},
            },
            "allOf": [
                {
                    "if": {"properties": {"method": {"const": "fixed_bin_size"}}},
                    "then": {"required": ["bin_width"]},
                },
                {
                    "if": {"properties": {"method": {"const": "fixed_bin_number"}}},
                    "then": {"required": ["n_bins"]},
                },
            ],
        }
    },
}

_DEFAULTS: dict[str, Any] = {
    "round_intensities": False,
    "normalisation": "none",
    "resegmentation": {"range": None, "outlier_sd": None},
    "families": list(ALL_FAMILIES),
}
_RESAMPLING_DEFAULTS: dict[str, Any] = {
    "interpolator": "linear",
    "mask_interpolator": "linear",
    "mask_threshold": 0.5,
}


def preset_names() -> list[str]:
    """Built-in presets (``ibsi_dp``, ``ibsi_A`` … ``ibsi_E``, ``ct_default``, ``mr_default``)."""
    folder = resources.files("tracker.radiomics") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def validate_config(cfg: Any, source: str = "<config>") -> dict[str, Any]:
    """Check ``cfg`` against ``SCHEMA`` and fill defaults.

    Raises
    ------
    MetatrackError
        Naming ``source`` and the offending field.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        field = "/".join(str(p) for p in err.absolute_path) or "<top level>"
        raise MetatrackError(f"{source}: radiomics config field '{field}': {err.message}")
    out = copy.deepcopy(cfg)
    for key, value in _DEFAULTS.items():
        out.setdefault(key, copy.deepcopy(value))
    out["resegmentation"] = {**_DEFAULTS["resegmentation"], **out["resegmentation"]}
    if out["resampling"] is not None:
        out["resampling"] = {**_RESAMPLING_DEFAULTS, **out["resampling"]}
    rng = out["resegmentation"]["range"]
    if rng is not None and None not in rng and rng[0] >= rng[1]:
        raise MetatrackError(f"{source}: radiomics config field 'resegmentation/range': {rng} is not increasing")
    return out


def load_config(name_or_path: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Load a preset by name, a YAML file by path, or validate a dict.

    Parameters
    ----------
    name_or_path
        A preset name (see ``preset_names()``), a path to a YAML file, or an already-loaded dict.

    Returns
    -------
    dict
        The validated configuration with defaults filled in.
    """
    import yaml

    if isinstance(name_or_path, dict):
        return validate_config(name_or_path)
    text_name = str(name_or_path)
    if text_name in preset_names():
        source = f"preset {text_name}"
        text = (resources.files("tracker.radiomics") / "presets" / f"{text_name}.yaml").read_text("utf-8")
    else:
        path = Path(text_name)
        if not path.is_file():
            raise MetatrackError(
                f"{text_name}: no such radiomics config file or preset (presets: {', '.join(preset_names())})"
            )
        source = str(path)
        text = path.read_text("utf-8")
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MetatrackError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    return validate_config(cfg, source)

"""Radiomics configuration: a YAML file checked against a JSON schema, plus built-in presets.

A configuration is a plain dict (see ``SCHEMA``). Spacings are (z, y, x) in mm; a ``null`` entry keeps that
axis's native spacing (e.g. ``[null, 2, 2]`` for IBSI configuration B's in-plane resampling).

An optional ``filter:`` section (IBSI 2) names a convolutional filter; its ``families`` are computed on the filter's
response map of the interpolated image (re-segmentation still reads the unfiltered intensities), tagged
``<tag>_<feature>`` when the section has a ``tag`` (plain IBSI tags otherwise, as the IBSI 2 reference values name
them). The config's own ``families`` stay on the unfiltered image; ``families: []`` leaves only filtered features.
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
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
_BOOL = {"type": "boolean"}

#: parameters each filter kind requires (IBSI 2 names: support in voxels, sizes in mm, angles in degrees)
FILTER_REQUIRED: dict[str, list[str]] = {
    "mean": ["support"],
    "log": ["sigma_mm"],
    "laws": ["kernel"],
    "gabor": ["sigma_mm", "wavelength_mm", "gamma"],
    "wavelet": ["wavelet", "subband"],
    "simoncelli": [],
}
FILTER_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "required": ["kind"],
    "properties": {
        "kind": {"enum": list(FILTER_REQUIRED)},
        "mode": {"enum": ["2D", "3D"]},
        "boundary": {"enum": ["constant", "nearest", "periodic", "mirror"]},
        "tag": {"type": "string", "pattern": "^[A-Za-z0-9.]+$"},
        "families": {
            "type": "array",
            "items": {"enum": [f for f in ALL_FAMILIES if f != "morph"]},
            "uniqueItems": True,
        },
        "rotation_invariant": _BOOL,
        "pooling": {"enum": ["average", "max"]},
        "support": {"type": "integer", "minimum": 1, "multipleOf": 1},
        "sigma_mm": _POSITIVE,
        "truncate": _POSITIVE,
        "kernel": {"type": "string", "pattern": "^([LESWR][35]){2,3}$"},
        "energy_distance": {"oneOf": [{"type": "null"}, {"type": "integer", "minimum": 1}]},
        "wavelength_mm": _POSITIVE,
        "gamma": _POSITIVE,
        "theta_deg": {"type": "number"},
        "theta_step_deg": {"type": "number", "exclusiveMinimum": 0, "maximum": 180},
        "orthogonal_planes": _BOOL,
        "wavelet": {"enum": ["haar", "db2", "db3", "coif1"]},
        "subband": {"type": "string", "pattern": "^[LH]{2,3}$"},
        "level": {"type": "integer", "minimum": 1, "maximum": 6},
        "riesz_order": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 3},
    },
    "allOf": [
        {"if": {"properties": {"kind": {"const": kind}}}, "then": {"required": required}}
        for kind, required in FILTER_REQUIRED.items()
        if required
    ],
}
_FILTER_DEFAULTS: dict[str, Any] = {
    "mode": "3D",
    "boundary": "mirror",
    "tag": None,
    "families": ["stat"],
    "rotation_invariant": False,
    "pooling": "average",
    "truncate": 4.0,
    "energy_distance": None,
    "theta_deg": 0.0,
    "theta_step_deg": 22.5,
    "orthogonal_planes": True,
    "level": 1,
    "riesz_order": None,
}

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
        "filter": FILTER_SCHEMA,
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
    "filter": None,
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
    if out["filter"] is not None:
        out["filter"] = _check_filter({**_FILTER_DEFAULTS, **out["filter"]}, source)
    return out


def _check_filter(spec: dict[str, Any], source: str) -> dict[str, Any]:
    """The cross-field rules of a ``filter:`` section that the schema cannot state."""
    n_axes = 2 if spec["mode"] == "2D" else 3

    def bad(field: str, why: str) -> MetatrackError:
        return MetatrackError(f"{source}: radiomics config field 'filter/{field}': {why}")

    if spec["kind"] == "laws" and len(spec["kernel"]) != 2 * n_axes:
        raise bad("kernel", f"'{spec['kernel']}' needs {n_axes} 1D kernels in {spec['mode']} (e.g. E5L5S5 or L5E5)")
    if spec["kind"] == "wavelet" and len(spec["subband"]) != n_axes:
        raise bad("subband", f"'{spec['subband']}' needs {n_axes} letters of L and H in {spec['mode']}")
    if spec["riesz_order"] is not None:
        if spec["kind"] not in ("log", "simoncelli"):
            raise bad("riesz_order", f"a Riesz transform applies to log or simoncelli, not {spec['kind']}")
        if len(spec["riesz_order"]) != n_axes or sum(spec["riesz_order"]) == 0:
            raise bad("riesz_order", f"{spec['riesz_order']} needs {n_axes} orders (x, y[, z]), not all zero")
    if spec["kind"] == "gabor" and spec["rotation_invariant"] and (180.0 / spec["theta_step_deg"]) % 1 > 1e-9:
        raise bad("theta_step_deg", f"{spec['theta_step_deg']} does not divide 180 degrees")
    return spec


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

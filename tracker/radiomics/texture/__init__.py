"""IBSI texture feature families on discretised grey levels.

``texture_tasks`` gives the families as independent calls (the radiomics extractor runs them side by side);
``texture_features`` runs them in turn. Each family lives in its own module (``glcm``, ``glrlm``, ``glszm``,
``gldzm``, ``ngtdm``, ``ngldm``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tracker.errors import MetatrackError
from tracker.radiomics.texture import glcm, gldzm, glrlm, glszm, ngldm, ngtdm
from tracker.radiomics.texture.aggregate import suffixes_for
from tracker.radiomics.texture.neighbourhood import build_neighbourhood
from tracker.radiomics.texture.zones import label_zones

__all__ = ["FAMILIES", "MODES", "texture_feature_names", "texture_features", "texture_tasks"]

MODES = ("2D", "3D")
_MODULES = {"cm": glcm, "rlm": glrlm, "szm": glszm, "dzm": gldzm, "ngt": ngtdm, "ngl": ngldm}
FAMILIES: tuple[str, ...] = tuple(_MODULES)


def texture_feature_names(mode: str, families: Sequence[str] = FAMILIES) -> list[str]:
    """The fixed, ordered list of IBSI tags ``texture_features`` returns for ``mode`` and ``families``."""
    _check_mode_families(mode, families)
    names: list[str] = []
    for fam in families:
        mod = _MODULES[fam]
        for sfx in suffixes_for(mode, mod.DIRECTIONAL):
            names.extend(f"{fam}_{name}_{sfx}" for name in mod.FEATURE_NAMES)
    return names


def texture_features(
    levels: np.ndarray,
    roi: np.ndarray,
    n_levels: int,
    *,
    mode: str,
    morph_roi: np.ndarray | None = None,
    families: Sequence[str] = FAMILIES,
) -> dict[str, float]:
    """Compute IBSI texture features of a discretised ROI.

    Parameters
    ----------
    levels : (z, y, x) integer grey levels, 1..n_levels inside ``roi`` (ignored outside).
    roi : (z, y, x) bool intensity ROI (after re-segmentation).
    n_levels : number of grey levels N_g; matrices are N_g wide even when levels are missing.
    mode : "2D" (slice-wise: ``_2D_avg/_2D_comb/_2_5D_avg/_2_5D_comb`` and ``_2D/_2_5D``) or "3D"
        (``_3D_avg/_3D_comb`` and ``_3D``).
    morph_roi : (z, y, x) bool morphological ROI for the GLDZM distance map; defaults to ``roi``.
    families : subset of ``("cm", "rlm", "szm", "dzm", "ngt", "ngl")``.

    Returns
    -------
    dict mapping IBSI tags (e.g. ``cm_joint_max_3D_avg``) to floats; NaN where a feature is undefined.
    """
    out = dict.fromkeys(texture_feature_names(mode, families), float("nan"))
    for task in texture_tasks(levels, roi, n_levels, mode=mode, morph_roi=morph_roi, families=families):
        out.update({key: float(value) for key, value in task().items()})
    return out


def texture_tasks(
    levels: np.ndarray,
    roi: np.ndarray,
    n_levels: int,
    *,
    mode: str,
    morph_roi: np.ndarray | None = None,
    families: Sequence[str] = FAMILIES,
) -> list[Callable[[], dict[str, float]]]:
    """``texture_features`` as independent calls (one per family; GLSZM and GLDZM share their zones) to run
    side by side on threads; tags a call leaves out are undefined (NaN). The neighbourhood that every family
    reads is built here, before the calls are returned; an empty ROI gives no calls."""
    _check_mode_families(mode, families)
    levels = np.asarray(levels)
    roi = np.asarray(roi, dtype=bool)
    morph = roi if morph_roi is None else np.asarray(morph_roi, dtype=bool)
    _check_inputs(levels, roi, morph, n_levels)
    if not roi.any():
        return []
    hood = build_neighbourhood(levels, roi, int(n_levels), mode, morph)

    def zone_families() -> dict[str, float]:
        zones = label_zones(hood)
        out: dict[str, float] = {}
        if "szm" in families:
            out.update(glszm.glszm_features(hood, zones))
        if "dzm" in families:
            out.update(gldzm.gldzm_features(hood, zones))
        return out

    calls: dict[str, Callable[[], dict[str, float]]] = {
        "cm": lambda: glcm.glcm_features(hood),
        "rlm": lambda: glrlm.glrlm_features(hood),
        "ngt": lambda: ngtdm.ngtdm_features(hood),
        "ngl": lambda: ngldm.ngldm_features(hood),
    }
    tasks = [calls[fam] for fam in families if fam in calls]
    if "szm" in families or "dzm" in families:
        tasks.insert(0, zone_families)
    return tasks


def _check_mode_families(mode: str, families: Sequence[str]) -> None:
    if mode not in MODES:
        raise MetatrackError(f"texture mode {mode!r} is not supported; expected one of {MODES}")
    unknown = [f for f in families if f not in _MODULES]
    if unknown:
        raise MetatrackError(f"texture families {unknown} are not known; expected a subset of {FAMILIES}")


def _check_inputs(levels: np.ndarray, roi: np.ndarray, morph: np.ndarray, n_levels: int) -> None:
    if levels.ndim != 3 or levels.shape != roi.shape or morph.shape != roi.shape:
        raise MetatrackError(
            f"texture input shapes differ or are not 3-D: levels {levels.shape}, roi {roi.shape}, "
            f"morph_roi {morph.shape}"
        )
    if int(n_levels) < 1:
        raise MetatrackError(f"texture n_levels is {n_levels}; expected a positive integer")
    inside = levels[roi]
    if inside.size and not np.all(np.isfinite(inside)):
        raise MetatrackError("texture levels inside the ROI contain NaN/inf; discretise before texture")
    if inside.size and (not np.issubdtype(inside.dtype, np.integer) and np.any(inside != np.round(inside))):
        raise MetatrackError("texture levels inside the ROI are not integers; discretise before texture")
    if inside.size and (inside.min() < 1 or inside.max() > n_levels):
        raise MetatrackError(
            f"texture levels inside the ROI span {inside.min()}..{inside.max()}; expected 1..{n_levels}"
        )

"""IBSI 1 diagnostic values: image and ROI geometry and intensities at each processing step.

These are the ``Diagnostics-*`` rows of the IBSI reference tables. They are not features (``extract`` does not
return them); they help find where a processing step differs from the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracker.radiomics.preprocess import grid_axis, prepare

_AXES = ("z", "y", "x")  # array order; IBSI tags name x, y, z


def _dims(prefix: str, shape: tuple[int, ...], suffix: str) -> dict[str, float]:
    return {f"{prefix}_{ax}_{suffix}": float(n) for ax, n in zip(_AXES, shape, strict=True)}


def _bbox_dims(mask: np.ndarray) -> tuple[int, ...]:
    if not mask.any():
        return (0, 0, 0)
    idx = np.argwhere(mask)
    return tuple(int(v) for v in idx.max(axis=0) - idx.min(axis=0) + 1)


def _roi_block(
    suffix: str, grid_shape: tuple[int, ...], image: np.ndarray, int_mask: np.ndarray, morph_mask: np.ndarray
) -> dict[str, float]:
    out = _dims("int_mask_dim", grid_shape, suffix)
    out |= _dims("int_mask_bb_dim", _bbox_dims(int_mask), suffix)
    out |= _dims("morph_mask_bb_dim", _bbox_dims(morph_mask), suffix)
    out[f"int_mask_vox_count_{suffix}"] = float(int_mask.sum())
    out[f"morph_mask_vox_count_{suffix}"] = float(morph_mask.sum())
    vals = image[int_mask]
    if vals.size:
        out[f"int_mask_mean_int_{suffix}"] = float(vals.mean())
        out[f"int_mask_min_int_{suffix}"] = float(vals.min())
        out[f"int_mask_max_int_{suffix}"] = float(vals.max())
    return out


def diagnostics(
    image: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float], cfg: dict[str, Any]
) -> dict[str, float]:
    """IBSI diagnostic values (tags as in the reference tables) for ``image``/``mask`` under ``cfg``.

    Interpolated-image values need the whole image on the new grid, so this is slower than ``extract``.
    """
    img = np.asarray(image, dtype=np.float64)
    roi = np.asarray(mask).astype(bool)
    out = _dims("img_dim", img.shape, "init_img")
    out |= {f"vox_dim_{ax}_init_img": float(s) for ax, s in zip(_AXES, spacing, strict=True)}
    out |= {"mean_int_init_img": img.mean(), "min_int_init_img": img.min(), "max_int_init_img": img.max()}
    out |= _roi_block("init_roi", img.shape, img, roi, roi)

    no_reseg = {**cfg, "resegmentation": {"range": None, "outlier_sd": None}}
    whole = prepare(img, np.ones(img.shape, bool), spacing, no_reseg)
    grid_shape = whole.image.shape
    out |= _dims("img_dim", grid_shape, "interp_img")
    out |= {f"vox_dim_{ax}_interp_img": float(s) for ax, s in zip(_AXES, whole.spacing, strict=True)}
    out |= {
        "mean_int_interp_img": float(whole.image.mean()),
        "min_int_interp_img": float(whole.image.min()),
        "max_int_interp_img": float(whole.image.max()),
    }
    res = cfg["resampling"]
    new_spacing = res["spacing"] if res is not None else [None, None, None]
    grid_shape = tuple(grid_axis(n, float(s), t)[0] for n, s, t in zip(img.shape, spacing, new_spacing, strict=True))
    interp = prepare(img, roi, spacing, no_reseg)
    out |= _roi_block("interp_roi", grid_shape, interp.image, interp.morph_mask, interp.morph_mask)
    reseg = prepare(img, roi, spacing, cfg)
    out |= _roi_block("reseg_roi", grid_shape, reseg.image, reseg.int_mask, reseg.morph_mask)
    return {k: float(v) for k, v in out.items()}

"""IBSI intensity histogram (``ih_*``) and intensity-volume histogram (``ivh_*``) features."""

from __future__ import annotations

from typing import Any

import numpy as np

from tracker.radiomics.intensity import distribution_features, sorted_values
from tracker.radiomics.preprocess import discretise, lower_bound

#: intensity step assumed when the IVH uses undiscretised intensities (e.g. integer HU)
IVH_UNIT_STEP = 1.0


def histogram_features(levels: np.ndarray, n_levels: int) -> dict[str, float]:
    """IBSI 3.4 intensity histogram features of discretised grey levels 1..n_levels."""
    g = np.asarray(levels, dtype=np.int64)
    if g.size == 0:
        return {}
    out = distribution_features(g, "ih")
    n_g = max(int(n_levels), int(g.max()))
    hist = np.bincount(g, minlength=n_g + 1)[1:].astype(np.float64)
    p = hist / g.size
    nz = p[p > 0]
    out["ih_mode"] = float(np.argmax(hist) + 1)
    out["ih_entropy"] = float(-np.sum(nz * np.log2(nz)))
    out["ih_uniformity"] = float(np.sum(nz**2))
    if n_g >= 2:
        grad = np.gradient(hist)  # central differences inside, one-sided at both ends (IBSI 3.4.20)
        out["ih_max_grad"] = float(grad.max())
        out["ih_max_grad_g"] = float(np.argmax(grad) + 1)
        out["ih_min_grad"] = float(grad.min())
        out["ih_min_grad_g"] = float(np.argmin(grad) + 1)
    return out


def _ivh_grid(values: np.ndarray, ivh: dict[str, Any], cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """IVH intensities of the voxels and the set of discrete intensities G (sorted)."""
    method = ivh["method"]
    rng = cfg["resegmentation"]["range"]
    if method == "fixed_bin_number":
        levels, n = discretise(values, ivh, cfg)
        return levels.astype(np.float64), np.arange(1, n + 1, dtype=np.float64)
    if method == "fixed_bin_size":
        width = float(ivh["bin_width"])
        lo = lower_bound(cfg, ivh, values)
        levels = np.floor((values - lo) / width) + 1
        top = values.max() if rng is None or rng[1] is None else float(rng[1])
        n = int(np.floor((top - lo) / width)) + 1
        centres = lo + (np.arange(1, n + 1) - 0.5) * width
        return lo + (levels - 0.5) * width, centres
    g_min = values.min() if rng is None or rng[0] is None else float(rng[0])
    g_max = values.max() if rng is None or rng[1] is None else float(rng[1])
    n = round((g_max - g_min) / IVH_UNIT_STEP) + 1
    return values, g_min + IVH_UNIT_STEP * np.arange(n)


def ivh_features(values: np.ndarray, cfg: dict[str, Any]) -> dict[str, float]:
    """IBSI 3.5 intensity-volume histogram features of the intensity-mask intensities."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {}
    # the IVH intensity is a non-decreasing function of the intensity: mapping sorted intensities gives the sorted
    # IVH intensities
    xs, grid = _ivh_grid(sorted_values(x), cfg["ivh"], cfg)
    # V(i): fraction of the volume with intensity >= i
    vol = 1.0 - np.searchsorted(xs, grid - 1e-9 * max(1.0, abs(grid).max()), side="left") / xs.size
    span = grid[-1] - grid[0]
    gamma = (grid - grid[0]) / span if span > 0 else np.zeros_like(grid)

    def v_at(frac: float) -> float:
        sel = vol[gamma >= frac]
        return float(sel.max()) if sel.size else 0.0

    def i_at(frac: float) -> float:
        sel = grid[vol <= frac]
        return float(sel.min()) if sel.size else float(grid[-1] + (grid[1] - grid[0] if grid.size > 1 else 1))

    out = {
        "ivh_v10": v_at(0.10),
        "ivh_v90": v_at(0.90),
        "ivh_i10": i_at(0.10),
        "ivh_i90": i_at(0.90),
    }
    out["ivh_diff_v10_v90"] = out["ivh_v10"] - out["ivh_v90"]
    out["ivh_diff_i10_i90"] = out["ivh_i10"] - out["ivh_i90"]
    out["ivh_auc"] = float(np.trapezoid(vol, gamma)) if grid.size > 1 else float("nan")
    return out

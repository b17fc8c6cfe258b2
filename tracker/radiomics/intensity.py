"""IBSI intensity-based statistical features (``stat_*``) of the ROI intensities."""

from __future__ import annotations

import numpy as np


def _moments(x: np.ndarray) -> tuple[float, float, float, float]:
    mu = float(x.mean())
    d = x - mu
    d2 = d * d
    var = float(np.mean(d2))
    if var > 0:
        skew = float(np.mean(d2 * d) / var**1.5)
        kurt = float(np.mean(d2 * d2) / var**2 - 3.0)
    else:
        skew = kurt = float("nan")
    return mu, var, skew, kurt


def sorted_values(x: np.ndarray) -> np.ndarray:
    """``np.sort(x)`` of a 1-D float64 array; by counting when the values are integers of a modest range
    (HU, grey levels), which is several times faster than a comparison sort."""
    if x.size == 0:
        return np.sort(x)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 4 * x.size + 4096 and np.array_equal(x, np.round(x)):
        counts = np.bincount((x - lo).astype(np.int64))
        return np.repeat(np.arange(counts.size, dtype=np.float64) + lo, counts)
    return np.sort(x)


def distribution_features(x: np.ndarray, prefix: str) -> dict[str, float]:
    """Features shared by ``stat_`` (intensities) and ``ih_`` (grey levels): moments, quantiles, dispersion.

    Variance, skewness and (excess) kurtosis use population moments, as IBSI defines them.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {}
    mu, var, skew, kurt = _moments(x)
    p10, p25, p50, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    inner = x[(x >= p10) & (x <= p90)]
    out = {
        "mean": mu,
        "var": var,
        "skew": skew,
        "kurt": kurt,
        "median": float(p50),
        "min": float(x.min()),
        "p10": float(p10),
        "p90": float(p90),
        "max": float(x.max()),
        "iqr": float(p75 - p25),
        "range": float(x.max() - x.min()),
        "mad": float(np.mean(np.abs(x - mu))),
        "rmad": float(np.mean(np.abs(inner - inner.mean()))) if inner.size else float("nan"),
        "medad": float(np.mean(np.abs(x - p50))),
        "cov": float(np.sqrt(var) / mu) if mu != 0 else float("nan"),
        "qcod": float((p75 - p25) / (p75 + p25)) if (p75 + p25) != 0 else float("nan"),
    }
    return {f"{prefix}_{k}": v for k, v in out.items()}


def statistics_features(values: np.ndarray) -> dict[str, float]:
    """IBSI 3.3 intensity-based statistics of the intensity-mask voxels (18 features)."""
    x = np.asarray(values, dtype=np.float64)
    out = distribution_features(x, "stat")
    if x.size:
        out["stat_energy"] = float(np.sum(x**2))
        out["stat_rms"] = float(np.sqrt(np.mean(x**2)))
    return out

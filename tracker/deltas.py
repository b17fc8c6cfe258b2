"""Delta-radiomics: changes of lesion features along a track, and patient-level burden features with their changes.

Pure computation on plain dictionaries of feature values (tag -> value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: days of the period that rates are expressed per: ``change_per_30d`` and ``max_track_growth_30d``
#: (a fixed 30 days, not a calendar month)
RATE_PERIOD_DAYS = 30.0
# Lesion features aggregated per patient (volume-weighted mean over the scan's lesions). A small, interpretable set:
# intensity level and spread, heterogeneity (entropy, texture), and shape.
PATIENT_AGGREGATE_TAGS: tuple[str, ...] = (
    "stat_mean",
    "stat_var",
    "stat_skew",
    "ih_entropy",
    "ih_uniformity",
    "cm_contrast_3D_comb",
    "cm_joint_entr_3D_comb",
    "szm_zsnu_norm_3D",
    "morph_sphericity",
)
# Patient features whose changes become features too.
PATIENT_DELTA_TAGS: tuple[str, ...] = ("total_volume_mm3", "lesion_count", "recist_sum_mm", "max_volume_mm3")
#: mm3 added to both volumes of a track's growth ratio, so that a few-voxel lesion's noise does not dominate
GROWTH_VOLUME_EPS_MM3 = 100.0
#: a track counts as growing above this volume ratio (segmentation noise alone moves volumes by ~10 %)
GROWING_VOLUME_RATIO = 1.2


@dataclass(frozen=True)
class FeatureChange:
    """Change of a value against a reference: absolute, relative (None when the reference is 0), per 30 days."""

    abs_change: float | None
    rel_change: float | None
    change_per_30d: float | None


_NO_CHANGE = FeatureChange(None, None, None)


def change(value: float | None, reference: float | None, days: float) -> FeatureChange:
    """The change of `value` against `reference` observed `days` apart."""
    if value is None or reference is None or not (math.isfinite(value) and math.isfinite(reference)):
        return _NO_CHANGE
    diff = value - reference
    rel = diff / abs(reference) if reference != 0 else None
    per30 = diff / (days / RATE_PERIOD_DAYS) if days > 0 else None
    return FeatureChange(diff, rel, per30)


def track_deltas(
    now: Mapping[str, float | None], reference: Mapping[str, float | None], days: float
) -> dict[str, FeatureChange]:
    """Change of every feature a lesion has now against its value at the reference scan."""
    return {tag: change(v, reference.get(tag), days) for tag, v in now.items() if tag in reference}


def volume_weighted_mean(values: Sequence[float | None], volumes: Sequence[float]) -> float | None:
    """Mean of the finite values weighted by lesion volume; None when there are none."""
    pairs = [(v, w) for v, w in zip(values, volumes, strict=True) if v is not None and math.isfinite(v) and w > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total > 0 else None


def track_growth(continuing: Sequence[tuple[float, float, float]]) -> dict[str, float | None]:
    """Mixed response across the tracks that continue at this scan.

    Parameters
    ----------
    continuing : (volume now, volume at the track's previous sighting, days between) per continuing track (mm3)

    Returns
    -------
    ``growing_volume_mm3``: today's volume of the tracks whose volume ratio (each plus eps =
    ``GROWTH_VOLUME_EPS_MM3``) exceeds ``GROWING_VOLUME_RATIO``, 0 without tracks; ``max_track_growth_30d``: the
    fastest track's log((v + eps) / (v_prev + eps)) per 30 days, None without tracks (nothing to compare).
    A lesion that grows while the total shrinks is hidden in the burden: these two show it.
    """
    eps = GROWTH_VOLUME_EPS_MM3
    ratios = [((v + eps) / (prev + eps), v, days) for v, prev, days in continuing]
    growing = sum(v for ratio, v, _ in ratios if ratio > GROWING_VOLUME_RATIO)
    rates = [math.log(ratio) * RATE_PERIOD_DAYS / max(days, 1.0) for ratio, _, days in ratios]
    return {"growing_volume_mm3": float(growing), "max_track_growth_30d": max(rates) if rates else None}


def patient_features(
    volumes_mm3: Sequence[float],
    lesion_features: Sequence[Mapping[str, float | None]],
    *,
    new_lesions: int,
    vanished_tracks: int,
    recist_sum_mm: float | None,
    days_from_baseline: float,
    continuing: Sequence[tuple[float, float, float]] = (),
    aggregate_tags: Sequence[str] = PATIENT_AGGREGATE_TAGS,
) -> dict[str, float | None]:
    """Patient-level values at one scan: burden, counts, RECIST sum, track growth (``track_growth`` of
    ``continuing``), volume-weighted lesion features."""
    out: dict[str, float | None] = {
        "days_from_baseline": float(days_from_baseline),
        "lesion_count": float(len(volumes_mm3)),
        "new_lesion_count": float(new_lesions),
        "vanished_track_count": float(vanished_tracks),
        "total_volume_mm3": float(sum(volumes_mm3)),
        "max_volume_mm3": float(max(volumes_mm3)) if volumes_mm3 else 0.0,
        "recist_sum_mm": recist_sum_mm,
        **track_growth(continuing),
    }
    if lesion_features:
        for tag in aggregate_tags:
            out[f"vw_{tag}"] = volume_weighted_mean([f.get(tag) for f in lesion_features], volumes_mm3)
    else:
        out.update({f"vw_{tag}": None for tag in aggregate_tags})
    return out


def patient_deltas(
    now: Mapping[str, float | None],
    previous: Mapping[str, float | None] | None,
    baseline: Mapping[str, float | None] | None,
    *,
    days_since_previous: float,
    days_since_baseline: float,
    tags: Sequence[str] = PATIENT_DELTA_TAGS,
) -> dict[str, float | None]:
    """Changes of patient features since the previous scan (absolute, per 30 days) and since baseline (relative)."""
    out: dict[str, float | None] = {}
    for tag in [*tags, *(t for t in now if t.startswith("vw_"))]:
        prev = change(now.get(tag), previous.get(tag), days_since_previous) if previous else _NO_CHANGE
        base = change(now.get(tag), baseline.get(tag), days_since_baseline) if baseline else _NO_CHANGE
        out[f"d_prev_{tag}"] = prev.abs_change
        out[f"d_prev30_{tag}"] = prev.change_per_30d
        out[f"rel_base_{tag}"] = base.rel_change
    new_total = now.get("new_lesion_count") or 0.0
    out["cum_new_lesion_count"] = new_total + ((previous or {}).get("cum_new_lesion_count") or 0.0)
    return out

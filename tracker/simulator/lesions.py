"""Lesion shapes (unions of perturbed ellipsoids) and their size/heterogeneity trajectories.

A lesion is described in the anatomical (baseline physical) frame by blobs; each blob is an ellipsoid (semi-axes
``axes`` mm, rotation ``angles`` rad, centre ``offset`` mm from the lesion centre) whose radius is modulated by a
few low-order cosine terms over the direction sphere. A point p is inside blob b when its normalised radius
rho_b(p) < 1, inside the lesion when min_b rho_b(p) < 1. All axes and offsets scale with the size factor
s(t) = (V(t)/V0)^(1/3), where V(t)/V0 = exp(-decay tau) + exp(growth tau) - 1 (Stein's tumour growth-inhibition
model, tau = days since onset; the regrowth term starts ``lag_days`` after onset, 0 unless stated). A "bridge"
blob (split lesions) is additionally thinned by a factor that falls linearly to 0 at ``split_day``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

D_VISIBLE_MM = 3.0  # a lesion with nominal diameter below this is absent at that time
D_MAX_MM = 50.0  # growth saturates at this nominal diameter
HET_HU = 18.0  # texture amplitude (HU) per unit of heterogeneity
NECROTIC_HU = {"liver": 8.0, "lung": 4.0}
MAX_NECROSIS = 0.7
BRIDGE_MIN = 0.05  # a bridge blob thinner than this fraction is gone
DAYS_PER_YEAR = 365.25
SPLIT_SEPARATION = 1.6  # lobe centre distance from the lesion centre, in lobe radii (gap 1.2 radii)
MEASURE_POINTS_PER_RADIUS = 24.0  # fine-grid density for true volumes/centroids (< 1 % volume error)


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation R = Rz(c) Ry(b) Rx(a) for angles (a, b, c) in radians."""
    a, b, c = (float(v) for v in angles)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def volume_ratio(lesion: dict[str, Any], t: np.ndarray | float) -> np.ndarray:
    """V(t)/V(onset) of the nominal lesion volume (0 before onset), capped at D_MAX_MM."""
    tau = np.asarray(t, dtype=float) - lesion["onset_day"]
    taup = np.maximum(tau, 0.0)
    regrow = np.maximum(taup - lesion.get("lag_days", 0.0), 0.0)
    ratio = np.exp(-lesion["decay"] * taup) + np.exp(np.minimum(lesion["growth"] * regrow, 50.0)) - 1.0
    cap = (D_MAX_MM / lesion["d0_mm"]) ** 3
    ratio = np.clip(ratio, 0.0, cap)
    return np.where(tau < 0, 0.0, ratio)


def nominal_diameter(lesion: dict[str, Any], t: np.ndarray | float) -> np.ndarray:
    """Nominal (equivalent-sphere) diameter in mm at day t; 0 when absent (before onset or below visibility)."""
    d = lesion["d0_mm"] * np.cbrt(volume_ratio(lesion, t))
    return np.where(d >= D_VISIBLE_MM, d, 0.0)


def nominal_volume(lesion: dict[str, Any], t: np.ndarray | float) -> np.ndarray:
    """Nominal volume in mm3 at day t (0 when absent)."""
    return np.pi / 6.0 * nominal_diameter(lesion, t) ** 3


def heterogeneity(lesion: dict[str, Any], t: np.ndarray | float) -> np.ndarray:
    """Texture heterogeneity (unitless, texture sd = HET_HU * het) at day t."""
    tau = np.maximum(np.asarray(t, dtype=float) - lesion["onset_day"], 0.0)
    return np.clip(lesion["het0"] + lesion["het_rate"] * tau / DAYS_PER_YEAR, 0.05, 2.0)


def necrosis(lesion: dict[str, Any], t: np.ndarray | float) -> np.ndarray:
    """Necrotic core fraction of the normalised radius at day t."""
    tau = np.maximum(np.asarray(t, dtype=float) - lesion["onset_day"], 0.0)
    return np.clip(lesion["nec0"] + lesion["nec_rate"] * tau / DAYS_PER_YEAR, 0.0, MAX_NECROSIS)


def size_factor(lesion: dict[str, Any], t: float) -> float:
    """Geometric scale of the blobs at day t (0 when absent)."""
    return float(nominal_diameter(lesion, t)) / lesion["d0_mm"]


def bridge_factor(lesion: dict[str, Any], t: float) -> float:
    """Extra scale of bridge blobs: 1 at onset, 0 at ``split_day``."""
    split_day = lesion.get("split_day")
    if not split_day:
        return 1.0
    return float(np.clip(1.0 - (t - lesion["onset_day"]) / split_day, 0.0, 1.0))


def _blob_rho(blob: dict[str, Any], local_scale: float, rel: np.ndarray) -> np.ndarray:
    """Normalised radius of points ``rel`` (N,3, mm relative to the lesion centre) for one blob."""
    rot = rotation_matrix(np.asarray(blob["angles"]))
    axes = np.asarray(blob["axes"]) * local_scale
    loc = (rel - np.asarray(blob["offset"]) * local_scale) @ rot
    loc = loc / axes
    r = np.sqrt(np.einsum("ij,ij->i", loc, loc))
    unit = loc / np.maximum(r, 1e-9)[:, None]
    pert = np.ones_like(r)
    for k, amp, phase in zip(blob["pert_k"], blob["pert_amp"], blob["pert_phase"], strict=True):
        pert += amp * np.cos(unit @ np.asarray(k) + phase)
    return r / pert


def lesion_rho(lesion: dict[str, Any], center: np.ndarray, pts: np.ndarray, t: float) -> np.ndarray:
    """Normalised radius min_b rho_b of anatomical points ``pts`` (N,3 mm, x,y,z); < 1 means inside.

    Returns +inf everywhere when the lesion is absent at day t.
    """
    s = size_factor(lesion, t)
    rho = np.full(len(pts), np.inf)
    if s <= 0:
        return rho
    rel = pts - np.asarray(center)[None, :]
    bf = bridge_factor(lesion, t)
    for blob in lesion["blobs"]:
        if blob.get("bridge"):
            if bf < BRIDGE_MIN:
                continue
            # a bridge thins across, but keeps its length
            thin = dict(blob, axes=[blob["axes"][0], blob["axes"][1] * bf, blob["axes"][2] * bf])
            rho = np.minimum(rho, _blob_rho(thin, s, rel))
        else:
            rho = np.minimum(rho, _blob_rho(blob, s, rel))
    return rho


def lesion_extent(lesion: dict[str, Any], t: float) -> float:
    """An upper bound (mm) of the distance from the lesion centre to any of its points at day t."""
    s = size_factor(lesion, t)
    ext = 0.0
    for blob in lesion["blobs"]:
        amp = float(np.sum(np.abs(blob["pert_amp"])))
        reach = np.linalg.norm(blob["offset"]) + max(blob["axes"]) * (1.0 + amp) / max(1.0 - amp, 0.5)
        ext = max(ext, reach * s)
    return ext


def _random_pert(rng: np.random.Generator, n_terms: int, amp_max: float) -> dict[str, list]:
    ks, amps, phases = [], [], []
    for _ in range(n_terms):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        ks.append((direction * rng.uniform(1.0, 3.0)).tolist())
        amps.append(float(rng.uniform(0.0, amp_max)))
        phases.append(float(rng.uniform(0, 2 * np.pi)))
    return {"pert_k": ks, "pert_amp": amps, "pert_phase": phases}


def make_blobs(rng: np.random.Generator, d0_mm: float, kind: str) -> list[dict[str, Any]]:
    """Random blob set for a lesion of nominal diameter ``d0_mm``.

    ``kind``: "regular" (perturbed ellipsoid with 0-2 satellite lobes), "round" (near-sphere, used for lesions
    that must merge predictably), "split" (two lobes joined by a bridge).
    """
    r0 = d0_mm / 2.0
    if kind == "round":
        ratios = rng.uniform(0.92, 1.08, size=3)
        ratios /= np.cbrt(np.prod(ratios))
        blob = {"offset": [0.0, 0.0, 0.0], "axes": (r0 * ratios).tolist(), "angles": rng.uniform(0, np.pi, 3).tolist()}
        blob.update(_random_pert(rng, 3, 0.04))
        return [blob]
    if kind == "split":
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        lobe_r = r0 * 0.62
        sep = lobe_r * SPLIT_SEPARATION
        blobs = []
        for sign in (-1.0, 1.0):
            lobe = {"offset": (sign * sep * direction).tolist(), "axes": [lobe_r] * 3, "angles": [0.0, 0.0, 0.0]}
            lobe.update(_random_pert(rng, 2, 0.05))
            blobs.append(lobe)
        # bridge: long axis (first axis) along ``direction``
        yaw = float(np.arctan2(direction[1], direction[0]))
        pitch = float(-np.arcsin(np.clip(direction[2], -1, 1)))
        bridge = {
            "offset": [0.0, 0.0, 0.0],
            "axes": [sep, lobe_r * 0.75, lobe_r * 0.75],
            "angles": [0.0, pitch, yaw],
            "bridge": True,
            "pert_k": [],
            "pert_amp": [],
            "pert_phase": [],
        }
        blobs.append(bridge)
        return blobs
    ratios = rng.uniform(0.7, 1.3, size=3)
    ratios /= np.cbrt(np.prod(ratios))
    main = {"offset": [0.0, 0.0, 0.0], "axes": (r0 * ratios).tolist(), "angles": rng.uniform(0, np.pi, 3).tolist()}
    main.update(_random_pert(rng, int(rng.integers(2, 5)), 0.1))
    blobs = [main]
    for _ in range(int(rng.integers(0, 3))):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        sat_r = r0 * rng.uniform(0.35, 0.6)
        sat = {
            "offset": (direction * r0 * rng.uniform(0.5, 0.8)).tolist(),
            "axes": [sat_r] * 3,
            "angles": [0.0, 0.0, 0.0],
        }
        sat.update(_random_pert(rng, 2, 0.08))
        blobs.append(sat)
    return blobs


def _measure_grid(lesion: dict[str, Any], t: float, points_per_radius: float) -> tuple[float, np.ndarray] | None:
    """Volume and centroid offset (from the lesion centre) by counting fine-grid points inside."""
    ext = lesion_extent(lesion, t)
    step = ext / points_per_radius
    ax = np.arange(-ext + step / 2, ext, step)
    gx, gy, gz = np.meshgrid(ax, ax, ax, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
    inside = lesion_rho(lesion, np.zeros(3), pts, t) < 1.0
    n = int(inside.sum())
    if n == 0:
        return None
    return n * step**3, pts[inside].mean(axis=0)


def measure_lesion(
    lesion: dict[str, Any], center: np.ndarray, t: float, cache: dict[str, Any] | None = None
) -> tuple[float, np.ndarray] | None:
    """Volume (mm3) and centroid (anatomical mm, x,y,z) of the lesion at day t; None when absent.

    Lesions without a bridge scale homogeneously with s(t), so they are measured once at onset (s = 1) and
    scaled: volume * s^3, centroid offset * s. ``cache`` (a dict kept by the caller) holds that measurement.
    """
    s = size_factor(lesion, t)
    if s <= 0:
        return None
    has_bridge = any(b.get("bridge") for b in lesion["blobs"])
    if has_bridge:
        ref = _measure_grid(lesion, t, MEASURE_POINTS_PER_RADIUS)
        scale = 1.0
    else:
        key = lesion["id"]
        if cache is None or key not in cache:
            ref = _measure_grid(lesion, lesion["onset_day"], MEASURE_POINTS_PER_RADIUS)
            if cache is not None:
                cache[key] = ref
        else:
            ref = cache[key]
        scale = s
    if ref is None:
        return None
    vol, off = ref
    return vol * scale**3, np.asarray(center, dtype=float) + off * scale

"""Between-scan motion: rigid repositioning plus a smooth non-rigid (Gaussian radial-basis) deformation.

For scan k, psi_k maps a physical point q of scan k (LPS mm, x,y,z) to the anatomical (= baseline physical)
point p = psi_k(q) = r + sum_j v_j exp(-|r - c_j|^2 / (2 s_j^2)), with r = R (q - centre) + centre + translation
(R = Rz Ry Rx of ``angles_deg``). Scan k's intensity at q is anatomy(p). The baseline has psi_0 = identity.
The inverse p -> q is computed by fixed-point iteration on the non-rigid part.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracker.simulator.lesions import rotation_matrix

INVERSE_TOL_MM = 1e-6
INVERSE_MAX_ITER = 200
N_RBF = (3, 6)
BREATHING_SIGMA_MM = (60.0, 90.0)
RBF_SIGMA_MM = (45.0, 80.0)


def identity_motion() -> dict[str, Any]:
    """The identity transform (baseline scans)."""
    return {
        "centre": [0.0, 0.0, 0.0],
        "angles_deg": [0.0, 0.0, 0.0],
        "translation": [0.0, 0.0, 0.0],
        "rbf_centres": [],
        "rbf_sigmas": [],
        "rbf_vectors": [],
    }


def sample_motion(
    rng: np.random.Generator,
    body_points: np.ndarray,
    centre: np.ndarray,
    diaphragm: np.ndarray,
    translation_mm: float,
    rotation_deg: float,
    nonrigid_max_mm: float,
) -> dict[str, Any]:
    """Random rigid + non-rigid motion; the non-rigid part's max over ``body_points`` is scaled to
    U(0.6, 1) * ``nonrigid_max_mm``."""
    translation = rng.normal(size=3)
    translation *= translation_mm * rng.uniform(0.5, 1.0) / np.linalg.norm(translation)
    angles = rng.uniform(-1.0, 1.0, size=3) * rotation_deg
    n = int(rng.integers(N_RBF[0], N_RBF[1] + 1))
    lo, hi = body_points.min(axis=0), body_points.max(axis=0)
    centres = [np.asarray(diaphragm, dtype=float)] + [rng.uniform(lo, hi) for _ in range(n - 1)]
    sigmas = [rng.uniform(*BREATHING_SIGMA_MM)] + [rng.uniform(*RBF_SIGMA_MM) for _ in range(n - 1)]
    # breathing: mostly cranio-caudal (z), some antero-posterior (y)
    vectors = [np.array([0.1 * rng.normal(), 0.4 * rng.normal(), rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.2)])]
    vectors += [rng.normal(size=3) * rng.uniform(0.3, 0.8) for _ in range(n - 1)]
    motion = {
        "centre": [float(v) for v in centre],
        "angles_deg": angles.tolist(),
        "translation": translation.tolist(),
        "rbf_centres": [list(map(float, c)) for c in centres],
        "rbf_sigmas": [float(s) for s in sigmas],
        "rbf_vectors": [list(map(float, v)) for v in vectors],
    }
    disp = np.linalg.norm(nonrigid_displacement(motion, body_points), axis=1)
    scale = nonrigid_max_mm * rng.uniform(0.6, 1.0) / max(float(disp.max()), 1e-9)
    motion["rbf_vectors"] = [[float(x) * scale for x in v] for v in motion["rbf_vectors"]]
    return motion


def nonrigid_displacement(motion: dict[str, Any], r: np.ndarray) -> np.ndarray:
    """The smooth displacement u(r) (N, 3) at rigidly-mapped points r (N, 3)."""
    r = np.asarray(r, dtype=float)
    out = np.zeros_like(r)
    for c, s, v in zip(motion["rbf_centres"], motion["rbf_sigmas"], motion["rbf_vectors"], strict=True):
        d2 = np.sum((r - np.asarray(c)) ** 2, axis=1)
        out += np.exp(-d2 / (2.0 * s * s))[:, None] * np.asarray(v)[None, :]
    return out


def _rigid(motion: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rot = rotation_matrix(np.deg2rad(motion["angles_deg"]))
    return rot, np.asarray(motion["centre"], dtype=float), np.asarray(motion["translation"], dtype=float)


def rigid_forward(motion: dict[str, Any], q: np.ndarray) -> np.ndarray:
    """r = R (q - centre) + centre + translation for points q (N, 3)."""
    rot, c, t = _rigid(motion)
    return (np.asarray(q, dtype=float) - c) @ rot.T + c + t


def to_anatomy(motion: dict[str, Any], q: np.ndarray) -> np.ndarray:
    """psi(q): scan points (N, 3) -> anatomical (baseline) points."""
    r = rigid_forward(motion, q)
    return r + nonrigid_displacement(motion, r)


def to_scan(motion: dict[str, Any], p: np.ndarray) -> np.ndarray:
    """psi^{-1}(p): anatomical (baseline) points (N, 3) -> scan points, by fixed-point iteration."""
    p = np.asarray(p, dtype=float)
    r = p.copy()
    for _ in range(INVERSE_MAX_ITER):
        r_new = p - nonrigid_displacement(motion, r)
        delta = float(np.max(np.abs(r_new - r))) if len(r) else 0.0
        r = r_new
        if delta < INVERSE_TOL_MM:
            break
    rot, c, t = _rigid(motion)
    return (r - c - t) @ rot + c


def anatomy_coords_on_grid(
    motion: dict[str, Any], xs: np.ndarray, ys: np.ndarray, zs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """psi on a whole grid given by its 1-D axes: three float32 (z, y, x) arrays of anatomical x, y, z.

    The rigid map preserves distances, so each radial basis function of r = rigid(q) is a Gaussian of q around
    rigid^{-1}(c), separable along the grid axes: no per-voxel exponentials are needed.
    """
    rot, c, t = _rigid(motion)
    x, y, z = xs[None, None, :] - c[0], ys[None, :, None] - c[1], zs[:, None, None] - c[2]
    out = []
    for row in range(3):
        lin = np.float32(rot[row, 0]) * x + np.float32(rot[row, 1]) * y
        out.append(lin + (np.float32(rot[row, 2]) * z + np.float32(c[row] + t[row])))
    centres = np.asarray(motion["rbf_centres"], dtype=float).reshape(-1, 3)
    if len(centres):
        q_centres = (centres - c - t) @ rot + c  # rigid^{-1}(c_j)
    for qc, s, v in zip(q_centres if len(centres) else [], motion["rbf_sigmas"], motion["rbf_vectors"], strict=True):
        gx = np.exp(-((xs - qc[0]) ** 2) / (2 * s * s)).astype(np.float32)[None, None, :]
        gy = np.exp(-((ys - qc[1]) ** 2) / (2 * s * s)).astype(np.float32)[None, :, None]
        gz = np.exp(-((zs - qc[2]) ** 2) / (2 * s * s)).astype(np.float32)[:, None, None]
        w = gz * gy * gx
        for axis in range(3):
            if v[axis] != 0.0:
                out[axis] += np.float32(v[axis]) * w
    return out[0], out[1], out[2]

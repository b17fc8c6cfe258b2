"""Synthetic CT-like baseline/follow-up pairs with a known deformation, for tests and benchmarks.

A stand-in for the cohort simulator where a registration test needs only one pair: an elliptic body of soft
tissue (40 HU) in air (-1000 HU) with two lungs (-850 HU), a liver (60 HU), a spine (700 HU) and small
random structures (vessels, nodules, calcifications), so that every region carries some texture.

Convention (the simulator's): ``psi`` maps a physical point q of the follow-up (LPS mm) to the baseline
physical point p = psi(q); ``landmarks_scan`` are points q in the follow-up body and ``landmarks_baseline``
the matching psi(q).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import SimpleITK as sitk

HU_AIR = -1000.0
HU_SOFT_TISSUE = 40.0
HU_LUNG = -850.0
HU_LIVER = 60.0
HU_BONE = 700.0
N_BLOBS_PER_LITRE = 25.0
N_CONTROL_POINTS = 6
DEFORMATION_SMOOTHING_CONTROL = 0.8


@dataclass
class PhantomPair:
    """A baseline, a follow-up and the truth that links them."""

    baseline: sitk.Image
    followup: sitk.Image
    landmarks_baseline: np.ndarray
    landmarks_scan: np.ndarray
    baseline_body: sitk.Image


def _grid_points(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Physical (x, y, z) points of a centred grid, array of shape (z, y, x, 3)."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return np.stack([xx, yy, zz], axis=-1)


def _make_image(array: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    extent = [(n - 1) * s for n, s in zip(array.shape[::-1], spacing[::-1], strict=True)]
    image.SetOrigin(tuple(-e / 2.0 for e in extent))
    return image


def _ellipsoid(points: np.ndarray, centre: tuple[float, float, float], radii: tuple[float, float, float]):
    d = (points - np.asarray(centre)) / np.asarray(radii)
    return np.einsum("...i,...i->...", d, d) <= 1.0


def render_body(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free CT-like volume (z, y, x) in HU and its body mask."""
    pts = _grid_points(shape, spacing)
    ext = np.array([(n - 1) * s for n, s in zip(shape[::-1], spacing[::-1], strict=True)])  # x, y, z
    half = ext / 2.0
    body_r = (0.44 * ext[0], 0.34 * ext[1], 0.62 * ext[2])
    body = _ellipsoid(pts, (0.0, 0.0, 0.0), body_r)
    vol = np.full(shape, HU_AIR, dtype=np.float32)
    vol[body] = HU_SOFT_TISSUE
    lung_r = (0.14 * ext[0], 0.2 * ext[1], 0.3 * ext[2])
    for side in (-1.0, 1.0):
        vol[_ellipsoid(pts, (side * 0.2 * ext[0], -0.02 * ext[1], 0.18 * ext[2]), lung_r)] = HU_LUNG
    vol[_ellipsoid(pts, (-0.14 * ext[0], 0.0, -0.22 * ext[2]), (0.2 * ext[0], 0.16 * ext[1], 0.16 * ext[2]))] = HU_LIVER
    spine = ((pts[..., 0] / (0.05 * ext[0])) ** 2 + ((pts[..., 1] - 0.22 * ext[1]) / (0.05 * ext[1])) ** 2) <= 1
    vol[spine & body] = HU_BONE
    # Small random structures: vessels/nodules in lung and liver, calcifications in soft tissue.
    volume_litres = np.prod(ext) / 1e6
    n_blobs = int(N_BLOBS_PER_LITRE * volume_litres * 10)
    centres = rng.uniform(-half * 0.9, half * 0.9, size=(n_blobs, 3))
    radii = rng.uniform(2.0, 6.0, size=n_blobs)
    values = rng.choice([-400.0, 100.0, 250.0, -60.0, 400.0], size=n_blobs)
    spacing_xyz = np.asarray(spacing[::-1])
    origin = -half
    for c, r, v in zip(centres, radii, values, strict=True):
        lo = np.maximum(np.floor((c - r - origin) / spacing_xyz).astype(int), 0)
        hi = np.minimum(np.ceil((c + r - origin) / spacing_xyz).astype(int) + 1, np.asarray(shape[::-1]))
        if np.any(hi <= lo):
            continue
        sub = pts[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        inside = np.einsum("...i,...i->...", sub - c, sub - c) <= r * r
        inside &= body[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        vol[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]][inside] = v
    # Low-frequency texture inside the body (about +-15 HU).
    coarse = rng.normal(0.0, 1.0, size=(8, 8, 8))
    from scipy.ndimage import gaussian_filter, zoom

    texture = zoom(gaussian_filter(coarse, 1.0), np.asarray(shape) / 8.0, order=1)[: shape[0], : shape[1], : shape[2]]
    texture = 15.0 * texture / (np.abs(texture).max() + 1e-9)
    vol[body] += texture[body]
    return vol, body


def make_pair(
    shape: tuple[int, int, int] = (64, 64, 64),
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
    *,
    seed: int = 0,
    rotation_deg: float = 5.0,
    translation_mm: float = 6.0,
    deformation_mm: float = 10.0,
    followup_spacing: tuple[float, float, float] | None = None,
    noise_baseline: float = 10.0,
    noise_followup: float = 25.0,
    hu_offset: float = 30.0,
    n_landmarks: int = 200,
) -> PhantomPair:
    """Build a synthetic pair; shapes and spacings are (z, y, x), displacements in mm.

    ``deformation_mm`` is the largest magnitude of the smooth non-rigid part of psi.
    """
    from scipy.ndimage import gaussian_filter, zoom

    rng = np.random.default_rng(seed)
    vol, body = render_body(shape, spacing, rng)
    baseline_clean = _make_image(vol, spacing)
    fu_spacing = followup_spacing or spacing
    extent = np.asarray([(n - 1) * s for n, s in zip(shape, spacing, strict=True)])
    fu_shape = tuple(round(float(e) / s) + 1 for e, s in zip(extent, fu_spacing, strict=True))
    q = _grid_points(cast(tuple[int, int, int], fu_shape), fu_spacing)

    angles = np.deg2rad(rng.uniform(-1.0, 1.0, size=3) * rotation_deg)
    rot = sitk.Euler3DTransform((0.0, 0.0, 0.0), *angles)
    matrix = np.asarray(rot.GetMatrix()).reshape(3, 3)
    direction = rng.normal(size=3)
    t = translation_mm * direction / np.linalg.norm(direction)
    coarse = rng.normal(size=(3, N_CONTROL_POINTS, N_CONTROL_POINTS, N_CONTROL_POINTS))
    coarse = np.stack([gaussian_filter(c, DEFORMATION_SMOOTHING_CONTROL) for c in coarse])
    factors = np.asarray(fu_shape) / N_CONTROL_POINTS
    field = np.stack([zoom(c, factors, order=3)[: fu_shape[0], : fu_shape[1], : fu_shape[2]] for c in coarse], -1)
    field *= deformation_mm / (np.linalg.norm(field, axis=-1).max() + 1e-9)
    psi = q @ matrix.T + t + field
    disp = sitk.GetImageFromArray((psi - q).astype(np.float64), isVector=True)
    reference = _make_image(np.zeros(fu_shape, np.float32), fu_spacing)
    disp.CopyInformation(reference)
    psi_tx = sitk.DisplacementFieldTransform(disp)

    followup = sitk.Resample(baseline_clean, reference, psi_tx, sitk.sitkLinear, HU_AIR, sitk.sitkFloat32)
    fu_arr = sitk.GetArrayFromImage(followup)
    fu_arr = fu_arr + hu_offset + rng.normal(0.0, noise_followup, size=fu_arr.shape)
    followup_noisy = sitk.GetImageFromArray(fu_arr.astype(np.float32))
    followup_noisy.CopyInformation(reference)
    base_arr = vol + rng.normal(0.0, noise_baseline, size=vol.shape)
    baseline = _make_image(base_arr, spacing)

    # Landmarks: follow-up points whose image is well inside the baseline body.
    fu_body = sitk.GetArrayFromImage(
        sitk.Resample(_make_image(body.astype(np.float32), spacing), reference, psi_tx, sitk.sitkNearestNeighbor)
    )
    eroded = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(fu_body.astype(np.uint8)), [3, 3, 3]))
    candidates = np.argwhere(eroded > 0)
    pick = candidates[rng.choice(len(candidates), size=min(n_landmarks, len(candidates)), replace=False)]
    scan_pts = np.asarray([reference.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]]) for idx in pick])
    base_pts = np.asarray([psi_tx.TransformPoint(tuple(p)) for p in scan_pts])
    body_img = _make_image(body.astype(np.float32), spacing)
    return PhantomPair(baseline, followup_noisy, base_pts, scan_pts, sitk.Cast(body_img > 0, sitk.sitkUInt8))

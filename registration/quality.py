"""Registration quality: similarity, Jacobian statistics and the review decision."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

NCC_REVIEW_BELOW = 0.5
BODY_DICE_REVIEW_BELOW = 0.85
FOLDING_SHARE_REVIEW_ABOVE = 0.0005
AFFINE_SCALE_RANGE = (0.8, 1.25)
MIN_MASK_VOXELS = 100


def ncc(fixed: np.ndarray, moving: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two arrays (optionally inside a boolean mask), in [-1, 1]."""
    a = np.asarray(fixed, dtype=np.float64)
    b = np.asarray(moving, dtype=np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def jacobian_stats(field: sitk.Image | None, affine_det: float) -> dict[str, float]:
    """Determinant of the Jacobian of ``affine o (identity + field)`` over the field grid.

    Returns min, max, mean and the share of voxels with determinant <= 0 (folding).
    """
    if field is None:
        det = np.array([affine_det])
    else:
        det = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field)) * affine_det
    return {
        "jacobian_min": float(det.min()),
        "jacobian_max": float(det.max()),
        "jacobian_mean": float(det.mean()),
        "folding_share": float(np.mean(det <= 0.0)),
    }


def affine_scales(matrix: np.ndarray) -> np.ndarray:
    """Singular values of a 3x3 linear part: the scale factors along the principal axes."""
    return np.linalg.svd(np.asarray(matrix, dtype=np.float64).reshape(3, 3), compute_uv=False)


def review(metrics: dict[str, float | str | int]) -> list[str]:
    """Reasons a registration needs a human look (empty when it looks fine)."""
    reasons: list[str] = []
    if float(metrics["body_voxels"]) < MIN_MASK_VOXELS:
        reasons.append(f"fixed body mask nearly empty ({int(metrics['body_voxels'])} voxels)")
    if float(metrics["ncc_after"]) < NCC_REVIEW_BELOW:
        value = float(metrics["ncc_after"])
        reasons.append(f"low similarity after registration (NCC {value:.2f} < {NCC_REVIEW_BELOW})")
    if float(metrics["ncc_after"]) < float(metrics["ncc_before"]):
        reasons.append(
            f"similarity decreased (NCC {float(metrics['ncc_before']):.2f} -> {float(metrics['ncc_after']):.2f})"
        )
    if float(metrics["body_dice"]) < BODY_DICE_REVIEW_BELOW:
        reasons.append(f"body outlines disagree (Dice {float(metrics['body_dice']):.2f} < {BODY_DICE_REVIEW_BELOW})")
    if float(metrics["folding_share"]) > FOLDING_SHARE_REVIEW_ABOVE:
        reasons.append(f"folding in {100 * float(metrics['folding_share']):.3f}% of voxels")
    low, high = AFFINE_SCALE_RANGE
    for key in ("affine_scale_min", "affine_scale_max"):
        if not low <= float(metrics[key]) <= high:
            reasons.append(f"implausible affine scale {float(metrics[key]):.2f} (expected {low}-{high})")
    if float(metrics["affine_det"]) <= 0:
        reasons.append("affine transform mirrors the image (determinant <= 0)")
    return reasons

"""IBSI 1 compliance of the texture families on the digital phantom and on CT configuration A."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import VENDORED_IBSI, shared_ibsi
from tracker.radiomics.texture import FAMILIES, texture_features

SHARED_IBSI = shared_ibsi()
PHANTOM_LEVELS = 6
# Configuration A (IBSI 1): 2D, no resampling, re-segmentation [-500, 400] HU, fixed bin size 25 HU.
CONFIG_A_RANGE = (-500.0, 400.0)
CONFIG_A_BIN_WIDTH = 25.0


def _find(name: str) -> Path | None:
    """First file called ``name`` under the vendored test data, else under the shared IBSI folder."""
    for root in (VENDORED_IBSI, SHARED_IBSI):
        if root.is_dir():
            hits = sorted(root.rglob(name))
            if hits:
                return hits[0]
    return None


def _phantom_file(kind: str) -> Path | None:
    for root in (VENDORED_IBSI, SHARED_IBSI):
        if not root.is_dir():
            continue
        paths = (str(p) for p in root.rglob("*.nii.gz"))
        hits = sorted(Path(p) for p in paths if "digital_phantom" in p and f"/{kind}/" in p)
        if hits:
            return hits[0]
    return None


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _reference(csv_name: str) -> dict[str, tuple[float, float]]:
    path = _find(csv_name)
    if path is None:
        pytest.skip(f"IBSI reference table {csv_name} not found under {VENDORED_IBSI} or {SHARED_IBSI}")
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        r["tag"]: (float(r["reference value"]), float(r["tolerance"]))
        for r in rows
        if r["tag"].split("_")[0] in FAMILIES and r["reference value"].strip()
    }


def _round3(value: float) -> float:
    """Round to 3 significant digits, as the IBSI comparison prescribes."""
    return float(f"{value:.3g}") if np.isfinite(value) and value != 0 else value


def _misses(result: dict[str, float], reference: dict[str, tuple[float, float]]) -> list[str]:
    misses = []
    for tag, (ref, tol) in reference.items():
        value = result.get(tag, float("nan"))
        if not abs(_round3(value) - ref) <= tol:
            misses.append(f"{tag}: got {value!r}, reference {ref} ± {tol}")
    for line in misses:
        print("MISS", line)
    return misses


def test_digital_phantom_all_texture_tags_match() -> None:
    reference = _reference("ibsi_1_reference_values_digital_phantom.csv")
    image_path, mask_path = _phantom_file("image"), _phantom_file("mask")
    if image_path is None or mask_path is None:
        pytest.skip("IBSI digital phantom NIfTI files not found")
    levels = np.round(_read(image_path)).astype(np.int64)
    roi = _read(mask_path) > 0
    assert levels.shape == (4, 4, 5) and int(roi.sum()) == 74
    result = {}
    for mode in ("2D", "3D"):
        result.update(texture_features(levels, roi, PHANTOM_LEVELS, mode=mode))
    assert len(reference) == 408
    assert set(reference) <= set(result)
    assert _misses(result, reference) == []


def test_ct_phantom_config_a_all_texture_tags_match() -> None:
    reference = _reference("ibsi_1_reference_values_config_A.csv")
    image_path = SHARED_IBSI / "ibsi_1/ct_phantom/nifti/image/phantom.nii.gz"
    mask_path = SHARED_IBSI / "ibsi_1/ct_phantom/nifti/mask/mask.nii.gz"
    if not (image_path.is_file() and mask_path.is_file()):
        pytest.skip("IBSI CT phantom not found")
    hu = np.round(_read(image_path).astype(np.float64))
    morph = np.round(_read(mask_path).astype(np.float64)) > 0
    low, high = CONFIG_A_RANGE
    roi = morph & (hu >= low) & (hu <= high)
    levels = np.floor((hu - low) / CONFIG_A_BIN_WIDTH).astype(np.int64) + 1
    n_levels = int(levels[roi].max())
    result = texture_features(np.where(roi, levels, 0), roi, n_levels, mode="2D", morph_roi=morph)
    assert len(reference) == 272
    assert _misses(result, reference) == []

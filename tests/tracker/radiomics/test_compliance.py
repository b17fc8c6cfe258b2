"""IBSI 1 compliance: all digital-phantom values and >= 98 % of each CT configuration A-E in tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import VENDORED_IBSI, shared_ibsi
from tracker.radiomics import extract, load_config
from tracker.radiomics.compliance import TEXTURE_PREFIXES, score

DATA = VENDORED_IBSI
REQUIRED_CT_RATE = 0.98


def _ct_dir() -> Path:
    return shared_ibsi() / "ibsi_1" / "ct_phantom" / "nifti"


def _read(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), tuple(float(s) for s in reversed(img.GetSpacing()))


@pytest.fixture(scope="module")
def ct_phantom() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    folder = _ct_dir()
    if not (folder / "image" / "phantom.nii.gz").is_file():
        pytest.skip(f"IBSI CT phantom (CC BY-NC, not vendored) not found under {folder}; set METATRACK_IBSI_DATA")
    image, spacing = _read(folder / "image" / "phantom.nii.gz")
    mask, _ = _read(folder / "mask" / "mask.nii.gz")
    # IBSI: convert to float and round to integers before any processing
    return np.round(image.astype(np.float64)), mask > 0, spacing


def test_digital_phantom_every_value_within_tolerance() -> None:
    image, spacing = _read(DATA / "digital_phantom" / "image" / "phantom.nii.gz")
    mask, _ = _read(DATA / "digital_phantom" / "mask" / "mask.nii.gz")
    fs = extract(image.astype(np.float64), mask > 0, spacing, load_config("ibsi_dp"))
    report = score("ibsi_dp", fs.values)
    print(report.summary())
    assert "texture not available" not in report.not_scored.values(), "texture rows were not scored"
    assert report.scored == 482
    assert report.misses == [], report.summary()


@pytest.mark.parametrize("config", ["ibsi_A", "ibsi_B", "ibsi_C", "ibsi_D", "ibsi_E"])
def test_ct_phantom_configuration(config: str, ct_phantom) -> None:
    image, mask, spacing = ct_phantom
    fs = extract(image, mask, spacing, load_config(config))
    report = score(config, fs.values)
    print(report.summary())
    assert not any(t.startswith(TEXTURE_PREFIXES) for t, why in report.not_scored.items()), "texture not scored"
    assert report.scored == (346 if config in ("ibsi_A", "ibsi_B") else 210)
    assert report.rate >= REQUIRED_CT_RATE, report.summary()


@pytest.mark.parametrize("config", ["ibsi_A", "ibsi_B", "ibsi_C", "ibsi_D", "ibsi_E"])
def test_ct_phantom_diagnostics(config: str, ct_phantom) -> None:
    """IBSI diagnostics rows (image/ROI sizes and intensities per step), scored apart from the features."""
    from tracker.radiomics.diagnostics import diagnostics

    image, mask, spacing = ct_phantom
    report = score(config, diagnostics(image, mask, spacing, load_config(config)), diagnostics=True)
    print(report.summary())
    assert report.scored == 60
    assert report.misses == [], report.summary()

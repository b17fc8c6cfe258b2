"""IBSI 2 compliance: the 33 phase-1 response maps and the 18 phase-2 filter ids of the CT phantom.

Each test computes its whole table, prints it (``pytest -s``) and fails naming every miss.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import shared_ibsi
from tracker.radiomics import extract, load_config
from tracker.radiomics.compliance import ComplianceReport, round_sig
from tracker.radiomics.filters import apply_filter

VENDORED = Path(__file__).resolve().parents[2] / "data" / "ibsi2"
#: IBSI 2 criterion: every voxel within 1 % of the consensus map's intensity range
MAP_TOLERANCE = 0.01
#: phase-1 test -> digital phantom (IBSI 2 manual, phase 1)
PHASE1: dict[str, str] = {
    **{t: "checkerboard" for t in ("1_a_1", "1_a_2", "1_a_3", "1_a_4", "2_b", "2_c", "3_b_1", "3_b_2", "3_b_3")},
    **{t: "checkerboard" for t in ("3_c_1", "3_c_2", "3_c_3", "7_a_1", "7_a_2", "8_a_1", "8_a_2", "8_a_3")},
    **{t: "impulse" for t in ("1_b_1", "2_a", "3_a_1", "3_a_2", "3_a_3", "4_a_1", "4_a_2", "5_a_1", "5_a_2", "9_a")},
    **{t: "sphere" for t in ("4_b_1", "4_b_2", "6_a_1", "6_a_2", "9_b_1")},
    "10_b_1": "pattern_1",
}
PHASE2_IDS = [f"{n}.{c}" for n in range(1, 10) for c in "AB"]


def _read(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    spacing = tuple(float(s) for s in reversed(img.GetSpacing()))
    return sitk.GetArrayFromImage(img).astype(np.float64), (spacing[0], spacing[1], spacing[2])


def _maps_dir() -> Path:
    folder = shared_ibsi() / "reference_values" / "ibsi_2" / "response_maps"
    if not (folder / "1_a_1-ValidCRM.nii.gz").is_file():
        pytest.skip(f"IBSI 2 consensus response maps (13 MB, not vendored) not found under {folder}")
    return folder


def phase1_row(test: str, maps: Path) -> tuple[float, str]:
    """Largest |ours - consensus| of one test as a fraction of the consensus map's range, and its table row."""
    image, spacing = _read(VENDORED / "digital_phantoms" / f"{PHASE1[test]}.nii.gz")
    reference, _ = _read(maps / f"{test}-ValidCRM.nii.gz")
    response = apply_filter(image, spacing, load_config(f"ibsi2_p1_{test}")["filter"])
    span = float(reference.max() - reference.min())
    error = float(np.abs(response - reference).max()) / span
    verdict = "ok" if error <= MAP_TOLERANCE else "MISS"
    return error, f"{test:7s} {PHASE1[test]:13s} max error {100 * error:8.5f} % of range {span:10.4g}  {verdict}"


@pytest.mark.slow
def test_phase1_all_33_response_maps_match_their_consensus_maps() -> None:
    maps = _maps_dir()
    rows = {test: phase1_row(test, maps) for test in PHASE1}
    print("\n".join(row for _, row in rows.values()))
    misses = [row for error, row in rows.values() if error > MAP_TOLERANCE]
    assert len(rows) == 33
    assert misses == [], "\n".join(misses)


def _phase2_reference() -> dict[str, dict[str, tuple[float, float]]]:
    out: dict[str, dict[str, tuple[float, float]]] = {}
    path = VENDORED / "reference_values" / "ibsi_2_phase2_reference_feature_values.csv"
    with path.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter=";"):
            if row["consensus_value"]:  # 8.B's quartile coefficient of dispersion has no consensus
                out.setdefault(row["filter_id"], {})[row["feature_tag"]] = (
                    float(row["consensus_value"]),
                    float(row["tolerance"]),
                )
    return out


@pytest.fixture(scope="module")
def ct_phantom() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    folder = shared_ibsi() / "ibsi_1" / "ct_phantom" / "nifti"
    if not (folder / "image" / "phantom.nii.gz").is_file():
        pytest.skip(f"IBSI CT phantom (CC BY-NC, not vendored) not found under {folder}; set METATRACK_IBSI_DATA")
    image, spacing = _read(folder / "image" / "phantom.nii.gz")
    mask, _ = _read(folder / "mask" / "mask.nii.gz")
    return np.round(image), mask > 0, spacing


def phase2_report(filter_id: str, ct: tuple[np.ndarray, np.ndarray, tuple[float, float, float]]) -> ComplianceReport:
    """One phase-2 filter id scored against the consensus values (3 significant digits, within tolerance)."""
    image, mask, spacing = ct
    preset = f"ibsi2_p2_{filter_id.replace('.', '')}"
    values = extract(image, mask, spacing, load_config(preset)).values
    report = ComplianceReport(filter_id)
    for tag, (reference, tolerance) in _phase2_reference()[filter_id].items():
        report.scored += 1
        if abs(round_sig(values[tag]) - reference) <= tolerance:
            report.passed += 1
        else:
            report.misses.append((tag, values[tag], reference, tolerance))
    return report


@pytest.mark.slow
def test_phase2_all_18_filter_ids_within_tolerance(ct_phantom) -> None:
    reports = [phase2_report(fid, ct_phantom) for fid in PHASE2_IDS]
    print("\n".join(r.summary() for r in reports))
    assert [r.config for r in reports] == list(_phase2_reference())
    assert sum(r.scored for r in reports) == 18 * 18 - 1
    missed = [r.summary() for r in reports if r.misses]
    assert missed == [], "\n".join(missed)

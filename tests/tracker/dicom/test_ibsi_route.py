"""The IBSI CT phantom read as DICOM + RTSTRUCT gives the NIfTI route's compliance counts, configurations A-E."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers import shared_ibsi
from tracker.imageio import MaskContext, read_image, read_mask
from tracker.radiomics import extract, load_config
from tracker.radiomics.compliance import score


def _arrays(image, mask) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    import SimpleITK as sitk

    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    # IBSI: convert to float and round to integers before any processing
    return np.round(sitk.GetArrayFromImage(image).astype(np.float64)), sitk.GetArrayFromImage(mask) > 0, spacing


@pytest.fixture(scope="module")
def routes() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    folder = shared_ibsi() / "ibsi_1" / "ct_phantom"
    if not (folder / "dicom" / "mask" / "DCM_RS_00060.dcm").is_file():
        pytest.skip(f"IBSI CT phantom (CC BY-NC, not vendored) not found under {folder}; set METATRACK_IBSI_DATA")
    dicom = read_image(folder / "dicom" / "image")
    rs = read_mask(folder / "dicom" / "mask" / "DCM_RS_00060.dcm", dicom.image, MaskContext(dicom.dicom, ("GTV-1",)))
    nifti = read_image(folder / "nifti" / "image" / "phantom.nii.gz")
    mask = read_mask(folder / "nifti" / "mask" / "mask.nii.gz", nifti.image)
    return {"dicom": _arrays(dicom.image, rs.mask), "nifti": _arrays(nifti.image, mask.mask)}


@pytest.mark.parametrize("config", ["ibsi_A", "ibsi_B", "ibsi_C", "ibsi_D", "ibsi_E"])
def test_dicom_route_scores_as_the_nifti_route(config: str, routes: dict[str, Any]) -> None:
    reports = {}
    for route, (image, mask, spacing) in routes.items():
        reports[route] = score(config, extract(image, mask, spacing, load_config(config)).values)
        print(route, reports[route].summary().splitlines()[0])
    dicom, nifti = reports["dicom"], reports["nifti"]
    assert (dicom.scored, dicom.passed) == (nifti.scored, nifti.passed)
    assert [m[0] for m in dicom.misses] == [m[0] for m in nifti.misses]


def test_features_command_on_dicom_and_rtstruct_gives_the_nifti_values(routes: dict[str, Any]) -> None:
    """`metatrack features DICOM_DIR RTSTRUCT.dcm --roi GTV-1 -c ibsi_C` against the NIfTI pair: the same values up
    to the float32 rounding of the NIfTI header's geometry (relative 1e-6)."""
    import json

    from typer.testing import CliRunner

    from cli.main import app

    folder = shared_ibsi() / "ibsi_1" / "ct_phantom"
    values = {}
    for route, args in {
        "dicom": [
            str(folder / "dicom" / "image"),
            str(folder / "dicom" / "mask" / "DCM_RS_00060.dcm"),
            "--roi",
            "GTV-1",
        ],
        "nifti": [str(folder / "nifti" / "image" / "phantom.nii.gz"), str(folder / "nifti" / "mask" / "mask.nii.gz")],
    }.items():
        result = CliRunner().invoke(app, ["--no-progress", "features", *args, "-c", "ibsi_C", "--format", "json"])
        assert result.exit_code == 0, result.output
        values[route] = {r["tag"]: r["value"] for r in json.loads(result.stdout)}
    assert values["dicom"].keys() == values["nifti"].keys() and len(values["dicom"]) > 200
    for tag, value in values["nifti"].items():
        assert values["dicom"][tag] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), tag

"""`metatrack filter` writes response maps; `metatrack features -c ibsi2_p2_*` gives IBSI 2 phase-2 features."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.helpers import shared_ibsi
from tracker.radiomics.filters.spatial import LAWS_KERNELS

IBSI2 = Path(__file__).resolve().parents[1] / "data" / "ibsi2"
IMPULSE = IBSI2 / "digital_phantoms" / "impulse.nii.gz"


def _read(path: Path) -> tuple[np.ndarray, object]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def test_filter_writes_the_laws_impulse_response_on_the_image_grid(tmp_path: Path) -> None:
    out = tmp_path / "response.nii.gz"
    res = CliRunner().invoke(app, ["filter", str(IMPULSE), "-c", "ibsi2_p1_3_a_1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    response, img = _read(out)
    impulse, src = _read(IMPULSE)
    assert response.dtype == np.float32 and response.shape == impulse.shape
    assert img.GetSpacing() == src.GetSpacing() and img.GetOrigin() == src.GetOrigin()
    z, y, x = (int(i[0]) for i in np.nonzero(impulse))
    truth = 255.0 * np.einsum("i,j,k->ijk", LAWS_KERNELS["S5"], LAWS_KERNELS["L5"], LAWS_KERNELS["E5"])
    np.testing.assert_allclose(response[z - 2 : z + 3, y - 2 : y + 3, x - 2 : x + 3], truth, rtol=1e-6, atol=1e-4)


def test_filter_resamples_to_the_config_grid_first(tmp_path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.full((8, 8, 8), 5.0))
    image.SetOrigin((10.0, 20.0, 30.0))
    src = tmp_path / "flat.nii.gz"
    sitk.WriteImage(image, str(src))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "name: mean2mm\nresampling: {spacing: [2, 2, 2]}\ndiscretisation: {method: none}\nivh: {method: none}\n"
        "texture: {modes: [3D]}\nfilter: {kind: mean, support: 3, boundary: nearest}\n"
    )
    out = tmp_path / "r.nrrd"
    res = CliRunner().invoke(app, ["filter", str(src), "-c", str(cfg), "-o", str(out)])
    assert res.exit_code == 0, res.output
    response, img = _read(out)
    # 8 voxels of 1 mm -> 4 of 2 mm sharing the centre: the first new voxel sits at old index 0.5
    assert response.shape == (4, 4, 4) and img.GetSpacing() == (2.0, 2.0, 2.0)
    assert img.GetOrigin() == (10.5, 20.5, 30.5)
    np.testing.assert_allclose(response, 5.0)


def test_filter_refuses_a_config_without_a_filter(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["filter", str(IMPULSE), "-c", "ibsi_dp", "-o", str(tmp_path / "r.nii.gz")])
    assert res.exit_code == 1
    assert "has no filter: section" in res.output
    assert not (tmp_path / "r.nii.gz").exists()


@pytest.mark.slow
def test_features_json_gives_the_phase2_tags_and_values() -> None:
    folder = shared_ibsi() / "ibsi_1" / "ct_phantom" / "nifti"
    if not (folder / "image" / "phantom.nii.gz").is_file():
        pytest.skip(f"IBSI CT phantom (CC BY-NC, not vendored) not found under {folder}; set METATRACK_IBSI_DATA")
    args = [str(folder / "image" / "phantom.nii.gz"), str(folder / "mask" / "mask.nii.gz")]
    res = CliRunner().invoke(app, ["features", *args, "-c", "ibsi2_p2_4B", "--format", "json"])
    assert res.exit_code == 0, res.output
    records = {r["tag"]: r for r in json.loads(res.stdout)}
    with (IBSI2 / "reference_values" / "ibsi_2_phase2_reference_feature_values.csv").open() as fh:
        reference = [r for r in csv.DictReader(fh, delimiter=";") if r["filter_id"] == "4.B"]
    assert sorted(records) == sorted(r["feature_tag"] for r in reference)
    for row in reference:
        value = float(f"{records[row['feature_tag']]['value']:.3g}")
        assert abs(value - float(row["consensus_value"])) <= float(row["tolerance"]), row
    assert {r["config"] for r in records.values()} == {"ibsi2_p2_4B"}

"""`metatrack features`: the pyradiomics-style entry point, checked against IBSI digital-phantom references."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from tests.helpers import VENDORED_IBSI

DATA = VENDORED_IBSI
IMAGE = DATA / "digital_phantom" / "image" / "phantom.nii.gz"
MASK = DATA / "digital_phantom" / "mask" / "mask.nii.gz"
REFERENCE = DATA / "reference_values" / "ibsi_1_reference_values_digital_phantom.csv"


def _reference() -> dict[str, tuple[float, float]]:
    with open(REFERENCE, encoding="utf-8-sig") as fh:
        return {
            r["tag"]: (float(r["reference value"]), float(r["tolerance"]))
            for r in csv.DictReader(fh)
            if r["reference value"] and r["tag"] and not r["tag"].startswith("Diagnostics")
        }


def _passes(value: float, ref: float, tol: float) -> bool:
    rounded = float(f"{value:.3g}")
    return abs(rounded - ref) <= tol


def test_single_pair_json_matches_ibsi(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["features", str(IMAGE), str(MASK), "--config", "ibsi_dp", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    records = {r["tag"]: r for r in json.loads(res.stdout)}
    ref = _reference()
    checked = [t for t in ref if t in records and records[t]["value"] is not None]
    assert len(checked) >= 0.95 * len(ref)
    misses = [t for t in checked if not _passes(records[t]["value"], *ref[t])]
    assert not misses, misses
    assert records["morph_volume"]["family"] == "Morphology" and records["morph_volume"]["config"] == "ibsi_dp"


def test_batch_csv_one_row_per_pair_and_errors(tmp_path: Path) -> None:
    batch = tmp_path / "pairs.csv"
    batch.write_text(f"image,mask,label\n{IMAGE},{MASK},1\n{IMAGE},{MASK},7\n")
    out = tmp_path / "features.csv"
    res = CliRunner().invoke(app, ["features", "--batch", str(batch), "-c", "ibsi_dp", "-o", str(out)])
    assert res.exit_code == 1 and "1 of 2 pairs failed" in res.stderr
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 2 and rows[0]["error"] == "" and "no voxels with label 7" in rows[1]["error"]
    assert abs(float(rows[0]["morph_vol_approx"]) - 592.0) < 1e-9


def test_batch_in_processes_gives_the_sequential_rows_in_order(tmp_path: Path) -> None:
    batch = tmp_path / "pairs.csv"
    batch.write_text(f"image,mask,label\n{IMAGE},{MASK},7\n{IMAGE},{MASK},1\n{IMAGE},{MASK},\n")
    outs = {}
    for jobs in ("1", "2"):
        outs[jobs] = tmp_path / f"features_{jobs}.csv"
        res = CliRunner().invoke(
            app, ["features", "--batch", str(batch), "-c", "ibsi_dp", "--jobs", jobs, "-o", str(outs[jobs])]
        )
        assert res.exit_code == 1 and "1 of 3 pairs failed" in res.stderr
    assert outs["1"].read_text() == outs["2"].read_text()
    rows = list(csv.DictReader(open(outs["2"])))
    assert [r["label"] for r in rows] == ["7", "1", ""] and "no voxels with label 7" in rows[0]["error"]
    assert float(rows[1]["morph_vol_approx"]) == float(rows[2]["morph_vol_approx"]) == 592.0


def test_body_mask_option_for_mr_zscore(tmp_path: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(5)
    zz, yy, xx = np.indices((24, 32, 32)) - np.array([11.5, 15.5, 15.5])[:, None, None, None]
    body = (zz / 10) ** 2 + (yy / 13) ** 2 + (xx / 13) ** 2 <= 1.0
    image = np.where(body, rng.normal(300.0, 40.0, body.shape), rng.normal(5.0, 3.0, body.shape))
    lesion = np.zeros(body.shape, np.uint8)
    lesion[10:14, 14:18, 14:18] = 1
    image[lesion > 0] = 500.0
    paths = {}
    for name, arr in (("image", image.astype(np.float32)), ("lesion", lesion), ("body", body.astype(np.uint8))):
        paths[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(paths[name]))
    ref = image.astype(np.float32).astype(np.float64)[body]
    expected = (500.0 - ref.mean()) / ref.std()
    for option in (str(paths["body"]), "auto"):
        res = CliRunner().invoke(
            app,
            ["features", str(paths["image"]), str(paths["lesion"]), "-c", "mr_default", "--format", "json",
             "--body-mask", option],
        )  # fmt: skip
        assert res.exit_code == 0, res.stderr
        value = {r["tag"]: r["value"] for r in json.loads(res.stdout)}["stat_mean"]
        # the Otsu foreground of this phantom is the body up to a few boundary voxels
        assert abs(value - expected) < (1e-9 if option != "auto" else 2e-3), option
    # a body mask with a config that does not z-score is refused, naming the image
    res = CliRunner().invoke(
        app, ["features", str(paths["image"]), str(paths["lesion"]), "-c", "ct_default", "--body-mask", "auto"]
    )
    assert res.exit_code == 1 and "only serves z-score" in res.stderr and "image.nii.gz" in res.stderr

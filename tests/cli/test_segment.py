"""`metatrack segment train|apply` on a small simulated cohort, and how the model commands treat the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cli_on_new_db, ingested_home
from tracker.simulator import SimulationConfig

N_SCANS = 6


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three simulated patients (baseline and one follow-up, 48 x 48 x 32 at 4 mm) ingested with their masks."""
    cfg = SimulationConfig(
        n_patients=3, seed=2, shape=(48, 48, 32), spacing=(4.0, 4.0, 4.0), min_followups=1, max_followups=1
    )
    return ingested_home(tmp_path_factory.mktemp("segment"), cfg, N_SCANS).parent


@pytest.fixture()
def cli(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    shutil.copytree(template / "template", home)
    monkeypatch.setenv("METATRACK_HOME", str(home))
    monkeypatch.delenv("METATRACK_DB", raising=False)
    with cli_on_new_db(f"sqlite:///{home / 'metatrack.db'}") as (run, _):
        yield run


def test_train_promote_apply(cli, template: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    info = json.loads(cli("segment", "train", "--epochs", "2", "--patch", "32", "--promote", "--json").stdout)
    assert info["model"] == "lesion-unet:1" and info["state"] == "promoted" and info["epochs"] == 2
    listed = json.loads(cli("model", "list", "--json").stdout)
    assert [(m["model"], m["endpoint"], m["state"], m["features"]) for m in listed] == [
        ("lesion-unet:1", "lesions", "promoted", 0)
    ]
    shown = json.loads(cli("model", "show", "lesion-unet:1", "--json").stdout)
    assert shown["hyperparameters"]["kind"] == "segmentation" and shown["hyperparameters"]["patch_mm"] == 32.0
    assert set(shown["versions"]) == {"torch", "monai"}

    image = sorted((template / "cohort").glob("*/*/image.nii.gz"))[0]
    mask, prob = tmp_path / "out" / "mask.nii.gz", tmp_path / "out" / "prob.nrrd"
    found = json.loads(
        cli("segment", "apply", str(image), "-o", str(mask), "--probability", str(prob), "--json").stdout
    )
    ref, out, p = (sitk.ReadImage(str(f)) for f in (image, mask, prob))
    for img in (out, p):
        assert img.GetSize() == ref.GetSize() and img.GetSpacing() == ref.GetSpacing()
        assert img.GetOrigin() == ref.GetOrigin() and img.GetDirection() == ref.GetDirection()
    labels = sitk.GetArrayFromImage(out)
    assert int(labels.max()) == len(found["lesions"]) and found["model"] == "lesion-unet:1"
    values = sitk.GetArrayFromImage(p)
    assert values.dtype == np.float32 and 0.0 <= values.min() and values.max() <= 1.0
    if found["lesions"]:  # every labelled voxel is above the model's threshold
        assert values[labels > 0].min() > found["threshold"]


def test_risk_commands_refuse_a_segmentation_model(cli, tmp_path: Path) -> None:
    cli("segment", "train", "--epochs", "1", "--patch", "32", "--promote")
    visits = tmp_path / "visits.csv"
    visits.write_text("patient_id,time_days,x\nA,0,1.0\n")
    err = cli("model", "predict", "--model", "lesion-unet", "--visits", str(visits), code=1).stderr
    assert len(err.strip().splitlines()) == 1 and "segmentation" in err
    assert "no promoted model" in cli("rescore").stderr.lower()


def test_train_needs_two_patients(home: Path, tmp_path: Path) -> None:
    with cli_on_new_db(f"sqlite:///{tmp_path / 'empty.db'}") as (run, _):
        err = run("segment", "train", code=1).stderr
        assert err.strip() == (
            "error: segment train: 0 patient(s) have a given lesion mask; at least 2 are needed "
            "(ingest scans with --mask first)"
        )
        image = tmp_path / "image.nii.gz"
        import SimpleITK as sitk

        sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(image))
        err = run("segment", "apply", str(image), "-o", str(tmp_path / "m.nii.gz"), code=1).stderr
        assert "no segmentation model is promoted: run `metatrack segment train --promote`" in err
        assert len(err.strip().splitlines()) == 1
        err = run("segment", "apply", str(image), "-o", str(tmp_path / "m.png"), code=1).stderr
        assert "m.png: write the map as .nii.gz" in err

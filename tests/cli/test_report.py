"""`metatrack report` end to end: a simulated patient processed for real, scored, reported and opened in Chromium.

One cohort is simulated, ingested, processed and scored once per module; the tests only read it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from db import migrate
from db.session import make_engine
from tests.helpers import browser_check
from tracker.records import Settings
from tracker.simulator import SimulationConfig, simulate_cohort
from tracker.store import FileStore
from tracker.workflows.ingest import ingest_many, read_manifest
from tracker.workflows.process import process_scans
from tracker.workflows.reports import patient_report_data
from tracker.workflows.views import timeline

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("report_cohort")]
PATIENT = "SIM001"
ENDPOINT = "metastasis"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data home (METATRACK_HOME) with one simulated patient processed and scored by a small model."""
    from tracker.demo_model import latent_training_tables
    from tracker.survival import SurvivalModelConfig, train_model
    from tracker.workflows import models
    from tracker.workflows.rescore import rescore_all

    root = tmp_path_factory.mktemp("report")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METATRACK_HOME", str(home))
        mp.delenv("METATRACK_DB", raising=False)
        home.mkdir()
        simulate_cohort(SimulationConfig(n_patients=1, seed=3, shape=(64, 64, 48), spacing=(4.0,) * 3), root / "sim")
        engine = make_engine(f"sqlite:///{home / 'metatrack.db'}")
        migrate.upgrade(engine)
        store = FileStore(home / "store")
        _, failed = ingest_many(engine, store, read_manifest(root / "sim" / "manifest.csv"))
        assert not failed
        report = process_scans(engine, store, Settings(preset="fast", shell_mm=3.0), root / "work")
        assert not report.failed
        models.add_events(engine, pd.read_csv(root / "sim" / "events.csv"), ENDPOINT, source="simulator")
        visits, events = latent_training_tables(60, 7)
        cfg = SurvivalModelConfig(max_epochs=3, min_epochs=1, hidden_size=4, n_ensemble=1)
        model = train_model(visits.dropna(axis=1, how="all"), events, cfg, seed=0)
        models.promote(engine, models.register(engine, store, model, "tiny", ENDPOINT)["model"])
        rescore_all(engine, store, ENDPOINT)
        engine.dispose()
        yield home


def _run(*args: str, code: int = 0):
    result = CliRunner().invoke(app, ["--no-progress", *args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


@pytest.fixture(scope="module")
def reports(home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("out")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METATRACK_HOME", str(home))
        _run("report", PATIENT, "-o", str(out / "patient.html"))
        _run("report", "--cohort", "-o", str(out / "cohort.html"))
    return {"patient": out / "patient.html", "cohort": out / "cohort.html", "folder": out}


@pytest.fixture()
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("METATRACK_HOME", str(home))
    monkeypatch.delenv("METATRACK_DB", raising=False)
    return home


def _timeline(home: Path) -> dict:
    return timeline(make_engine(f"sqlite:///{home / 'metatrack.db'}"), PATIENT)


def test_patient_report_lists_every_scan_with_its_recist_and_risk(reports: dict[str, Path], home: Path) -> None:
    page = reports["patient"].read_text(encoding="utf-8")
    tl = _timeline(home)
    rows = re.findall(r'<tr><td class="text">(\d{4}-\d\d-\d\d)</td><td>(\d+)</td>(.*?)</tr>', page)
    assert len(rows) == len(tl["scans"]) >= 3
    for (day, days, row), scan in zip(rows, tl["scans"], strict=True):
        assert (day, int(days)) == (scan["date"], scan["days_from_baseline"])
        assert f'<td class="text">{scan["recist"]["response"]}</td>' in row
        risk12 = next(r["risk"] for r in scan["risk"] if r["horizon_months"] == 12)
        assert f"<td>{risk12:.3g}</td>" in row
    assert "tiny:1" in page


def test_snapshots_are_centred_on_each_sighting(env: Path) -> None:
    """At a scan where the track is seen, the slice passes through its centroid: the contour surrounds the centre."""
    data = patient_report_data(make_engine(f"sqlite:///{env / 'metatrack.db'}"), FileStore(env / "store"), PATIENT)
    n_scans = len(_timeline(env)["scans"])
    assert data.snapshots and all(len(t.panels) == n_scans for t in data.snapshots)
    for track in data.snapshots:
        for panel in track.panels:
            if panel.change is None:
                assert not panel.lesion.any()
                continue
            rows, cols = np.nonzero(panel.lesion)
            centre = (panel.lesion.shape[0] - 1) / 2.0
            step = (panel.extent_mm[1] - panel.extent_mm[0]) / panel.lesion.shape[1]
            # the mask's in-plane centroid, against the 3-D centroid's projection: within a 4 mm voxel
            assert abs(rows.mean() - centre) * step < 4.0 and abs(cols.mean() - centre) * step < 4.0, track.number


def test_reports_open_in_chromium(reports: dict[str, Path]) -> None:
    for name in ("patient", "cohort"):
        seen = browser_check(reports[name], reports["folder"])
        assert seen["console"] == [], seen["console"]
        n_images = reports[name].read_text(encoding="utf-8").count("data:image/png;base64,")
        assert seen["images"] is not None and len(seen["images"]) == n_images >= 4
        assert all(min(sizes[1:]) > 0 for sizes in seen["images"]), seen["images"]


def test_figures_as_pdf(env: Path, tmp_path: Path) -> None:
    result = _run("report", PATIENT, "--figures", str(tmp_path / "figs"), "--format", "pdf", "--json")
    written = [Path(p) for p in json.loads(result.stdout)]
    names = {p.name for p in written}
    assert {f"{PATIENT}-spider.pdf", f"{PATIENT}-volumes.pdf", f"{PATIENT}-risk.pdf"} <= names
    assert all(p.read_bytes().startswith(b"%PDF") for p in written)


def test_cohort_figures_as_png(env: Path, tmp_path: Path) -> None:
    result = _run("report", "--cohort", "--figures", str(tmp_path), "--json")
    assert sorted(Path(p).name for p in json.loads(result.stdout)) == [
        "cohort-km-response.png",
        "cohort-km-risk.png",
        "cohort-swimmer.png",
        "cohort-waterfall.png",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["report", "-o", "x.html"],  # neither a patient nor --cohort
        ["report", PATIENT, "--cohort", "-o", "x.html"],  # both
        ["report", PATIENT],  # no output
        ["report", PATIENT, "-o", "x.html", "--figures", "f"],  # two outputs
        ["report", PATIENT, "--figures", "f", "--format", "svg"],  # not a choice
    ],
)
def test_usage_errors(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    _run(*args, code=2)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_line_and_writes_nothing(env: Path, tmp_path: Path) -> None:
    result = _run("report", "NOBODY", "-o", str(tmp_path / "x.html"), code=1)
    assert result.stderr.strip() == "error: unknown patient 'NOBODY'"
    result = _run("report", PATIENT, "-o", str(tmp_path / "missing" / "x.html"), code=1)
    assert len(result.stderr.strip().splitlines()) == 1 and "missing" in result.stderr
    assert list(tmp_path.iterdir()) == []

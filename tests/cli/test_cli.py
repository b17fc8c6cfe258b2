"""The CLI end to end on a coarse simulated cohort: simulate, ingest, patients, cohort in every format."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from cli.main import app


def test_simulate_ingest_patients_cohort(home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cohort"
    res = runner.invoke(
        app, ["simulate", str(out), "--patients", "2", "--seed", "5", "--spacing", "8", "--no-progress"]
    )
    assert res.exit_code == 0, res.stderr
    manifest = list(csv.DictReader(open(out / "manifest.csv")))
    truth = json.loads((out / "truth.json").read_text())
    assert {r["patient_id"] for r in manifest} == set(truth["patients"]) == {"SIM001", "SIM002"}
    res = runner.invoke(app, ["--no-progress", "ingest", "--manifest", str(out / "manifest.csv"), "--json"])
    assert res.exit_code == 0, res.stderr
    assert len(json.loads(res.stdout)["ingested"]) == len(manifest)
    assert (home / "metatrack.db").exists()  # the default database lives in the data home
    patients = json.loads(runner.invoke(app, ["patients", "--json"]).stdout)
    counts = {p["patient_id"]: p["scans"] for p in patients}
    assert counts == {pid: sum(r["patient_id"] == pid for r in manifest) for pid in counts}
    rows = json.loads(runner.invoke(app, ["cohort", "--json"]).stdout)
    assert len(rows) == len(manifest) and rows[0]["role"] == "baseline" and rows[0]["days_from_baseline"] == 0
    as_csv = list(csv.DictReader(io.StringIO(runner.invoke(app, ["cohort", "--format", "csv"]).stdout)))
    assert [r["date"] for r in as_csv] == [r["date"] for r in rows]
    parquet = tmp_path / "cohort.parquet"
    assert runner.invoke(app, ["cohort", "--format", "parquet", "-o", str(parquet)]).exit_code == 0
    assert pd.read_parquet(parquet)["patient_id"].tolist() == [r["patient_id"] for r in rows]
    res = runner.invoke(app, ["cohort", "--format", "parquet"])
    assert res.exit_code == 1 and "needs --output" in res.stderr


def test_help_imports_no_heavy_library() -> None:
    heavy = "('torch', 'ants', 'monai', 'SimpleITK', 'pandas')"
    code = f"import sys, cli.main; print(sorted(m for m in {heavy} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"

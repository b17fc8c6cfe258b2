"""Risk commands end to end on SQLite: model train/list/promote/show/predict, events import, train, rescore, jobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from db.models import ClinicalEvent, RiskScore
from db.repo import table_counts
from db.session import session_scope
from tests.helpers import FEATURES, cli_on_new_db, fill_cohort, synthetic_tables
from tracker.store import FileStore
from tracker.workflows.models import load


@pytest.fixture()
def cli(home: Path, tmp_path: Path):
    with cli_on_new_db(f"sqlite:///{tmp_path / 'cli.db'}") as run_and_engine:
        yield run_and_engine


def test_model_commands_round_trip(cli, tmp_path: Path, home: Path) -> None:
    run, engine = cli
    visits, events = synthetic_tables(80, seed=21)
    visits[["patient_id", "time_days", *FEATURES]].to_csv(tmp_path / "v.csv", index=False)
    events[["patient_id", "time_days", "event"]].to_csv(tmp_path / "e.csv", index=False)
    files = ["--visits", str(tmp_path / "v.csv"), "--events", str(tmp_path / "e.csv")]
    out = json.loads(run("model", "train", *files, "--epochs", "3", "--json").stdout)
    assert out["model"] == "rnn-metastasis:1" and out["n_patients"] == 80
    run("model", "promote", "rnn-metastasis:1")
    shown = json.loads(run("model", "show", "rnn-metastasis", "--json").stdout)
    assert shown["state"] == "promoted" and shown["features"] == out["features"]
    assert [r["model"] for r in json.loads(run("model", "list", "--json").stdout)] == ["rnn-metastasis:1"]
    horizons = ["--horizon", "12m", "--horizon", "2y"]
    pred = json.loads(run("model", "predict", "--model", "rnn-metastasis:1", *files[:2], *horizons, "--json").stdout)
    _, model = load(engine, FileStore(home / "store"), "rnn-metastasis:1")
    truth = model.risk_at(visits[["patient_id", "time_days", *FEATURES]], [12, 24])
    truth12 = truth[truth["horizon_months"] == 12].set_index("patient_id")["risk"]
    assert pred["horizons_months"] == [12, 24] and len(pred["predictions"]) == 80
    got = {r["patient_id"]: r["risk_12m"] for r in pred["predictions"]}
    np.testing.assert_allclose([got[p] for p in truth12.index], truth12.to_numpy(), rtol=1e-6)
    err = run("model", "promote", "rnn-metastasis:7", code=1).stderr
    assert err.strip() == "error: model 'rnn-metastasis:7' is not registered (see `metatrack model list`)"


def test_events_import_train_rescore_jobs(cli, tmp_path: Path) -> None:
    run, engine = cli
    visits, events = synthetic_tables(40, seed=22)
    fill_cohort(engine, visits)
    bad = events[["patient_id", "event", "event_date"]].copy()
    bad.loc[5, "patient_id"] = "UNKNOWN"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with session_scope(engine) as s:
        before = table_counts(s)
    err = run("events", "import", str(tmp_path / "bad.csv"), code=1).stderr
    assert "row 7" in err and "UNKNOWN" in err
    with session_scope(engine) as s:
        assert table_counts(s) == before
    events[["patient_id", "event", "event_date"]].to_csv(tmp_path / "ev.csv", index=False)
    assert json.loads(run("events", "import", str(tmp_path / "ev.csv"), "--json").stdout)["imported"] == 40
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(ClinicalEvent)) == 40  # events and censorings
    out = json.loads(run("train", "--epochs", "2", "--name", "db", "--json").stdout)
    assert out["model"] == "db:1" and out["n_patients"] == 40 and out["n_events"] == int(events["event"].sum())
    run("model", "promote", "db:1")
    first = json.loads(run("rescore", "--as-of", "2024-06-01", "--batch-size", "16", "--json").stdout)
    assert first["planned"] == 40 and first["jobs_done"] == 40 and first["batches"] == 3
    second = json.loads(run("rescore", "--as-of", "2024-06-01", "--json").stdout)
    assert second["planned"] == 0 and second["rows_written"] == 0
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(RiskScore)) == first["rows_written"]
    listed = json.loads(run("jobs", "list", "--json").stdout)
    assert listed["counts"] == {"queued": 0, "running": 0, "done": 40, "failed": 0}
    assert json.loads(run("jobs", "retry", "--all-failed", "--json").stdout) == {"requeued": 0}
    assert "only failed" in run("jobs", "retry", str(listed["jobs"][0]["id"]), code=1).stderr
    assert "--workers > 1 needs PostgreSQL" in run("rescore", "--workers", "2", code=1).stderr


def test_landmark_cox_kind_trains_registers_and_scores(cli, tmp_path: Path, home: Path) -> None:
    """`--kind landmark-cox`: registered with its kind, and its predictions rank the synthetic cohort's truth."""
    run, _ = cli
    visits, events = synthetic_tables(150, seed=22)
    visits[["patient_id", "time_days", *FEATURES]].to_csv(tmp_path / "v.csv", index=False)
    events[["patient_id", "time_days", "event"]].to_csv(tmp_path / "e.csv", index=False)
    files = ["--visits", str(tmp_path / "v.csv"), "--events", str(tmp_path / "e.csv")]
    out = json.loads(run("model", "train", *files, "--kind", "landmark-cox", "--json").stdout)
    assert out["model"] == "landmark-cox-metastasis:1"
    assert json.loads(run("model", "show", out["model"], "--json").stdout)["hyperparameters"]["kind"] == "landmark-cox"
    pred = json.loads(run("model", "predict", "--model", out["model"], files[0], files[1], "--json").stdout)
    risk = {p["patient_id"]: p["risk_12m"] for p in pred["predictions"]}
    # the cohort's hazard rises with the burden's slope: the risk must follow the slope measured from the visits
    slopes = {
        pid: np.polyfit(g["time_days"], g["burden_log"], 1)[0]
        for pid, g in visits.groupby("patient_id")
        if len(g) >= 3 and pid in risk
    }
    from scipy.stats import spearmanr

    test = spearmanr([risk[p] for p in slopes], list(slopes.values()))
    assert test.statistic > 0.25 and test.pvalue < 0.01  # measured slopes are noisy (0.2 per reading): ~0.37 seen
    bad = run("model", "train", *files, "--kind", "forest", code=1)
    assert "model kind 'forest' is unknown" in bad.stderr


def test_auto_kind_records_its_choice_calibration_and_predicts_intervals(cli, tmp_path: Path) -> None:
    """`--kind auto`: the inner-CV choice and reason, the calibration in `model show`, and `model predict --json`
    with lower <= risk <= upper beside each risk."""
    run, _ = cli
    visits, events = synthetic_tables(120, seed=23)
    visits[["patient_id", "time_days", *FEATURES]].to_csv(tmp_path / "v.csv", index=False)
    events[["patient_id", "time_days", "event"]].to_csv(tmp_path / "e.csv", index=False)
    files = ["--visits", str(tmp_path / "v.csv"), "--events", str(tmp_path / "e.csv")]
    out = json.loads(run("model", "train", *files, "--kind", "auto", "--epochs", "5", "--json").stdout)
    assert out["model"] == "auto-metastasis:1"
    assert out["inner_cv"]["chosen"] in ("landmark-cox", "rnn", "blend") and "IBS" in out["inner_cv"]["reason"]
    shown = json.loads(run("model", "show", out["model"], "--json").stdout)
    assert shown["hyperparameters"]["kind"] == "auto"
    after = [c for c in shown["calibration"] if c["when"] == "after" and c["horizon_months"] == 12.0]
    assert len(after) == 1 and len(after[0]["reliability"]) == 10
    pred = json.loads(run("model", "predict", "--model", out["model"], *files[:2], "--json").stdout)
    assert pred["interval_level"] == 0.9 and len(pred["predictions"]) == 120
    for p in pred["predictions"]:
        assert [r["horizon_months"] for r in p["risks"]] == [6.0, 12.0, 24.0]
        assert all(r["lower"] <= r["risk"] <= r["upper"] for r in p["risks"])
        assert p["risk_12m"] == p["risks"][1]["risk"]
    rnn = json.loads(run("model", "train", *files, "--epochs", "2", "--json").stdout)
    assert json.loads(run("model", "show", rnn["model"], "--json").stdout)["calibration"].startswith("none")

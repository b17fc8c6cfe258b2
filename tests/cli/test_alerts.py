"""`metatrack alerts` on SQLite and PostgreSQL: a threshold crossing and a rise fire once (also when the scans are
re-processed and the risks stay), an unchanged patient never, a RECIST response changed after re-processing once;
the same call lists the same alerts."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine, select, update

from db.models import RecistAssessment, RiskScore, Scan
from db.registry import promoted_model
from db.scores import upsert_scores
from db.session import session_scope
from tests.helpers import FEATURES, cli_on_new_db, fill_cohort, synthetic_tables

# designed 12-month risks per scan: A crosses 0.3 and rises 0.35 at its second scan, B never moves
RISKS = {"A": [0.10, 0.45, 0.50], "B": [0.20, 0.20, 0.20]}
DAYS = [date(2022, 1, 10), date(2022, 4, 10), date(2022, 7, 10)]
ALERT_ARGS = ("alerts", "--risk-above", "0.3", "--rise-above", "0.2", "--json")


@pytest.fixture()
def cli(db_url: str, home: Path):
    with cli_on_new_db(db_url) as run_and_engine:
        yield run_and_engine


def _cohort(run, engine: Engine, tmp_path: Path) -> dict[str, int]:
    """A landmark Cox model trained and promoted through the CLI; patients A and B with the designed risks."""
    visits, events = synthetic_tables(60, seed=41)
    visits[["patient_id", "time_days", *FEATURES]].to_csv(tmp_path / "v.csv", index=False)
    events[["patient_id", "time_days", "event"]].to_csv(tmp_path / "e.csv", index=False)
    files = ("--visits", str(tmp_path / "v.csv"), "--events", str(tmp_path / "e.csv"))
    run("model", "train", *files, "--kind", "landmark-cox", "--name", "cox")
    run("model", "promote", "cox:1")
    mine = pd.DataFrame(
        [
            {"patient_id": p, "scan_date": d, "time_days": (d - DAYS[0]).days, **dict.fromkeys(FEATURES, 0.0)}
            for p in RISKS
            for d in DAYS
        ]
    )
    ids = fill_cohort(engine, mine)
    with session_scope(engine) as s:
        mv = promoted_model(s, "metastasis")
        assert mv is not None
        scans = dict(s.execute(select(Scan.id, Scan.patient_id)).all())
        rows = pd.DataFrame(
            [
                {
                    "patient_id": ids[p],
                    "scan_id": next(k for k, v in scans.items() if v == ids[p]) + i,
                    "as_of_date": DAYS[i],
                    "model_version_id": mv.id,
                    "horizon_months": 12,
                    "risk": r,
                    "curve": None,
                    "input_fingerprint": "0" * 64,
                }
                for p, risks in RISKS.items()
                for i, r in enumerate(risks)
            ]
        )
        upsert_scores(s, rows, datetime.now(UTC))
    return ids


def test_risk_alerts_fire_once(cli, tmp_path: Path) -> None:
    run, engine = cli
    _cohort(run, engine, tmp_path)
    first = json.loads(run(*ALERT_ARGS).stdout)
    assert [(a["patient"], a["kind"], a["scan_date"], a["old"], a["new"]) for a in first] == [
        ("A", "risk-above", "2022-04-10", 0.10, 0.45),
        ("A", "rise", "2022-04-10", 0.10, 0.45),
    ]
    assert {a["previous_date"] for a in first} == {"2022-01-10"} and {a["reason"] for a in first} == {"scan-processed"}
    assert json.loads(run(*ALERT_ARGS).stdout) == first  # idempotent
    today = datetime.now(UTC).date()
    assert json.loads(run(*ALERT_ARGS, "--since", today.isoformat()).stdout) == first
    with session_scope(engine) as s:  # scored two days ago: not in a daily job's window from yesterday
        s.execute(update(RiskScore).values(computed_at=datetime.now(UTC) - timedelta(days=2)))
    assert json.loads(run(*ALERT_ARGS, "--since", (today - timedelta(days=1)).isoformat()).stdout) == []
    earlier = json.loads(run(*ALERT_ARGS, "--since", (today - timedelta(days=3)).isoformat()).stdout)
    assert [a | {"known_at": None} for a in earlier] == [a | {"known_at": None} for a in first]
    assert json.loads(run("alerts", "--risk-above", "0.6", "--json").stdout) == []
    err = run("alerts", "--risk-above", "3", code=1).stderr
    assert err.strip() == "error: --risk-above 3.0: a risk between 0 and 1 is expected"


def test_recist_change_fires_once(cli, tmp_path: Path) -> None:
    run, engine = cli
    ids = _cohort(run, engine, tmp_path)
    with session_scope(engine) as s:
        scans = list(s.scalars(select(Scan.id).where(Scan.patient_id == ids["B"]).order_by(Scan.scan_date)))
        for sid, resp in zip(scans, ["BL", "SD", "SD"], strict=True):
            s.add(RecistAssessment(scan_id=sid, sum_mm=50.0, baseline_sum_mm=50.0, nadir_mm=50.0, response=resp))
    assert json.loads(run("alerts", "--json").stdout) == []  # responses seen for the first time
    with session_scope(engine) as s:  # re-processing (or a corrected target) turns the last scan's SD into PD
        s.execute(update(RecistAssessment).where(RecistAssessment.scan_id == scans[-1]).values(response="PD"))
    first = json.loads(run("alerts", "--json").stdout)
    assert [(a["patient"], a["kind"], a["scan_date"], a["old"], a["new"]) for a in first] == [
        ("B", "recist", "2022-07-10", "SD", "PD")
    ]
    assert json.loads(run("alerts", "--json").stdout) == first
    assert len(json.loads(run(*ALERT_ARGS).stdout)) == 3  # with A's two risk alerts
    text = run("alerts").stdout
    assert "recist" in text and "SD" in text and "PD" in text


def test_since_file_lists_each_alert_once(cli, tmp_path: Path) -> None:
    run, engine = cli
    ids = _cohort(run, engine, tmp_path)
    state = tmp_path / "alerts.since"
    every = json.loads(run(*ALERT_ARGS).stdout)
    assert json.loads(run(*ALERT_ARGS, "--since-file", str(state)).stdout) == every  # no file yet: everything
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    assert json.loads(run(*ALERT_ARGS, "--since-file", str(state)).stdout) == []  # shown already
    with session_scope(engine) as s:  # re-processed since, the risks unchanged: nothing new to say
        s.execute(update(Scan).values(processed_at=datetime.now(UTC)))
    assert json.loads(run(*ALERT_ARGS, "--since-file", str(state)).stdout) == []
    assert json.loads(run(*ALERT_ARGS, "--since", "2000-01-01T00:00:00Z").stdout) == every
    with session_scope(engine) as s:
        scan = s.scalar(select(Scan.id).where(Scan.patient_id == ids["B"], Scan.scan_date == DAYS[-1]))
        s.add(RecistAssessment(scan_id=scan, sum_mm=50.0, baseline_sum_mm=50.0, nadir_mm=50.0, response="SD"))
    assert json.loads(run(*ALERT_ARGS, "--since-file", str(state)).stdout) == []  # first response seen
    with session_scope(engine) as s:
        s.execute(update(RecistAssessment).where(RecistAssessment.scan_id == scan).values(response="PR"))
    got = json.loads(run(*ALERT_ARGS, "--since-file", str(state)).stdout)
    assert [(a["patient"], a["kind"], a["old"], a["new"]) for a in got] == [("B", "recist", "SD", "PR")]
    assert json.loads(run(*ALERT_ARGS, "--since-file", str(state)).stdout) == []
    run("alerts", "--since", "2024-01-01", "--since-file", str(state), code=2)
    state.write_text("yesterday\n")
    err = run("alerts", "--since-file", str(state), code=1).stderr
    assert err.strip() == f"error: --since-file {state}: holds 'yesterday', not an ISO time written by alerts"

"""Bad input for the model commands (`model train`, `model evaluate`, `model predict`, `train`): one line on stderr
naming the row (its line in the CSV file) or the column, exit 1, nothing registered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from db.repo import table_counts
from db.session import session_scope
from tests.helpers import FEATURES, cli_on_new_db, fill_cohort, synthetic_tables


@pytest.fixture()
def cli(home: Path, tmp_path: Path):
    with cli_on_new_db(f"sqlite:///{tmp_path / 'cli.db'}") as run_and_engine:
        yield run_and_engine


@pytest.fixture()
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    visits, events = synthetic_tables(30, seed=51)
    return (
        visits[["patient_id", "time_days", *FEATURES]].reset_index(drop=True),
        events[["patient_id", "time_days", "event"]].reset_index(drop=True),
    )


def _refused(cli, tmp_path: Path, visits: pd.DataFrame, events: pd.DataFrame, command: str = "train") -> str:
    """The one stderr line of `model train` (or `model evaluate`) on these tables; nothing written."""
    run, engine = cli
    visits.to_csv(tmp_path / "v.csv", index=False)
    events.to_csv(tmp_path / "e.csv", index=False)
    with session_scope(engine) as s:
        before = table_counts(s)
    files = ("--visits", str(tmp_path / "v.csv"), "--events", str(tmp_path / "e.csv"))
    extra = ("--kind", "landmark-cox") if command == "train" else ("--folds", "2", "--bootstrap", "0")
    err = run("model", command, *files, *extra, code=1).stderr
    with session_scope(engine) as s:
        assert table_counts(s) == before
    assert err.count("\n") == 1, err
    return err.strip()


def test_unknown_patient(cli, tmp_path: Path, tables) -> None:
    visits, events = tables
    ghost = visits.iloc[[0]].assign(patient_id="GHOST")
    err = _refused(cli, tmp_path, pd.concat([visits, ghost], ignore_index=True), events)
    assert err == (
        f"error: visits row {len(visits) + 2}: column 'patient_id' names a patient without a row in the events table "
        "(1 such patient(s)), got 'GHOST'"
    )


def test_event_before_first_visit(cli, tmp_path: Path, tables) -> None:
    visits, events = tables
    bad = events.copy()
    bad.loc[4, "time_days"] = -5.0
    err = _refused(cli, tmp_path, visits, bad)
    assert err == "error: events row 6: column 'time_days' is before the patient's first visit (day 0), got -5.0"
    # first visit on day 100 (times from another origin), event on day 50
    name = events.loc[7, "patient_id"]
    late = visits.assign(time_days=visits["time_days"] + np.where(visits["patient_id"] == name, 100.0, 0.0))
    bad = events.copy()
    bad.loc[7, "time_days"] = 50.0
    err = _refused(cli, tmp_path, late, bad)
    assert err == f"error: events row 9: column 'time_days' is before the first visit of patient {name!r} (50 < 100)"


def test_negative_visit_time(cli, tmp_path: Path, tables) -> None:
    visits, events = tables
    bad = visits.copy()
    bad.loc[3, "time_days"] = -10.0
    err = _refused(cli, tmp_path, bad, events)
    assert err == "error: visits row 5: column 'time_days' is negative (days since the patient's baseline), got -10.0"


def test_duplicate_rows(cli, tmp_path: Path, tables) -> None:
    visits, events = tables
    dup = pd.concat([visits, visits.iloc[[2]]], ignore_index=True)
    err = _refused(cli, tmp_path, dup, events)
    p, t = visits.loc[2, "patient_id"], float(visits.loc[2, "time_days"])
    assert err == (
        f"error: visits row {len(visits) + 2}: a second visit of the same patient at the same time "
        f"(patient_id={p!r}, time_days={t!r}) already given in row 4"
    )
    dup = pd.concat([events, events.iloc[[0]]], ignore_index=True)
    for command in ("train", "evaluate"):
        err = _refused(cli, tmp_path, visits, dup, command)
        assert err == (
            f"error: events row {len(events) + 2}: a second row for the same patient "
            f"(patient_id={events.loc[0, 'patient_id']!r}) already given in row 2"
        )


def test_constant_or_empty_feature(cli, tmp_path: Path, tables) -> None:
    visits, events = tables
    err = _refused(cli, tmp_path, visits.assign(site_code=3), events)
    assert err == "error: visits: feature column 'site_code' is constant (3 in every row); drop it"
    err = _refused(cli, tmp_path, visits.assign(empty=np.nan), events, "evaluate")
    assert err == "error: visits: feature column 'empty' has no values (empty in every row); drop it"


def test_train_from_database_refuses_a_constant_feature(cli, tables) -> None:
    run, engine = cli
    visits, events = synthetic_tables(30, seed=52)
    fill_cohort(engine, visits.assign(contrast=1.0), events)
    err = run("train", "--kind", "landmark-cox", code=1).stderr
    assert err.strip() == "error: visits: feature column 'contrast' is constant (1 in every row); drop it"
    assert "cox" not in run("model", "list").stdout


def test_predict_needs_the_trained_features(cli, tmp_path: Path, tables) -> None:
    run, _ = cli
    visits, events = tables
    visits.to_csv(tmp_path / "v.csv", index=False)
    events.to_csv(tmp_path / "e.csv", index=False)
    run(
        "model",
        "train",
        "--visits",
        str(tmp_path / "v.csv"),
        "--events",
        str(tmp_path / "e.csv"),
        "--kind",
        "landmark-cox",
    )
    features = run("model", "show", "landmark-cox-metastasis:1", "--json").stdout
    used = [f for f in FEATURES if f'"{f}"' in features]
    visits.drop(columns=used[0]).to_csv(tmp_path / "p.csv", index=False)
    predict = ("model", "predict", "--model", "landmark-cox-metastasis:1", "--visits", str(tmp_path / "p.csv"))
    err = run(*predict, code=1).stderr
    assert err.strip() == f"error: visits: the model needs feature columns [{used[0]!r}] that are missing"
    bad = visits.copy()
    bad.loc[0, "time_days"] = -1.0
    bad.to_csv(tmp_path / "p.csv", index=False)
    err = run(*predict, code=1).stderr
    assert (
        err.strip()
        == "error: visits row 2: column 'time_days' is negative (days since the patient's baseline), got -1.0"
    )

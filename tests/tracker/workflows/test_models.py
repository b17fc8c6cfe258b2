"""Training a risk model from tables: events given by date train the same model as events given in days."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from db.migrate import upgrade
from db.session import make_engine
from tests.helpers import FEATURES, synthetic_tables
from tracker.errors import MetatrackError
from tracker.store import FileStore
from tracker.survival import SurvivalModelConfig
from tracker.workflows.models import event_times, train


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    visits, events = synthetic_tables(40, seed=5)
    return visits.rename(columns={"scan_date": "date"}), events


def test_event_dates_become_days_from_the_first_visit() -> None:
    visits, events = _tables()
    cfg = SurvivalModelConfig()
    by_date = event_times(visits.drop(columns="time_days"), events.drop(columns="time_days"), cfg)
    pd.testing.assert_series_equal(by_date["time_days"], events["time_days"].astype(float))
    as_date = events.drop(columns="time_days").rename(columns={"event_date": "date"})
    assert event_times(visits, as_date, cfg)["time_days"].tolist() == events["time_days"].tolist()


def test_event_dates_need_dated_visits() -> None:
    visits, events = _tables()
    cfg = SurvivalModelConfig()
    with pytest.raises(MetatrackError, match="dates need a 'date' column in the visits"):
        event_times(visits.drop(columns="date"), events.drop(columns="time_days"), cfg)
    stranger = events.drop(columns="time_days").assign(patient_id="NOBODY")
    with pytest.raises(MetatrackError, match="events row 2: patient 'NOBODY' has no dated visit"):
        event_times(visits, stranger, cfg)
    bad = events.drop(columns="time_days").astype({"event_date": object})
    bad.loc[3, "event_date"] = "not a date"
    with pytest.raises(MetatrackError, match="events row 5: unreadable event_date 'not a date'"):
        event_times(visits, bad, cfg)


def test_model_train_accepts_event_dates(tmp_path: Path) -> None:
    visits, events = _tables()
    engine = make_engine(f"sqlite:///{tmp_path / 'mt.db'}")
    upgrade(engine)
    store = FileStore(tmp_path / "store")
    visits = visits[["patient_id", "date", *FEATURES]]
    cfg = SurvivalModelConfig()
    infos = [
        train(engine, store, visits, events[["patient_id", column, "event"]], cfg, endpoint="metastasis", name=column,
              seed=0, kind="landmark-cox")
        for column in ("time_days", "event_date")
    ]  # fmt: skip
    in_days, by_date = infos
    assert in_days["n_patients"] >= 35 and in_days["n_events"] > 0
    same = [k for k in in_days if k not in ("model", "train_seconds")]
    assert [by_date[k] for k in same] == [in_days[k] for k in same] and set(by_date) == set(in_days)

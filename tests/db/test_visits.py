"""Visit and event tables read from the database, and clinical event import."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select

from db.models import ClinicalEvent, EventKind, Patient, Scan, ScanState
from db.repo import table_counts
from db.session import session_scope
from db.visits import event_table, import_events, visit_table
from tests.helpers import FEATURES, fill_cohort, synthetic_tables
from tracker.errors import MetatrackError


def test_visit_table_pivots_features_and_times(engine: Engine) -> None:
    visits, events = synthetic_tables(12, seed=1)
    ids = fill_cohort(engine, visits, events)
    with session_scope(engine) as s:
        # one scan not processed: it leaves the visit table but still fixes the baseline
        first_scan = s.scalar(select(Scan).where(Scan.patient_id == ids["S00003"]).order_by(Scan.scan_date))
        first_scan.state = ScanState.INGESTED
    with session_scope(engine) as s:
        table = visit_table(s)
        one = visit_table(s, ["S00003"], tags=["burden_log", "absent_tag"])
    assert len(table) == len(visits) - 1
    assert list(table.columns[5:]) == sorted(FEATURES)
    merged = table.merge(visits, on=["patient_id", "scan_date"], suffixes=("", "_truth"))
    np.testing.assert_allclose(merged["time_days"], merged["time_days_truth"])
    np.testing.assert_allclose(merged["burden_log"], merged["burden_log_truth"])
    truth3 = visits[visits["patient_id"] == "S00003"]
    assert len(one) == len(truth3) - 1
    keys = ["patient_id", "db_patient_id", "scan_id", "scan_date", "time_days"]
    assert list(one.columns) == [*keys, "burden_log", "absent_tag"]
    np.testing.assert_allclose(one["time_days"], truth3["time_days"].to_numpy()[1:])
    assert one["absent_tag"].isna().all()


def test_event_table_first_event_or_censoring(engine: Engine) -> None:
    visits, events = synthetic_tables(15, seed=2)
    ids = fill_cohort(engine, visits, events)
    with session_scope(engine) as s:
        # a later second metastasis does not move the first; a censoring row after the last scan extends follow-up
        ev_pid = events.loc[events["event"] == 1, "patient_id"].iloc[0]
        day = events.set_index("patient_id").loc[ev_pid, "event_date"]
        s.add(ClinicalEvent(patient_id=ids[ev_pid], kind=EventKind.METASTASIS, event_date=day + timedelta(days=90)))
        cen_pid = events.loc[events["event"] == 0, "patient_id"].iloc[0]
        s.add(ClinicalEvent(patient_id=ids[cen_pid], kind=EventKind.CENSORED, event_date=date(2030, 1, 1)))
    with session_scope(engine) as s:
        table = event_table(s, "metastasis").set_index("patient_id")
    truth = events.set_index("patient_id")
    assert len(table) == 15
    for pid in truth.index:
        if truth.loc[pid, "event"] == 1:
            assert table.loc[pid, "event"] == 1
            assert table.loc[pid, "time_days"] == truth.loc[pid, "time_days"]
        else:
            assert table.loc[pid, "event"] == 0
    base = visits.groupby("patient_id")["scan_date"].min()
    assert table.loc[cen_pid, "time_days"] == (date(2030, 1, 1) - base[cen_pid]).days
    other = next(p for p in truth.index if truth.loc[p, "event"] == 0 and p != cen_pid)
    assert table.loc[other, "time_days"] == visits.loc[visits["patient_id"] == other, "time_days"].max()


def test_import_events_all_forms_and_idempotent(engine: Engine) -> None:
    visits, _ = synthetic_tables(3, seed=3)
    fill_cohort(engine, visits)
    base = visits.groupby("patient_id")["scan_date"].min()
    table = pd.DataFrame(
        {
            "patient_id": ["S00000", "S00001", "S00002"],
            "event": [1, 0, 1],
            "time_days": [100, 200, None],
            "date": [None, None, "2022-03-04"],
        }
    )
    with session_scope(engine) as s:
        assert import_events(s, table, endpoint="progression") == 3
    with session_scope(engine) as s:
        assert import_events(s, table, endpoint="progression") == 0
        got = {
            (name, kind.value, day)
            for name, kind, day in s.execute(
                select(Patient.external_id, ClinicalEvent.kind, ClinicalEvent.event_date).join(Patient)
            )
        }
    assert got == {
        ("S00000", "progression", base["S00000"] + timedelta(days=100)),
        ("S00001", "censored", base["S00001"] + timedelta(days=200)),
        ("S00002", "progression", date(2022, 3, 4)),
    }


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"patient_id": ["S00000", "NOPE"], "kind": ["death", "death"], "date": ["2021-01-01"] * 2}, "row 3"),
        ({"patient_id": ["S00000", "S00001"], "kind": ["death", "relapse"], "date": ["2021-01-01"] * 2}, "relapse"),
        ({"patient_id": ["S00000", "S00001"], "event": [1, 2], "date": ["2021-01-01"] * 2}, "row 3"),
        ({"patient_id": ["S00000", "S00001"], "kind": ["death", "death"], "date": ["2021-01-01", "x"]}, "row 3"),
    ],
)
def test_import_events_error_leaves_database_unchanged(engine: Engine, table: dict, message: str) -> None:
    visits, _ = synthetic_tables(2, seed=4)
    fill_cohort(engine, visits)
    with session_scope(engine) as s:
        before = table_counts(s)
    with pytest.raises(MetatrackError, match=message), session_scope(engine) as s:
        import_events(s, pd.DataFrame(table), endpoint="metastasis")
    with session_scope(engine) as s:
        assert table_counts(s) == before

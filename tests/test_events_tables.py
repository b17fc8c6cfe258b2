"""Visit and event tables read from the database, event import; also the synthetic cohort used by the risk tests.

`synthetic_tables` and `fill_cohort` are imported by tests/test_registry_*.py, tests/test_rescore_*.py and
benchmarks/rescore.py: patient-level features per scan written straight into the schema (no imaging).
"""

from __future__ import annotations

import functools
import hashlib
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, func, insert, select, text

from db.models import Blob, ClinicalEvent, EventKind, Patient, PatientFeature, Scan, ScanRole, ScanState
from db.repo import table_counts
from db.session import session_scope
from db.visits import event_table, import_events, visit_table
from tracker.errors import MetatrackError

FEATURES = ("burden_log", "lesion_count", "new_lesions", "noise")
DAYS_PER_MONTH = 365.25 / 12.0
START = date(2020, 1, 6)
INSERT_CHUNK = 5000


def synthetic_tables(
    n_patients: int, seed: int = 0, mean_scans: float = 5.0, prefix: str = "S"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(visits, events) of a cohort whose metastasis hazard rises with the slope of the tumour burden.

    visits: patient_id, scan_date, time_days, FEATURES; events: patient_id, time_days, event, event_date.
    """
    rng = np.random.default_rng(seed)
    slope = rng.normal(0.0, 1.0, n_patients)
    level = rng.normal(3.0, 1.0, n_patients)
    hazard = 0.03 * np.exp(0.8 * slope)  # per month
    event_m = rng.exponential(1.0 / hazard)
    censor_m = rng.uniform(12.0, 36.0, n_patients)
    end_m = np.minimum(event_m, censor_m)
    n_scans = np.clip(rng.poisson(mean_scans - 1, n_patients) + 1, 1, 12)
    starts = [START + timedelta(days=int(d)) for d in rng.integers(0, 365, n_patients)]
    rows = []
    for i in range(n_patients):
        t = 0.0
        for _k in range(int(n_scans[i])):
            days = round(t * DAYS_PER_MONTH)
            burden = level[i] + slope[i] * t / 12.0 + rng.normal(0.0, 0.2)
            rows.append(
                (
                    f"{prefix}{i:05d}",
                    starts[i] + timedelta(days=days),
                    float(days),
                    burden,
                    float(max(1, round(np.exp(burden / 3.0)))),
                    float(rng.poisson(max(slope[i], 0.0) * 0.5)),
                    rng.normal(),
                )
            )
            t += rng.uniform(2.0, 4.0)
            if t >= end_m[i]:
                break
    visits = pd.DataFrame(rows, columns=["patient_id", "scan_date", "time_days", *FEATURES])
    ids = [f"{prefix}{i:05d}" for i in range(n_patients)]
    end_days = np.round(end_m * DAYS_PER_MONTH)
    events = pd.DataFrame(
        {
            "patient_id": ids,
            "time_days": end_days,
            "event": (event_m <= censor_m).astype(int),
            "event_date": [s + timedelta(days=int(d)) for s, d in zip(starts, end_days, strict=True)],
        }
    )
    return visits, events


def _bulk(session, table, rows: list[dict]) -> None:
    for i in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(table), rows[i : i + INSERT_CHUNK])


def fill_cohort(engine: Engine, visits: pd.DataFrame, events: pd.DataFrame | None = None) -> dict[str, int]:
    """Write patients, processed scans, patient_features (and events) in bulk; returns pseudonym -> DB id."""
    with session_scope(engine) as s:
        pid0 = (s.scalar(select(func.max(Patient.id))) or 0) + 1
        sid0 = (s.scalar(select(func.max(Scan.id))) or 0) + 1
        names = list(dict.fromkeys(visits["patient_id"]))
        ids = {n: pid0 + k for k, n in enumerate(names)}
        _bulk(s, Patient.__table__, [{"id": ids[n], "external_id": n} for n in names])
        scan_ids = np.arange(sid0, sid0 + len(visits))
        shas = [hashlib.sha256(f"synthetic-scan-{i}".encode()).hexdigest() for i in scan_ids]
        _bulk(s, Blob.__table__, [{"sha256": h, "kind": "image", "suffix": ".nii.gz", "size_bytes": 1} for h in shas])
        first = visits.groupby("patient_id")["scan_date"].transform("min")
        scan_rows = []
        for sid, h, name, day, is_first in zip(
            scan_ids, shas, visits["patient_id"], visits["scan_date"], visits["scan_date"] == first, strict=True
        ):
            scan_rows.append(
                {
                    "id": int(sid),
                    "patient_id": ids[name],
                    "scan_date": day,
                    "role": ScanRole.BASELINE if is_first else ScanRole.FOLLOW_UP,
                    "modality": "CT",
                    "image_sha256": h,
                    "source_format": "nifti",
                    "source_name": f"{name}_{day}.nii.gz",
                    "size_xyz": [1, 1, 1],
                    "spacing_xyz": [1.0, 1.0, 1.0],
                    "origin_xyz": [0.0, 0.0, 0.0],
                    "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                    "state": ScanState.PROCESSED,
                }
            )
        _bulk(s, Scan.__table__, scan_rows)
        feats = [c for c in visits.columns if c not in ("patient_id", "scan_date", "time_days")]
        values = visits[feats].to_numpy(dtype=np.float64)
        pats = [ids[n] for n in visits["patient_id"]]
        feat_rows = [
            {"patient_id": pats[r], "scan_id": int(scan_ids[r]), "tag": f, "value": float(values[r, c])}
            for r in range(len(visits))
            for c, f in enumerate(feats)
            if np.isfinite(values[r, c])
        ]
        _bulk(s, PatientFeature.__table__, feat_rows)
        if events is not None:
            ev = events[events["event"] == 1]
            _bulk(
                s,
                ClinicalEvent.__table__,
                [
                    {"patient_id": ids[p], "kind": EventKind.METASTASIS, "event_date": d}
                    for p, d in zip(ev["patient_id"], ev["event_date"], strict=True)
                    if p in ids
                ],
            )
        if engine.dialect.name == "postgresql":
            for table in ("patients", "scans"):
                seq = f"pg_get_serial_sequence('{table}', 'id')"
                s.execute(text(f"SELECT setval({seq}, (SELECT max(id) FROM {table}))"))
    with engine.connect() as conn:  # fresh statistics after a bulk load, as autovacuum would gather them
        conn.execute(text("ANALYZE"))
        conn.commit()
    return ids


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


@functools.lru_cache(maxsize=1)
def tiny_model_bytes() -> bytes:
    """A small trained RiskModel (few epochs) on a 200-patient synthetic cohort, trained once per process."""
    from tracker.survival import SurvivalModelConfig, train_model

    visits, events = synthetic_tables(200, seed=5)
    cfg = SurvivalModelConfig(max_epochs=8, min_epochs=1, hidden_size=4, val_fraction=0.2)
    model = train_model(
        visits[["patient_id", "time_days", *FEATURES]], events[["patient_id", "time_days", "event"]], cfg, seed=0
    )
    return model.to_bytes()


def tiny_model():
    """A fresh copy of the tiny model."""
    from tracker.survival import RiskModel

    return RiskModel.from_bytes(tiny_model_bytes())

"""Re-scoring writes the 90 % interval of every risk (and of the stored curve), and widens it for a scan that needs
review."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, select, update

import tracker.workflows.rescore as rescore
from db.models import RiskScore, Scan
from db.registry import promote, register_model
from db.session import session_scope
from tests.helpers import fill_cohort, synthetic_tables, tiny_model
from tracker.store import FileStore
from tracker.survival.intervals import REVIEW_WIDEN, cloglog

AS_OF = date(2024, 6, 1)


def _rows(engine: Engine) -> dict[tuple, tuple]:
    with session_scope(engine) as s:
        got = s.execute(
            select(
                RiskScore.scan_id,
                RiskScore.as_of_date,
                RiskScore.horizon_months,
                RiskScore.risk,
                RiskScore.risk_lower,
                RiskScore.risk_upper,
                RiskScore.curve,
                RiskScore.curve_lower,
                RiskScore.curve_upper,
                RiskScore.patient_id,
            )
        ).all()
    return {(r[9], r[1], r[2]): r for r in got}


def test_rescore_writes_intervals_and_widens_them_for_review(engine: Engine, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    visits, events = synthetic_tables(20, seed=3)
    fill_cohort(engine, visits, events)
    with session_scope(engine) as s:
        register_model(s, store, tiny_model(), "gru", "metastasis")
        promote(s, "gru:1")
    rescore.rescore_all(engine, store, as_of=AS_OF)
    rows = _rows(engine)
    risk = np.array([r[3] for r in rows.values()])
    low = np.array([r[4] for r in rows.values()])
    high = np.array([r[5] for r in rows.values()])
    assert np.all(low <= risk) and np.all(risk <= high)
    assert np.mean(high - low) > 0.005  # the ensemble's members disagree somewhat
    with_curve = [r for r in rows.values() if r[6] is not None]
    assert with_curve and all(r[7] is not None and r[8] is not None for r in with_curve)
    assert all(r[7] is None and r[8] is None for r in rows.values() if r[6] is None)
    for r in with_curve:
        c, lo, hi = (np.asarray(json.loads(v) if isinstance(v, str) else v) for v in r[6:9])
        assert np.all(lo <= c + 1e-6) and np.all(c <= hi + 1e-6)

    # a scan flagged for review: its scores are stale, the risk stays, the interval widens by REVIEW_WIDEN
    key = next(k for k, r in rows.items() if r[0] is not None and r[2] == 12 and r[5] - r[4] > 0.01)
    scan_id = rows[key][0]
    with session_scope(engine) as s:
        s.execute(update(Scan).where(Scan.id == scan_id).values(review_reasons=["low-confidence lesion"]))
    assert rescore.plan(engine, as_of=AS_OF) == 1
    rescore.rescore_all(engine, store, as_of=AS_OF)
    again = _rows(engine)
    old, new = rows[key], again[key]
    assert abs(new[3] - old[3]) < 1e-6  # one patient scored alone: float32 sums in another order
    survival = 1.0 - np.array([old[3], old[4], old[5]])
    widened = 1.0 - np.array([new[3], new[4], new[5]])
    hw_old = cloglog(survival[1]) - cloglog(survival[0])  # the lower risk is the upper survival
    hw_new = cloglog(widened[1]) - cloglog(widened[0])
    assert abs(hw_new / hw_old - REVIEW_WIDEN) < 0.05
    unchanged = [k for k in rows if k[0] != key[0]]  # other patients were not scored again
    assert all(again[k][4:6] == rows[k][4:6] for k in unchanged)

"""Risk score history: rescore keeps every replaced risk with its old and new value and the reason."""

from __future__ import annotations

import functools
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, select, update

import tracker.workflows.rescore as rescore
from db.alerts import ScoreChangeReason, score_changes
from db.models import Blob, PatientFeature, RiskScore, Scan, ScanRole, ScanState
from db.registry import promote, register_model
from db.session import session_scope
from tests.helpers import FEATURES, fill_cohort, synthetic_tables
from tracker.store import FileStore
from tracker.workflows.alerts import list_alerts

AS_OF = date(2024, 6, 1)  # after every synthetic scan


@functools.lru_cache(maxsize=2)
def _cox_bytes(penalizer: float) -> bytes:
    """A landmark Cox model (seconds to fit); another penalizer gives other risks: a changed model."""
    from tracker.survival import SurvivalModelConfig
    from tracker.survival.landmark_cox import train_landmark_cox

    visits, events = synthetic_tables(120, seed=5)
    model = train_landmark_cox(
        visits[["patient_id", "time_days", *FEATURES]],
        events[["patient_id", "time_days", "event"]],
        SurvivalModelConfig(cox_penalizer=penalizer),
    )
    return model.to_bytes()


def _register(engine: Engine, store: FileStore, penalizer: float) -> int:
    from tracker.survival.kinds import model_from_bytes

    with session_scope(engine) as s:
        mv = register_model(s, store, model_from_bytes(_cox_bytes(penalizer)), "cox", "metastasis")
        promote(s, f"cox:{mv.version}")
        return mv.id


def _scores(engine: Engine, mv_id: int) -> dict[tuple[int, date, int], float]:
    with session_scope(engine) as s:
        rows = s.execute(
            select(RiskScore.patient_id, RiskScore.as_of_date, RiskScore.horizon_months, RiskScore.risk).where(
                RiskScore.model_version_id == mv_id
            )
        ).all()
    return {(p, d, h): r for p, d, h, r in rows}


def _history(engine: Engine):
    with session_scope(engine) as s:
        return score_changes(s)


@pytest.fixture()
def scored(engine: Engine, tmp_path: Path):
    store = FileStore(tmp_path / "store")
    visits, events = synthetic_tables(10, seed=31)
    ids = fill_cohort(engine, visits, events)
    v1 = _register(engine, store, 0.1)
    rescore.rescore_all(engine, store, as_of=AS_OF)
    return store, ids, visits, v1


def test_new_model_keeps_old_and_new_risk(engine: Engine, scored) -> None:
    store, _, _, v1 = scored
    assert _history(engine).empty  # first scores replace nothing
    before = _scores(engine, v1)
    v2 = _register(engine, store, 1.0)
    rescore.rescore_all(engine, store, as_of=AS_OF)
    after = _scores(engine, v2)
    hist = _history(engine)
    assert len(hist) == len(before) == len(after)  # every key scored by v1 is now scored by v2
    assert set(hist["reason"]) == {ScoreChangeReason.NEW_MODEL.value}
    assert set(hist["old_model_version_id"]) == {v1} and set(hist["new_model_version_id"]) == {v2}
    keys = list(zip(hist["patient_id"], hist["as_of_date"], hist["horizon_months"], strict=True))
    np.testing.assert_array_equal(hist["old_risk"], [before[k] for k in keys])
    np.testing.assert_array_equal(hist["new_risk"], [after[k] for k in keys])
    assert np.abs(hist["new_risk"] - hist["old_risk"]).max() > 1e-3  # the models differ
    assert _scores(engine, v1) == before  # the old model's rows stay
    rescore.rescore_all(engine, store, as_of=AS_OF)
    assert len(_history(engine)) == len(hist)  # nothing replaced: nothing recorded
    rises, _ = list_alerts(engine, rise_above=0.0)  # every rise between scans under v2, each known through v2
    assert rises and {(a.reason, a.endpoint) for a in rises} == {("new-model", "metastasis")}


def test_reprocessing_records_only_the_changed_risks(engine: Engine, scored) -> None:
    store, ids, visits, v1 = scored
    before = _scores(engine, v1)
    ticked = {p for p, d, _ in before if d == AS_OF}  # event-free patients have a calendar tick
    name = next(n for n in visits["patient_id"] if ids[n] in ticked)
    last = visits[visits["patient_id"] == name]["scan_date"].max()
    with session_scope(engine) as s:
        last_scan = s.scalar(select(Scan.id).where(Scan.patient_id == ids[name], Scan.scan_date == last))
        s.execute(
            update(PatientFeature)
            .where(PatientFeature.scan_id == last_scan, PatientFeature.tag == "burden_log")
            .values(value=PatientFeature.value + 2.0)
        )
    stats = rescore.rescore_all(engine, store, as_of=AS_OF)
    assert stats["jobs_done"] == 1
    after = _scores(engine, v1)
    hist = _history(engine)
    changed = {k for k in after if abs(after[k] - before[k]) > 1e-6}
    # the changed (last) scan; the tick after it too unless both ticks are 0 (past the Cox baseline's last event)
    assert last in {d for _, d, _ in changed} and {d for _, d, _ in changed} <= {last, AS_OF}
    assert {p for p, _, _ in changed} == {ids[name]}
    assert set(zip(hist["patient_id"], hist["as_of_date"], hist["horizon_months"], strict=True)) == changed
    assert set(hist["reason"]) == {ScoreChangeReason.REPROCESSING.value}
    for r in hist.itertuples():
        key = (r.patient_id, r.as_of_date, r.horizon_months)
        assert (r.old_risk, r.new_risk) == (before[key], after[key])
        assert r.old_model_version_id == r.new_model_version_id == v1


def test_new_scan_moves_the_tick(engine: Engine, scored) -> None:
    store, ids, visits, v1 = scored
    before = _scores(engine, v1)
    ticked = {p for p, d, _ in before if d == AS_OF}
    name = next(n for n in visits["patient_id"] if ids[n] in ticked)
    day = date(2024, 5, 2)  # a month before the tick: the tick is now seen from this scan
    last = visits[visits["patient_id"] == name].iloc[-1]
    with session_scope(engine) as s:
        sha = "f" * 64
        s.add(Blob(sha256=sha, kind="image", suffix=".nii.gz", size_bytes=1))
        scan = Scan(
            patient_id=ids[name],
            scan_date=day,
            role=ScanRole.FOLLOW_UP,
            modality="CT",
            image_sha256=sha,
            source_format="nifti",
            source_name=f"sha256:{sha[:16]}",
            size_xyz=[1, 1, 1],
            spacing_xyz=[1.0, 1.0, 1.0],
            origin_xyz=[0.0, 0.0, 0.0],
            direction=[1, 0, 0, 0, 1, 0, 0, 0, 1],
            state=ScanState.PROCESSED,
        )
        s.add(scan)
        s.flush()
        s.add_all(PatientFeature(patient_id=ids[name], scan_id=scan.id, tag=f, value=float(last[f])) for f in FEATURES)
    rescore.rescore_all(engine, store, as_of=AS_OF)
    after = _scores(engine, v1)
    hist = _history(engine)
    changed = {k for k in before if abs(after[k] - before[k]) > 1e-6}
    assert changed and {d for _, d, _ in changed} == {AS_OF}  # earlier scans' risks do not look ahead
    assert set(zip(hist["patient_id"], hist["as_of_date"], hist["horizon_months"], strict=True)) == changed
    assert set(hist["reason"]) == {ScoreChangeReason.NEW_SCAN.value} and set(hist["scan_id"].isna()) == {True}
    assert {(ids[name], day)} == {(p, d) for p, d, _ in after if (p, d, 12) not in before and d != AS_OF}

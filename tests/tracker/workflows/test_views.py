"""The timeline use case: risk scored as of a calendar date (no scan) is shown, in JSON and in the table."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select

from cli.render import print_timeline
from db.migrate import upgrade
from db.models import Patient, RiskScore
from db.session import make_engine, session_scope
from tests.helpers import fill_cohort, synthetic_tables
from tracker.store import FileStore
from tracker.survival import SurvivalModelConfig
from tracker.workflows.models import database_tables, promote, train
from tracker.workflows.rescore import rescore_all
from tracker.workflows.views import timeline

AS_OF = date(2026, 1, 1)  # after every synthetic scan: a calendar-date score besides the scans' own


def test_calendar_date_risk_is_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'mt.db'}")
    upgrade(engine)
    store = FileStore(tmp_path / "store")
    visits, events = synthetic_tables(30, seed=4)
    fill_cohort(engine, visits, events)
    info = train(engine, store, *database_tables(engine, "metastasis"), SurvivalModelConfig(),
                 endpoint="metastasis", name="cox", seed=0, kind="landmark-cox")  # fmt: skip
    promote(engine, info["model"])
    rescore_all(engine, store, as_of=AS_OF)
    name = str(visits["patient_id"].iloc[0])
    with session_scope(engine) as s:
        stored = [
            (rs.as_of_date.isoformat(), rs.horizon_months, rs.risk)
            for rs in s.scalars(
                select(RiskScore)
                .join(Patient, Patient.id == RiskScore.patient_id)
                .where(Patient.external_id == name, RiskScore.scan_id.is_(None))
                .order_by(RiskScore.horizon_months)
            )
        ]
    assert stored and all(day == AS_OF.isoformat() for day, _, _ in stored)
    data = timeline(engine, name)
    shown = [(r["as_of"], r["horizon_months"], r["risk"]) for r in data["calendar_risk"]]
    assert shown == stored
    assert {r["model"] for r in data["calendar_risk"]} == {info["model"]}
    assert all(r["as_of"] != AS_OF.isoformat() for s in data["scans"] for r in s["risk"])
    print_timeline(data)
    table = capsys.readouterr().out
    assert "risk by calendar date" in table
    assert all(f"{risk:.4g}" in table for _, _, risk in stored)


def test_timeline_mask_is_the_lesion_mask_not_an_organ_map(tmp_path: Path) -> None:
    import numpy as np
    import SimpleITK as sitk

    from tracker.workflows.ingest import ScanRequest, ingest_many

    def write(arr: np.ndarray, name: str) -> Path:
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((2.0, 2.0, 2.0))
        path = tmp_path / name
        sitk.WriteImage(img, str(path))
        return path

    rng = np.random.default_rng(0)
    organs = np.zeros((16, 16, 16), np.uint8)
    organs[2:14, 2:14, 2:14] = 1
    lesion = np.zeros((16, 16, 16), np.uint8)
    lesion[5:9, 5:9, 5:9] = 1
    engine = make_engine(f"sqlite:///{tmp_path / 'mt.db'}")
    upgrade(engine)
    requests = [
        ScanRequest("P1", date(2024, 1, day), write(rng.normal(0, 10, (16, 16, 16)).astype(np.int16), f"{day}.nii.gz"),
                    mask=write(lesion, "lesion.nii.gz") if day == 1 else None, organs=write(organs, "organs.nii.gz"))
        for day in (1, 2)
    ]  # fmt: skip
    _, failed = ingest_many(engine, FileStore(tmp_path / "store"), requests)
    assert not failed
    scans = timeline(engine, "P1")["scans"]
    assert scans[0]["mask"] == {"labels": 1, "empty": False, "source": "given"}
    assert scans[1]["mask"] is None  # only an organ map: no lesion mask

"""The demo's follow-up without a mask: which scan loses its mask, and the line that says what was found on it."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from cli.demo import found_line, without_last_mask
from db import migrate
from db.session import make_engine
from tracker.records import Settings
from tracker.simulator import SimulationConfig, load_truth, simulate_cohort
from tracker.store import FileStore
from tracker.workflows.ingest import ScanRequest, ingest_many, read_manifest
from tracker.workflows.process import process_scans
from tracker.workflows.views import timeline

pytestmark = pytest.mark.slow
# seed 2: one liver lesion at the baseline and the first follow-up; at the second it has grown and a new one appeared
SIMULATION = SimulationConfig(
    n_patients=1, seed=2, shape=(48, 48, 36), spacing=(5.0,) * 3, min_followups=1, max_followups=2
)


def _request(patient: str, day: str) -> ScanRequest:
    return ScanRequest(
        external_id=patient, scan_date=date.fromisoformat(day), image=Path("i.nii.gz"), mask=Path("m.nii.gz")
    )


def test_only_the_first_patients_last_follow_up_loses_its_mask() -> None:
    requests = [
        _request("P1", "2021-01-04"),
        _request("P1", "2021-03-01"),
        _request("P1", "2021-05-10"),
        _request("P2", "2021-06-01"),
        _request("P2", "2021-08-01"),
    ]
    stripped, (patient, day) = without_last_mask(requests)
    assert (patient, day) == ("P1", date(2021, 5, 10))
    assert [r.mask is None for r in stripped] == [False, False, True, False, False]
    assert [dataclasses.replace(r, mask=None) for r in stripped] == [
        dataclasses.replace(r, mask=None) for r in requests
    ]


def test_found_line_names_each_lesion_its_source_and_confidence() -> None:
    tl: dict[str, Any] = {
        "patient_id": "P1",
        "scans": [
            {
                "date": "2021-05-10",
                "state": "processed",
                "error": None,
                "mask": {"labels": 2, "empty": False, "source": "derived"},
                "lesions": [
                    {"track_id": 1, "source": "propagated", "confidence": 0.874},
                    {"track_id": 4, "source": "detected", "confidence": 0.61},
                ],
            }
        ],
    }
    assert found_line(tl, date(2021, 5, 10)) == (
        "the follow-up of 2021-05-10 (patient P1) had no mask: 2 lesion(s) found: "
        "T1 propagated (confidence 0.87), T4 detected (confidence 0.61)"
    )
    tl["scans"][0].update(state="failed", error="no lesion mask here", lesions=[], mask=None)
    assert found_line(tl, date(2021, 5, 10)).endswith("had no mask and was not processed: no lesion mask here")
    tl["scans"][0].update(state="processed", mask={"labels": 2, "empty": False, "source": "given"})
    assert found_line(tl, date(2021, 5, 10)).endswith("has the mask an earlier run ingested")


def test_the_demos_unmasked_follow_up_gets_its_lesions_propagated(tmp_path: Path) -> None:
    """Ingested as the demo does (the first patient's last follow-up without a mask) and processed with
    propagation alone: the lesion seen before continues its track there, propagated with a confidence, its volume
    near the true one; the new lesion is not found (no model); the other scans keep their given masks."""
    simulate_cohort(SIMULATION, tmp_path / "cohort")
    requests, (patient, day) = without_last_mask(read_manifest(tmp_path / "cohort" / "manifest.csv"))
    engine = make_engine(f"sqlite:///{tmp_path / 'mt.db'}")
    migrate.upgrade(engine)
    store = FileStore(tmp_path / "store")
    _, failed = ingest_many(engine, store, requests)
    assert not failed
    settings = Settings(preset="affine", features=False, segmentation_model=False)
    report = process_scans(engine, store, settings, tmp_path / "work", patient=patient)
    assert not report.failed
    tl = timeline(engine, patient)
    truth = load_truth(tmp_path / "cohort" / "truth.json")["patients"][patient]["scans"]
    assert [s["date"] for s in tl["scans"]][-1] == day.isoformat() == truth[-1]["date"]
    assert truth[1]["labels"] == {"1": ["L01"]} and sorted(truth[2]["lesions"]) == ["L01", "L02"]

    *given, unmasked = tl["scans"]
    assert [les["track_id"] for s in given for les in s["lesions"]] == [1, 1]
    (found,) = unmasked["lesions"]
    assert (found["track_id"], found["change"], found["source"]) == (1, "persistent", "propagated")
    assert found["volume_mm3"] == pytest.approx(truth[2]["lesions"]["L01"]["volume_mm3"], rel=0.35)
    assert 0.5 < found["confidence"] <= 1.0
    assert unmasked["mask"]["source"] == "derived" and all(s["mask"]["source"] == "given" for s in given)
    assert found_line(tl, day) == (
        f"the follow-up of {day} (patient {patient}) had no mask: 1 lesion(s) found: "
        f"T1 propagated (confidence {found['confidence']:.2f})"
    )

"""The cohort table read in bulk agrees with each patient's timeline, and the timeline's indexed delta read finds
every delta, on a small cohort of the scale benchmark's synthetic rows (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Engine

from db.synthetic import fill_cohort, fill_results
from tests.helpers import synthetic_tables
from tracker.workflows import views

PATIENTS = 12


def _filled(engine: Engine) -> dict[str, int]:
    visits, events = synthetic_tables(PATIENTS, seed=5, mean_scans=6.0)
    fill_cohort(engine, visits, events)
    return fill_results(engine, seed=5)


def test_cohort_rows_match_the_timelines(engine: Engine) -> None:
    counts = _filled(engine)
    rows = views.cohort(engine)
    assert len(rows) == counts["scans"]
    assert sum(r["lesions"] for r in rows) == counts["lesions"]
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_patient[r["patient_id"]].append(r)
    assert list(by_patient) == sorted(by_patient)
    for name, prows in by_patient.items():
        tl = views.timeline(engine, name)
        assert [r["scan_id"] for r in prows] == [s["id"] for s in tl["scans"]]
        for r, s in zip(prows, tl["scans"], strict=True):
            expected = {
                "date": s["date"],
                "days_from_baseline": s["days_from_baseline"],
                "role": s["role"],
                "state": s["state"],
                "lesions": len(s["lesions"]),
                "new_lesions": sum(les["change"] == "new" for les in s["lesions"]) if s["role"] == "follow-up" else 0,
                "total_volume_mm3": round(sum(les["volume_mm3"] for les in s["lesions"]), 3),
                "recist_sum_mm": s["recist"]["sum_mm"],
                "recist_response": s["recist"]["response"],
                "needs_review": s["registration"]["needs_review"] if s["registration"] else None,
                "risk_12m": next(x["risk"] for x in s["risk"] if x["horizon_months"] == 12),
            }
            expected = {**s["patient_features"], **expected}  # the table's own columns win over a feature's name
            assert {k: r[k] for k in expected} == expected


def test_timeline_deltas_follow_each_track(engine: Engine) -> None:
    """The loader's morph_volume is the lesion's volume, so each delta is a difference of the timeline's volumes."""
    counts = _filled(engine)
    checked = 0
    for name in {r["patient_id"] for r in views.patients(engine)}:
        first: dict[int, float] = {}
        last: dict[int, float] = {}
        for scan in views.timeline(engine, name)["scans"]:
            for les in scan["lesions"]:
                track, vol = les["track_id"], les["volume_mm3"]
                expected = {
                    ref: seen[track] for ref, seen in (("previous", last), ("baseline", first)) if track in seen
                }
                assert set(les["deltas"]) == set(expected)
                for ref, before in expected.items():
                    assert abs(les["deltas"][ref]["morph_volume"]["abs"] - (vol - before)) <= 1e-9 * vol
                    checked += 1
                first.setdefault(track, vol)
                last[track] = vol
    assert checked * 5 == counts["track_deltas"]  # five tags a delta

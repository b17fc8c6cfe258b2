"""A user's own choice of RECIST target lesions: re-assess every processed follow-up with it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from db.results import recist_history, write_recist
from db.session import session_scope
from tracker.recist import Measurement, RecistLesion, VisitMeasurements, recist_timeline, select_targets


def set_targets(engine: Engine, external_id: str, track_numbers: list[int]) -> list[dict[str, Any]]:
    """Make these tracks the patient's targets (RECIST limits checked) and re-assess; one transaction."""
    with session_scope(engine) as s:
        patient, scans, baseline, links = recist_history(s, external_id)
        by_lesion = {les.id: n for n, les, _ in links[scans[0].id] if les is not None}
        lesions = [
            RecistLesion(by_lesion[les.id], les.organ, les.long_axis_mm or 0.0, les.short_axis_mm or 0.0)
            for les in baseline
            if les.id in by_lesion
        ]
        selection = select_targets(lesions, override=track_numbers)
        targets = set(selection.target_ids)
        visits = []
        for scan in scans[1:]:
            diameters = {
                n: Measurement(les.long_axis_mm or 0.0, les.short_axis_mm or 0.0) if les and ch != "merged" else None
                for n, les, ch in links[scan.id]
                if n in targets
            }
            new = any(ch == "new" for _, _, ch in links[scan.id])
            visits.append(VisitMeasurements(diameters=diameters, new_lesion=new))
        assessments = recist_timeline(selection, visits)
        base = selection.baseline_sum_mm
        sums: list[dict[str, Any]] = [
            {"sum_mm": base, "baseline_sum_mm": base, "nadir_mm": base, "change_from_baseline_pct": None,
             "change_from_nadir_pct": None, "new_lesions": False, "response": "BL"}
        ]  # fmt: skip
        for visit, a in zip(visits, assessments, strict=True):
            sums.append(
                {
                    "sum_mm": a.sum_mm,
                    "baseline_sum_mm": base,
                    "nadir_mm": a.nadir_mm,
                    "change_from_baseline_pct": a.change_from_baseline_pct,
                    "change_from_nadir_pct": a.change_from_nadir_pct,
                    "new_lesions": visit.new_lesion,
                    "response": a.response,
                }
            )
        roles = {n: ("target" if n in targets else "non-target") for n in by_lesion.values()}
        write_recist(s, patient, scans, roles, sums)
    return [{"date": sc.scan_date.isoformat(), **v} for sc, v in zip(scans, sums, strict=True)]

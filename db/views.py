"""Read models for users: patient list, a patient's timeline (a stable JSON contract), the cohort table."""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.models import (
    ChangeClass,
    ClinicalEvent,
    Lesion,
    LesionTrack,
    Mask,
    ModelVersion,
    Patient,
    PatientFeature,
    RecistAssessment,
    Registration,
    RiskScore,
    Scan,
    ScanRole,
    ScanState,
    TrackDelta,
    TrackLink,
)
from db.results import REGISTRATION_METRIC_KEYS
from tracker.errors import MetatrackError

TIMELINE_VERSION = 1
# Lesion features whose changes along the track the timeline shows (all are in `track_deltas`).
TIMELINE_DELTA_TAGS = ("morph_volume", "stat_mean", "stat_var", "ih_entropy", "cm_contrast_3D_comb")


def list_patients(session: Session) -> list[dict[str, Any]]:
    """One row per patient: scan count, first and last scan date, how many scans are still unprocessed."""
    rows = session.execute(
        select(
            Patient.external_id,
            func.count(Scan.id),
            func.min(Scan.scan_date),
            func.max(Scan.scan_date),
            func.sum(case((Scan.state == ScanState.INGESTED, 1), else_=0)),
        )
        .join(Scan, Scan.patient_id == Patient.id, isouter=True)
        .group_by(Patient.id)
        .order_by(Patient.external_id)
    ).all()
    return [
        {
            "patient_id": pid,
            "scans": int(n),
            "first_scan": first.isoformat() if first else None,
            "last_scan": last.isoformat() if last else None,
            "unprocessed": int(unproc or 0),
        }
        for pid, n, first, last, unproc in rows
    ]


def _lesion_dict(
    les: Lesion,
    track_numbers: dict[int, int],
    link: TrackLink | None,
    role: str | None,
    deltas: dict,
    merged_from: list[int],
    models: dict[int, str],
) -> dict:
    """A lesion in the timeline; a lesion other tracks merged into has change 'merged' and lists them. ``source``
    says where it came from (given, propagated, detected), with its confidence and segmentation model."""
    change = "merged" if merged_from else (link.change.value if link else None)
    return {
        "id": les.id,
        "label": les.label,
        "track_id": track_numbers.get(les.track_id) if les.track_id else None,
        "change": change,
        "merged_from": merged_from,
        "centroid_mm": [les.centroid_x, les.centroid_y, les.centroid_z],
        "volume_mm3": les.volume_mm3,
        "long_axis_mm": les.long_axis_mm,
        "short_axis_mm": les.short_axis_mm,
        "organ": les.organ,
        "recist_role": role,
        "deltas": deltas,
        "source": les.source,
        "confidence": les.confidence,
        "segmentation_model": models.get(les.model_version_id) if les.model_version_id is not None else None,
    }


def _registration_metric(reg: Registration, column: str) -> float | None:
    """A registration quality column; rows saved before it was filled keep the value in their metrics only."""
    value = getattr(reg, column)
    if value is None:
        value = (reg.metrics or {}).get(REGISTRATION_METRIC_KEYS[column])
    return None if value is None else float(value)


def timeline(session: Session, external_id: str) -> dict[str, Any]:
    """A patient's scans in date order with lesions, tracks, registration quality, RECIST and risk scores.

    This dictionary is the `timeline --json` contract: keys are only ever added, never renamed or removed.
    """
    patient = session.scalar(select(Patient).where(Patient.external_id == external_id))
    if patient is None:
        raise MetatrackError(f"unknown patient {external_id!r}")
    scans = list(session.scalars(select(Scan).where(Scan.patient_id == patient.id).order_by(Scan.scan_date)))
    scan_ids = [s.id for s in scans]
    tracks = {t.id: t for t in session.scalars(select(LesionTrack).where(LesionTrack.patient_id == patient.id))}
    numbers = {tid: t.number for tid, t in tracks.items()}
    lesions: dict[int, list[Lesion]] = defaultdict(list)
    for les in session.scalars(select(Lesion).where(Lesion.scan_id.in_(scan_ids)).order_by(Lesion.label)):
        lesions[les.scan_id].append(les)
    links: dict[int, list[TrackLink]] = defaultdict(list)
    for link in session.scalars(select(TrackLink).where(TrackLink.scan_id.in_(scan_ids))):
        links[link.scan_id].append(link)
    # not an organ map; a given mask wins over one processing derived
    lesion_masks = select(Mask).where(Mask.scan_id.in_(scan_ids), Mask.kind == "lesions").order_by(Mask.id)
    masks = {m.scan_id: m for m in sorted(session.scalars(lesion_masks), key=lambda m: m.source == "given")}
    model_ids = {les.model_version_id for rows in lesions.values() for les in rows} - {None}
    models = {
        mv.id: f"{mv.name}:{mv.version}"
        for mv in session.scalars(select(ModelVersion).where(ModelVersion.id.in_(model_ids)))
    }
    regs = {
        r.moving_scan_id: r
        for r in session.scalars(select(Registration).where(Registration.moving_scan_id.in_(scan_ids)))
    }
    recist = {
        r.scan_id: r for r in session.scalars(select(RecistAssessment).where(RecistAssessment.scan_id.in_(scan_ids)))
    }
    risks: dict[int, list[dict]] = defaultdict(list)
    calendar_risk: list[dict] = []  # scores as of a calendar date (`rescore --as-of`), tied to no scan
    for rs, mv in session.execute(
        select(RiskScore, ModelVersion)
        .join(ModelVersion, ModelVersion.id == RiskScore.model_version_id)
        .where(RiskScore.patient_id == patient.id)
        .order_by(RiskScore.as_of_date, RiskScore.horizon_months)
    ):
        (risks[rs.scan_id] if rs.scan_id is not None else calendar_risk).append(
            {
                "as_of": rs.as_of_date.isoformat(),
                "model": f"{mv.name}:{mv.version}",
                "endpoint": mv.endpoint,
                "horizon_months": rs.horizon_months,
                "risk": rs.risk,
                "risk_lower": rs.risk_lower,
                "risk_upper": rs.risk_upper,
            }
        )
    pfeat: dict[int, dict[str, float | None]] = defaultdict(dict)
    for pf in session.scalars(select(PatientFeature).where(PatientFeature.patient_id == patient.id)):
        pfeat[pf.scan_id][pf.tag] = pf.value
    deltas: dict[tuple[int, int | None], dict] = defaultdict(lambda: defaultdict(dict))
    for d in session.scalars(
        select(TrackDelta).where(TrackDelta.scan_id.in_(scan_ids), TrackDelta.tag.in_(TIMELINE_DELTA_TAGS))
    ):
        deltas[(d.scan_id, d.track_id)][d.reference][d.tag] = {
            "abs": d.abs_change,
            "rel": d.rel_change,
            "per_30d": d.change_per_30d,
        }
    baseline_date = scans[0].scan_date if scans else None
    out_scans = []
    for s in scans:
        lesion_track: dict[int | None, int | None] = {les.id: les.track_id for les in lesions[s.id]}
        by_lesion = {ln.lesion_id: ln for ln in links[s.id] if lesion_track.get(ln.lesion_id) == ln.track_id}
        merged_from: dict[int, list[int]] = defaultdict(list)
        for ln in links[s.id]:
            if ln.change == ChangeClass.MERGED and ln.lesion_id is not None:
                merged_from[ln.lesion_id].append(numbers[ln.track_id])
        reg = regs.get(s.id)
        rec = recist.get(s.id)
        mask = masks.get(s.id)
        out_scans.append(
            {
                "id": s.id,
                "date": s.scan_date.isoformat(),
                "days_from_baseline": (s.scan_date - baseline_date).days if baseline_date else 0,
                "role": s.role.value,
                "modality": s.modality,
                "scanner": s.scanner,
                "state": s.state.value,
                "error": s.error,
                "mask": None
                if mask is None
                else {"labels": len(mask.labels), "empty": mask.is_empty, "source": mask.source},
                "review_reasons": list(s.review_reasons or []),
                "lesions": [
                    _lesion_dict(
                        les,
                        numbers,
                        by_lesion.get(les.id),
                        tracks[les.track_id].recist_role if les.track_id in tracks else None,
                        dict(deltas.get((s.id, les.track_id), {})),
                        sorted(merged_from.get(les.id, [])),
                        models,
                    )
                    for les in lesions[s.id]
                ],
                "vanished_tracks": sorted(
                    numbers[ln.track_id] for ln in links[s.id] if ln.lesion_id is None and ln.track_id in numbers
                ),
                "registration": None
                if reg is None
                else {
                    "preset": reg.preset,
                    "similarity_before": _registration_metric(reg, "similarity_before"),
                    "similarity_after": _registration_metric(reg, "similarity_after"),
                    "folding_fraction": _registration_metric(reg, "folding_fraction"),
                    "needs_review": reg.needs_review,
                    "review_reasons": reg.review_reasons,
                },
                "recist": None
                if rec is None
                else {
                    "sum_mm": rec.sum_mm,
                    "change_from_baseline_pct": rec.change_from_baseline_pct,
                    "change_from_nadir_pct": rec.change_from_nadir_pct,
                    "new_lesions": rec.new_lesions,
                    "response": rec.response,
                    "nadir_mm": rec.nadir_mm,
                    "target_response": rec.target_response,
                    "non_target_response": rec.non_target_response,
                    "non_target_volume_mm3": rec.non_target_volume_mm3,
                    "non_target_nadir_mm3": rec.non_target_nadir_mm3,
                    "target_diameters_mm": rec.target_diameters,
                    "reasons": rec.reasons,
                },
                "patient_features": pfeat.get(s.id, {}),
                "risk": risks.get(s.id, []),
            }
        )
    events = session.scalars(
        select(ClinicalEvent).where(ClinicalEvent.patient_id == patient.id).order_by(ClinicalEvent.event_date)
    )
    return {
        "timeline_version": TIMELINE_VERSION,
        "patient_id": patient.external_id,
        "scans": out_scans,
        "events": [{"kind": e.kind.value, "date": e.event_date.isoformat()} for e in events],
        "calendar_risk": calendar_risk,
    }


def cohort(session: Session) -> list[dict[str, Any]]:
    """One row per scan of every patient: dates, state, lesion burden, RECIST, latest risk, patient features.

    Plain column tuples from a handful of whole-table reads: no per-patient query and no ORM objects, which at
    50,000 scans cost seconds each (benchmarks/scale.py).
    """
    rows: list[dict[str, Any]] = []
    conn = session.connection()  # Core rows: the ORM session's result processing costs a quarter more here
    scans = conn.execute(
        select(
            Patient.external_id,
            Scan.patient_id,
            Scan.id,
            Scan.scan_date,
            Scan.role,
            Scan.modality,
            Scan.scanner,
            Scan.state,
        )
        .join(Patient, Patient.id == Scan.patient_id)
        .order_by(Patient.external_id, Scan.scan_date)
    ).all()
    burden = {
        sid: (int(n), float(v or 0.0))
        for sid, n, v in conn.execute(
            select(Lesion.scan_id, func.count(Lesion.id), func.sum(Lesion.volume_mm3)).group_by(Lesion.scan_id)
        )
    }
    new_counts = {
        sid: int(n)
        for sid, n in conn.execute(
            select(TrackLink.scan_id, func.count(TrackLink.id))
            .where(TrackLink.change == "new")
            .group_by(TrackLink.scan_id)
        )
    }
    recist = {
        sid: (total, response)
        for sid, total, response in conn.execute(
            select(RecistAssessment.scan_id, RecistAssessment.sum_mm, RecistAssessment.response)
        )
    }
    review = dict(conn.execute(select(Registration.moving_scan_id, Registration.needs_review)).all())
    risk12: dict[int | None, float] = {}
    for sid, risk in conn.execute(
        select(RiskScore.scan_id, RiskScore.risk)
        .where(RiskScore.horizon_months == 12, RiskScore.scan_id.is_not(None))
        .order_by(RiskScore.computed_at)
    ):
        risk12[sid] = risk
    pfeat: dict[int, dict[str, float | None]] = defaultdict(dict)
    for sid, tag, value in conn.execute(select(PatientFeature.scan_id, PatientFeature.tag, PatientFeature.value)):
        pfeat[sid][tag] = value
    baseline: dict[int, date] = {}
    for external_id, pid, sid, day, role, modality, scanner, state in scans:
        base = baseline.setdefault(pid, day)  # rows come by patient and date: the first is the baseline
        n, vol = burden.get(sid, (0, 0.0))
        rec = recist.get(sid)
        row = {
            "patient_id": external_id,
            "scan_id": sid,
            "date": day.isoformat(),
            "days_from_baseline": (day - base).days,
            "role": role.value,
            "modality": modality,
            "scanner": scanner,
            "state": state.value,
            "lesions": n,
            "new_lesions": new_counts.get(sid, 0) if role == ScanRole.FOLLOW_UP else 0,
            "total_volume_mm3": round(vol, 3),
            "recist_sum_mm": rec[0] if rec else None,
            "recist_response": rec[1] if rec else None,
            "needs_review": review.get(sid),
            "risk_12m": risk12.get(sid),
        }
        for tag, value in pfeat.get(sid, {}).items():
            row.setdefault(tag, value)  # the table's own columns win over a patient feature of the same name
        rows.append(row)
    return rows

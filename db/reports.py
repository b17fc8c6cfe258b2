"""Read queries for the patient and cohort reports (`metatrack report`): what the timeline does not hold; and a bulk
loader of RECIST rows for synthetic cohorts (the report benchmark)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session

from db import repo, views, visits
from db.models import (
    Blob,
    ChangeClass,
    Lesion,
    LesionTrack,
    ModelVersion,
    Patient,
    RecistAssessment,
    Registration,
    RiskScore,
    Scan,
    ScanRole,
    ScanState,
    TrackLink,
)
from db.session import session_scope
from db.types import table_of
from tracker.errors import MetatrackError

# Registration metrics the report's quality table shows beside the timeline's keys.
REGISTRATION_METRICS = ("ncc_before", "ncc_after", "body_dice", "jacobian_min")


def _model_dict(mv: ModelVersion) -> dict[str, Any]:
    hp = mv.hyperparameters or {}
    return {
        "name": mv.name,
        "version": mv.version,
        "endpoint": mv.endpoint,
        "state": mv.state.value,
        "kind": hp.get("kind"),
        "created_at": mv.created_at.date().isoformat() if mv.created_at else None,
        "data_fingerprint": mv.data_fingerprint,
        "versions": ", ".join(f"{k} {v}" for k, v in sorted((mv.versions or {}).items())),
        "bin_months": hp.get("bin_months"),
        "horizon_months": hp.get("horizon_months"),
    }


def _report_model(session: Session, patient_id: int | None, endpoint: str | None) -> ModelVersion | None:
    """The model the report shows: the promoted one of the endpoint when it scored the patient, else the model of
    the patient's newest risk row (any endpoint when `endpoint` is None)."""
    q = select(ModelVersion).join(RiskScore, RiskScore.model_version_id == ModelVersion.id)
    if patient_id is not None:
        q = q.where(RiskScore.patient_id == patient_id)
    if endpoint is not None:
        q = q.where(ModelVersion.endpoint == endpoint)
    promoted = session.scalar(q.where(ModelVersion.state == "promoted").limit(1))
    return promoted or session.scalar(q.order_by(RiskScore.computed_at.desc(), ModelVersion.id.desc()).limit(1))


def patient_report(session: Session, external_id: str) -> dict[str, Any]:
    """The timeline, the model and survival curve of its risks, per-scan provenance and the files of each scan.

    ``files[scan_id]`` holds (sha256, suffix) of the image, the lesion mask and the registration's forward and
    inverse transforms; ``tracks[number]`` lists (scan_id, lesion label, LPS centroid) per sighting.
    """
    timeline = views.timeline(session, external_id)
    patient = repo.get_patient(session, external_id)
    if patient is None:  # views.timeline raised already; kept for the type checker
        raise MetatrackError(f"unknown patient {external_id!r}")
    mv = _report_model(session, patient.id, None)
    label = f"{mv.name}:{mv.version}" if mv else None
    for s in timeline["scans"]:
        s["risk"] = [r for r in s["risk"] if r["model"] == label]
    scans = repo.patient_scans(session, patient)
    regs = {
        r.moving_scan_id: r
        for r in session.scalars(select(Registration).where(Registration.moving_scan_id.in_([s.id for s in scans])))
    }
    masks = {s.id: repo.latest_mask(session, s) for s in scans}
    needed = {s.image_sha256 for s in scans} | {m.mask_sha256 for m in masks.values() if m}
    for r in regs.values():
        needed |= set(r.forward_sha256) | set(r.inverse_sha256)
    suffix = dict(session.execute(select(Blob.sha256, Blob.suffix).where(Blob.sha256.in_(needed))).all())
    files: dict[int, dict[str, Any]] = {}
    provenance = []
    for s in scans:
        mask = masks[s.id]
        reg = regs.get(s.id)
        files[s.id] = {
            "date": s.scan_date.isoformat(),
            "image": (s.image_sha256, suffix[s.image_sha256]),
            "mask": (mask.mask_sha256, suffix[mask.mask_sha256]) if mask else None,
            "forward": [(h, suffix[h]) for h in reg.forward_sha256] if reg else [],
            "inverse": [(h, suffix[h]) for h in reg.inverse_sha256] if reg else [],
            "processed": s.state == ScanState.PROCESSED,
        }
        metrics = reg.metrics if reg else {}
        provenance.append(
            {
                "date": s.scan_date.isoformat(),
                "settings": ", ".join(f"{k}={v}" for k, v in ((s.processing or {}).get("settings") or {}).items()),
                "versions": ", ".join(
                    f"{k.removeprefix('version_')} {v}" for k, v in sorted(metrics.items()) if k.startswith("version_")
                ),
                "registration": None
                if reg is None
                else f"{metrics.get('engine', reg.preset)}, preset {reg.preset}, seed {reg.seed}, "
                f"{reg.threads} threads",
                "metrics": {k: metrics.get(k) for k in REGISTRATION_METRICS},
            }
        )
    tracks: dict[int, list[tuple[int, int, list[float]]]] = defaultdict(list)
    for number, les in session.execute(
        select(LesionTrack.number, Lesion)
        .join(Lesion, Lesion.track_id == LesionTrack.id)
        .where(LesionTrack.patient_id == patient.id)
        .order_by(LesionTrack.number, Lesion.scan_id)
    ):
        tracks[number].append((les.scan_id, les.label, [les.centroid_x, les.centroid_y, les.centroid_z]))
    curve = None
    if mv is not None:
        rows = session.scalars(
            select(RiskScore)
            .where(RiskScore.patient_id == patient.id, RiskScore.model_version_id == mv.id)
            .where(RiskScore.scan_id.is_not(None))
            .order_by(RiskScore.as_of_date.desc())
        )
        rs = next((r for r in rows if r.curve), None)  # the curve is on one horizon's row per as-of date
        if rs is not None:
            curve = {
                "scan_date": rs.as_of_date.isoformat(),
                "survival": rs.curve,
                "lower": getattr(rs, "curve_lower", None),
                "upper": getattr(rs, "curve_upper", None),
            }
    return {
        "timeline": timeline,
        "model": _model_dict(mv) if mv else None,
        "curve": curve,
        "provenance": provenance,
        "files": files,
        "tracks": dict(tracks),
    }


def cohort_report(session: Session, endpoint: str, risk_horizon_months: int) -> dict[str, Any]:
    """Per patient: scan days, RECIST responses and changes, days of new lesions, follow-up to the `endpoint` event
    or censoring (``db.visits.event_table``), and the risk at the baseline scan from the report's model."""
    follow = visits.event_table(session, endpoint)
    outcome = {p: (t, bool(e)) for p, t, e in follow.itertuples(index=False)}
    mv = _report_model(session, None, endpoint)
    scans: dict[int, list[Any]] = defaultdict(list)
    for s in session.execute(
        select(Scan.id, Scan.patient_id, Scan.scan_date, Scan.role).order_by(Scan.patient_id, Scan.scan_date)
    ):
        scans[s.patient_id].append(s)
    recist = {
        sid: (resp, pct)
        for sid, resp, pct in session.execute(
            select(RecistAssessment.scan_id, RecistAssessment.response, RecistAssessment.change_from_baseline_pct)
        )
    }
    new_scans = set(
        session.scalars(select(TrackLink.scan_id).where(TrackLink.change == ChangeClass.NEW).distinct()).all()
    )
    risk: dict[int, float] = {}
    if mv is not None:
        query = select(RiskScore.scan_id, RiskScore.risk).where(
            RiskScore.model_version_id == mv.id,
            RiskScore.horizon_months == risk_horizon_months,
            RiskScore.scan_id.is_not(None),
        )
        risk = {sid: float(value) for sid, value in session.execute(query) if sid is not None}
    rows = []
    for pid, name in session.execute(select(Patient.id, Patient.external_id).order_by(Patient.external_id)):
        ps = scans.get(pid, [])
        if not ps:
            continue
        base = ps[0].scan_date
        t, event = outcome.get(name, (None, False))
        rows.append(
            {
                "patient_id": name,
                "scan_days": [(s.scan_date - base).days for s in ps],
                "responses": [recist.get(s.id, (None, None))[0] for s in ps],
                "change_pct": [recist.get(s.id, (None, None))[1] for s in ps],
                "new_lesion_days": [
                    (s.scan_date - base).days for s in ps if s.id in new_scans and s.role == ScanRole.FOLLOW_UP
                ],
                "followup_days": t,
                "event": event,
                "risk": risk.get(ps[0].id),
            }
        )
    return {"endpoint": endpoint, "model": f"{mv.name}:{mv.version}" if mv else None, "patients": rows}


def fill_recist(engine: Engine, rows: list[dict[str, Any]]) -> int:
    """Bulk-insert RECIST assessments (columns of ``recist_assessments``) for synthetic cohorts (benchmarks)."""
    with session_scope(engine) as s:
        s.execute(insert(table_of(RecistAssessment)), rows)
    return len(rows)

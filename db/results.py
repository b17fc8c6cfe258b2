"""Loading a patient's processed history for the pipeline, and writing one scan's results."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db import repo
from db.models import (
    Blob,
    ChangeClass,
    FeatureConfig,
    FeatureExtraction,
    FeatureValue,
    Lesion,
    LesionTrack,
    Mask,
    Patient,
    PatientFeature,
    RecistAssessment,
    Registration,
    Scan,
    ScanRole,
    ScanState,
    TrackDelta,
    TrackLink,
)
from db.registry import promoted_model
from db.types import rowcount, table_of, utcnow
from tracker.errors import MetatrackError
from tracker.records import LesionSource, OpenTrack, PatientContext, ScanFiles, ScanOutcome, SegmentationRef, Settings
from tracker.segmentation import SEGMENTATION_ENDPOINT

if TYPE_CHECKING:
    from tracker.recist import TargetSelection, VisitAssessment
    from tracker.store import FileStore, StoredFile

ENGINE_NAME = "metatrack-radiomics"
IN_CHUNK = 5000  # values per IN (...) list
# `registrations` columns and the registration engine's metric each one holds (`registration.engine._quality`).
REGISTRATION_METRIC_KEYS = {
    "similarity_before": "ncc_before",
    "similarity_after": "ncc_after",
    "jacobian_min": "jacobian_min",
    "folding_fraction": "folding_share",
    "runtime_s": "runtime_s",
}


def _blob_path(session: Session, store: FileStore, sha256: str) -> Path:
    blob = session.get(Blob, sha256)
    if blob is None:
        raise MetatrackError(f"store object {sha256[:12]} is not registered in the database")
    return store.find(sha256, blob.suffix)


def _scan_files(session: Session, store: FileStore, scan: Scan, index: int, reg: Registration | None) -> ScanFiles:
    mask = repo.lesions_mask(session, scan)
    organs = repo.latest_mask(session, scan, kind="organs")
    return ScanFiles(
        scan_id=scan.id,
        index=index,
        scan_date=scan.scan_date,
        modality=scan.modality,
        image=_blob_path(session, store, scan.image_sha256),
        mask=_blob_path(session, store, mask.mask_sha256) if mask else None,
        organs=_blob_path(session, store, organs.mask_sha256) if organs else None,
        organ_names={int(k): v for k, v in (organs.label_names or {}).items()} if organs else None,
        forward=[_blob_path(session, store, h) for h in reg.forward_sha256] if reg else [],
        inverse=[_blob_path(session, store, h) for h in reg.inverse_sha256] if reg else [],
        needs_review=reg.needs_review if reg else False,
    )


def _lesion_features(session: Session, lesion_ids: list[int]) -> dict[int, dict[str, float | None]]:
    out: dict[int, dict[str, float | None]] = {i: {} for i in lesion_ids}
    if lesion_ids:
        rows = session.execute(
            select(FeatureValue.lesion_id, FeatureValue.tag, FeatureValue.value).where(
                FeatureValue.lesion_id.in_(lesion_ids), FeatureValue.region == "lesion"
            )
        )
        for lid, tag, value in rows:
            out[lid][tag] = value
    return out


def load_scan_context(session: Session, store: FileStore, scan_id: int) -> PatientContext:
    """The processed history of a scan's patient, with the scan last; earlier scans must all be processed."""
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise MetatrackError(f"scan {scan_id} does not exist")
    ctx = load_context(session, store, scan)
    if scan.role == ScanRole.BASELINE and len(ctx.scans) != 1:
        raise MetatrackError(f"scan {scan_id}: a baseline scan must be the patient's first scan")
    return ctx


def load_context(session: Session, store: FileStore, scan: Scan) -> PatientContext:
    """The processed history of `scan`'s patient, with `scan` last; earlier scans must all be processed."""
    patient = repo.patient_of(session, scan)
    scans = repo.patient_scans(session, patient)
    earlier = [s for s in scans if s.scan_date < scan.scan_date]
    pending = [s for s in earlier if s.state != ScanState.PROCESSED]
    if pending:
        raise MetatrackError(f"scan of {scan.scan_date}: earlier scan of {pending[0].scan_date} is not processed yet")
    regs = {
        r.moving_scan_id: r
        for r in session.scalars(select(Registration).where(Registration.moving_scan_id.in_([s.id for s in scans])))
    }
    history = [*earlier, scan]
    files = [_scan_files(session, store, s, i, regs.get(s.id)) for i, s in enumerate(history)]
    index_of = {s.id: i for i, s in enumerate(history)}
    tracks = list(session.scalars(select(LesionTrack).where(LesionTrack.patient_id == patient.id)))
    links = list(
        session.scalars(select(TrackLink).where(TrackLink.scan_id.in_([s.id for s in earlier])).order_by(TrackLink.id))
    )
    lesions: dict[int | None, Lesion] = {
        les.id: les for les in session.scalars(select(Lesion).where(Lesion.scan_id.in_([s.id for s in earlier])))
    }
    feats = _lesion_features(session, [les.id for les in lesions.values()])
    by_track: dict[int, list[TrackLink]] = {}
    for link in sorted(links, key=lambda ln: (index_of[ln.scan_id], ln.id)):
        by_track.setdefault(link.track_id, []).append(link)
    open_tracks = []
    for t in tracks:
        tl = by_track.get(t.id, [])
        if not tl or tl[-1].change == ChangeClass.MERGED:
            continue  # a track that merged into another ends there
        seen = [ln for ln in tl if ln.lesion_id is not None]
        if not seen:
            continue
        last, first = lesions[seen[-1].lesion_id], lesions[seen[0].lesion_id]
        last_scan, first_scan = history[index_of[last.scan_id]], history[index_of[first.scan_id]]
        open_tracks.append(
            OpenTrack(
                number=t.number,
                last_scan_index=index_of[last.scan_id],
                last_label=last.label,
                last_volume_mm3=last.volume_mm3,
                last_centroid=(last.centroid_x, last.centroid_y, last.centroid_z),
                last_features=feats.get(last.id, {}),
                last_date=last_scan.scan_date,
                last_scan_id=last_scan.id,
                first_features=feats.get(first.id, {}),
                first_date=first_scan.scan_date,
                first_scan_id=first_scan.id,
            )
        )
    targets: dict[int, tuple[str | None, float, float]] = {}
    non_targets: dict[int, tuple[str | None, float, float, float]] = {}
    baseline_sum = nadir = nt_nadir = None
    number_of = {t.id: t.number for t in tracks}
    successors: dict[int, list[int]] = {}
    for t in tracks:
        if t.parent_track_id in number_of:
            successors.setdefault(number_of[t.parent_track_id], []).append(t.number)
    for link in links:
        merged = lesions.get(link.lesion_id) if link.change == ChangeClass.MERGED else None
        if merged is not None and merged.track_id in number_of:
            successors.setdefault(number_of[link.track_id], []).append(number_of[merged.track_id])
    if earlier:
        base_lesions = {les.track_id: les for les in lesions.values() if les.scan_id == earlier[0].id}
        for t in tracks:
            les = base_lesions.get(t.id)
            if les is None:
                continue
            if t.recist_role == "target":
                targets[t.number] = (les.organ, les.long_axis_mm or 0.0, les.short_axis_mm or 0.0)
            elif t.recist_role == "non-target":
                non_targets[t.number] = (les.organ, les.long_axis_mm or 0.0, les.short_axis_mm or 0.0, les.volume_mm3)
        sums = {
            r.scan_id: r
            for r in session.scalars(
                select(RecistAssessment).where(RecistAssessment.scan_id.in_([s.id for s in earlier]))
            )
        }
        if earlier[0].id in sums:
            baseline_sum = sums[earlier[0].id].baseline_sum_mm
            # a partial sum (targets not all measured: NE) is never a nadir
            nadir = min(r.sum_mm for r in sums.values() if r.target_response != "NE")
            volumes = [r.non_target_volume_mm3 for r in sums.values() if r.non_target_volume_mm3 is not None]
            nt_nadir = min(volumes) if volumes else None
    pf = _patient_features(session, [s.id for s in earlier])
    return PatientContext(
        external_id=patient.external_id,
        scans=files,
        open_tracks=open_tracks,
        next_track_number=max([0, *(t.number for t in tracks)]) + 1,
        targets=targets,
        non_targets=non_targets,
        nadir_mm=nadir,
        baseline_sum_mm=baseline_sum,
        previous_patient_features=pf.get(earlier[-1].id) if earlier else None,
        baseline_patient_features=pf.get(earlier[0].id) if earlier else None,
        non_target_nadir_mm3=nt_nadir,
        recist_roles={t.number: t.recist_role for t in tracks if t.recist_role is not None},
        successors=successors,
        segmentation=promoted_segmentation(session, store) if files[-1].mask is None else None,
    )


def promoted_segmentation(session: Session, store: FileStore) -> SegmentationRef | None:
    """The promoted segmentation model (endpoint `tracker.segmentation.SEGMENTATION_ENDPOINT`), if any."""
    mv = promoted_model(session, SEGMENTATION_ENDPOINT)
    return SegmentationRef(mv.id, _blob_path(session, store, mv.file_sha256)) if mv is not None else None


def _patient_features(session: Session, scan_ids: list[int]) -> dict[int, dict[str, float | None]]:
    out: dict[int, dict[str, float | None]] = {}
    for sid, tag, value in session.execute(
        select(PatientFeature.scan_id, PatientFeature.tag, PatientFeature.value).where(
            PatientFeature.scan_id.in_(scan_ids)
        )
    ):
        out.setdefault(sid, {})[tag] = value
    return out


def _transform_hashes(session: Session, stored: list[StoredFile]) -> list[str]:
    """Blob rows for transform files the caller put into the store; their hashes in list order."""
    for f in stored:
        repo.ensure_blob(session, f.sha256, "transform", f.suffix, f.size_bytes)
    return [f.sha256 for f in stored]


def _feature_config(session: Session, cfg: dict[str, Any], engine_version: str) -> FeatureConfig:
    canonical = json.dumps({"config": cfg, "engine_version": engine_version}, sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    row = session.scalar(select(FeatureConfig).where(FeatureConfig.config_sha256 == digest))
    if row is None:
        row = FeatureConfig(
            name=str(cfg.get("name", "custom")),
            config_sha256=digest,
            config=json.loads(json.dumps(cfg, default=str)),
            engine=ENGINE_NAME,
            engine_version=engine_version,
        )
        session.add(row)
        session.flush()
    return row


def save_outcome(
    session: Session,
    scan_id: int,
    outcome: ScanOutcome,
    settings: Settings,
    baseline_id: int,
    transforms: tuple[list[StoredFile], list[StoredFile]] | None = None,
    derived: StoredFile | None = None,
) -> bool:
    """Write everything processing a scan produced; the caller's transaction makes it all-or-nothing.

    ``transforms`` are the registration's (forward, inverse) files and ``derived`` the label map processing built
    for a scan without a given mask (``outcome.derived_mask``), already put into the store by the caller (which
    removes them again if this transaction fails). Returns False, writing nothing, when the scan was processed
    meanwhile by another worker.
    """
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise MetatrackError(f"scan {scan_id} does not exist")
    if scan.state == ScanState.PROCESSED:
        return False
    reg_review = False
    if outcome.registration is not None:
        if transforms is None:
            raise MetatrackError(f"scan {scan.id}: the registration's transform files were not stored")
        r = outcome.registration
        m = r.metrics
        session.add(
            Registration(
                moving_scan_id=scan.id,
                fixed_scan_id=baseline_id,
                preset=str(m.get("preset", settings.preset)),
                forward_sha256=_transform_hashes(session, transforms[0]),
                inverse_sha256=_transform_hashes(session, transforms[1]),
                **{column: _num(m.get(key)) for column, key in REGISTRATION_METRIC_KEYS.items()},
                threads=settings.threads,
                seed=settings.seed,
                metrics={k: (v if isinstance(v, str | int | bool) else _num(v)) for k, v in m.items()},
                needs_review=bool(r.needs_review),
                review_reasons=list(r.review_reasons),
            )
        )
        reg_review = bool(r.needs_review)
    mask = repo.latest_mask(session, scan, given_only=True)
    if outcome.derived_mask is not None:
        if derived is None:
            raise MetatrackError(f"scan {scan.id}: the derived lesion mask was not stored")
        repo.ensure_blob(session, derived.sha256, "mask", derived.suffix, derived.size_bytes)
        mask = repo.add_mask(
            session,
            scan_id=scan.id,
            kind="lesions",
            source="derived",
            mask_sha256=derived.sha256,
            source_format="nifti",
            labels=sorted(les.label for les in outcome.lesions),
            voxel_count=sum(les.voxels for les in outcome.lesions),
            is_empty=not outcome.lesions,
        )
    tracks = {
        t.number: t for t in session.scalars(select(LesionTrack).where(LesionTrack.patient_id == scan.patient_id))
    }
    for number, parent in sorted(outcome.new_tracks.items()):
        t = LesionTrack(
            patient_id=scan.patient_id,
            number=number,
            first_scan_id=scan.id,
            parent_track_id=tracks[parent].id if parent is not None and parent in tracks else None,
            recist_role=outcome.recist_roles.get(number),
        )
        session.add(t)
        tracks[number] = t
    session.flush()
    lesion_rows: dict[int, Lesion] = {}
    for les in outcome.lesions:
        source, confidence = outcome.lesion_sources.get(les.label, (LesionSource.GIVEN, None))
        row = Lesion(
            scan_id=scan.id,
            mask_id=mask.id if mask is not None else None,
            label=les.label,
            voxels=les.voxels,
            volume_mm3=les.volume_mm3,
            centroid_x=les.centroid_lps[0],
            centroid_y=les.centroid_lps[1],
            centroid_z=les.centroid_lps[2],
            long_axis_mm=les.long_axis_mm,
            short_axis_mm=les.short_axis_mm,
            max_diameter_mm=les.max_3d_diameter_mm,
            organ=les.organ,
            track_id=tracks[outcome.lesion_track[les.label]].id if les.label in outcome.lesion_track else None,
            source=str(source),
            confidence=confidence,
            model_version_id=outcome.segmentation_model_id if source != LesionSource.GIVEN else None,
        )
        session.add(row)
        lesion_rows[les.label] = row
    session.flush()
    for link in outcome.links:
        session.add(
            TrackLink(
                track_id=tracks[link.track_number].id,
                scan_id=scan.id,
                lesion_id=lesion_rows[link.lesion_label].id if link.lesion_label is not None else None,
                change=ChangeClass(link.change),
                related_track_id=tracks[link.related_track_number].id if link.related_track_number else None,
                score=link.score,
                needs_review=reg_review,
            )
        )
    if outcome.recist is not None or (outcome.is_baseline and outcome.baseline_sum_mm is not None):
        values = recist_row(outcome.recist, outcome.recist_baseline, outcome.baseline_sum_mm)
        session.add(RecistAssessment(scan_id=scan.id, **values))
    _save_features(session, scan, outcome, lesion_rows, tracks)
    session.add_all(
        PatientFeature(patient_id=scan.patient_id, scan_id=scan.id, tag=tag, value=_num(v))
        for tag, v in sorted(outcome.patient_features.items())
    )
    scan.state = ScanState.PROCESSED
    scan.error = None
    scan.processed_at = utcnow()
    scan.processing = {"settings": settings.to_dict(), "timings": outcome.timings}
    scan.review_reasons = list(outcome.review_reasons) or None
    return True


def recist_row(
    rec: VisitAssessment | None, base: TargetSelection | None, baseline_sum_mm: float | None
) -> dict[str, Any]:
    """The `recist_assessments` values of a follow-up's assessment, or of the baseline ("BL") without one."""
    if rec is not None:
        return {
            "sum_mm": rec.sum_mm,
            "baseline_sum_mm": baseline_sum_mm or 0.0,
            "nadir_mm": rec.nadir_mm,
            "change_from_baseline_pct": rec.change_from_baseline_pct,
            "change_from_nadir_pct": rec.change_from_nadir_pct,
            "new_lesions": rec.new_lesion,
            "response": rec.response,
            "target_response": rec.target_response,
            "non_target_response": rec.non_target_response,
            "non_target_volume_mm3": rec.non_target_volume_mm3,
            "non_target_nadir_mm3": rec.non_target_nadir_mm3,
            "target_diameters": {str(k): v for k, v in rec.target_diameters_mm.items()},
            "reasons": list(rec.reasons),
        }
    volume = base.non_target_volume_mm3 if base is not None and base.non_targets else None
    return {
        "sum_mm": baseline_sum_mm,
        "baseline_sum_mm": baseline_sum_mm or 0.0,
        "nadir_mm": baseline_sum_mm,
        "change_from_baseline_pct": None,
        "change_from_nadir_pct": None,
        "new_lesions": False,
        "response": "BL",
        "target_response": None,
        "non_target_response": None,
        "non_target_volume_mm3": volume,
        "non_target_nadir_mm3": volume,
        "target_diameters": {str(t.track_id): t.sum_diameter_mm for t in base.targets} if base is not None else None,
        "reasons": [],
    }


def _save_features(
    session: Session, scan: Scan, outcome: ScanOutcome, lesion_rows: dict[int, Lesion], tracks: dict[int, Any]
) -> None:
    if outcome.feature_config is None:
        return
    cfg = _feature_config(session, outcome.feature_config, outcome.engine_version or "unknown")
    values = []
    for label, regions in outcome.features.items():
        for region, feats in regions.items():
            values += [
                {
                    "lesion_id": lesion_rows[label].id,
                    "scan_id": scan.id,
                    "config_id": cfg.id,
                    "region": region,
                    "tag": tag,
                    "value": _num(v),
                }
                for tag, v in feats.items()
            ]
    if values:
        session.execute(table_of(FeatureValue).insert(), values)
    for (label, region), runtime in outcome.feature_runtime_s.items():
        error = outcome.feature_errors.get((label, region))
        session.add(
            FeatureExtraction(
                lesion_id=lesion_rows[label].id,
                config_id=cfg.id,
                region=region,
                ok=error is None,
                error=error,
                runtime_s=runtime,
            )
        )
    deltas = [
        {
            "track_id": tracks[number].id,
            "scan_id": scan.id,
            "reference_scan_id": ref_scan,
            "config_id": cfg.id,
            "reference": reference,
            "tag": tag,
            "abs_change": _num(c.abs_change),
            "rel_change": _num(c.rel_change),
            "change_per_30d": _num(c.change_per_30d),
        }
        for number, ref_scan, reference, changes in outcome.deltas
        for tag, c in changes.items()
    ]
    if deltas:
        session.execute(table_of(TrackDelta).insert(), deltas)


def _num(v: Any) -> float | None:
    """A finite float, or None (NaN/inf/None/non-numbers are stored as NULL)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


def record_failure(session: Session, scan_id: int, error: str) -> bool:
    """Mark a scan failed with its error (its results were rolled back); returns whether it was marked.

    A scan that is processed (committed by another run, or by this one before a later step failed) is left as it
    is: the check and the update are one statement in the caller's transaction.
    """
    res = session.execute(
        update(table_of(Scan))
        .where(table_of(Scan).c.id == scan_id, table_of(Scan).c.state != ScanState.PROCESSED)
        .values(state=ScanState.FAILED, error=error[:2000])
    )
    return rowcount(res) == 1


def pending_scans(session: Session, external_id: str | None = None) -> list[tuple[str, list[int]]]:
    """Patients with scans to process, each with its unprocessed scan ids in date order."""
    return [(ext, ids) for _, ext, ids in pending_patients(session, external_id)]


def pending_patients(session: Session, external_id: str | None = None) -> list[tuple[int, str, list[int]]]:
    """(patient id, external id, unprocessed scan ids in date order) of the patients with scans to process."""
    q = select(Patient.id, Patient.external_id, Scan.id).join(Scan, Scan.patient_id == Patient.id)
    q = q.where(Scan.state != ScanState.PROCESSED)
    if external_id is not None:
        q = q.where(Patient.external_id == external_id)
    out: dict[tuple[int, str], list[int]] = {}
    for pk, ext, sid in session.execute(q.order_by(Patient.external_id, Scan.scan_date)):
        out.setdefault((pk, ext), []).append(sid)
    return [(pk, ext, ids) for (pk, ext), ids in out.items()]


def patient_pending_scans(session: Session, patient_id: int) -> list[int]:
    """A patient's unprocessed scan ids in date order (read again once the patient is claimed)."""
    q = select(Scan.id).where(Scan.patient_id == patient_id, Scan.state != ScanState.PROCESSED)
    return list(session.scalars(q.order_by(Scan.scan_date)))


def blob_hashes(session: Session, hashes: Sequence[str]) -> set[str]:
    """Which of these hashes have a `blobs` row."""
    found: set[str] = set()
    hashes = list(hashes)
    for i in range(0, len(hashes), IN_CHUNK):
        found.update(session.scalars(select(Blob.sha256).where(Blob.sha256.in_(hashes[i : i + IN_CHUNK]))))
    return found


def scan_frame(session: Session, store: FileStore, external_id: str, day: date) -> ScanFiles:
    """A processed scan's files and transforms to the baseline frame, by patient and date."""
    patient = repo.get_patient(session, external_id)
    if patient is None:
        raise MetatrackError(f"unknown patient {external_id!r}")
    scans = repo.patient_scans(session, patient)
    for i, scan in enumerate(scans):
        if scan.scan_date == day:
            if i > 0 and scan.state != ScanState.PROCESSED:
                raise MetatrackError(f"patient {external_id!r}: scan of {day} is not registered yet; run `process`")
            reg = session.scalar(select(Registration).where(Registration.moving_scan_id == scan.id))
            return _scan_files(session, store, scan, i, reg)
    dates = ", ".join(s.scan_date.isoformat() for s in scans)
    raise MetatrackError(f"patient {external_id!r} has no scan dated {day} (scans: {dates})")


class RecistHistory(NamedTuple):
    """What re-assessing a patient's RECIST needs (`recist_history`)."""

    patient: Patient
    scans: list[Scan]  # processed, in date order
    baseline: list[Lesion]
    links: dict[int, list]  # scan id -> (track number, lesion, change, number of the lesion's track)
    parents: dict[int, int]  # track split from another -> that track (numbers)
    unmasked: set[int]  # scans without a lesion mask: nothing on them was measured


def recist_history(session: Session, external_id: str) -> RecistHistory:
    """A patient's processed scans, baseline lesions, links and split parents, for re-assessing its RECIST."""
    patient = repo.get_patient(session, external_id)
    if patient is None:
        raise MetatrackError(f"unknown patient {external_id!r}")
    scans = [s for s in repo.patient_scans(session, patient) if s.state == ScanState.PROCESSED]
    if not scans:
        raise MetatrackError(f"patient {external_id!r} has no processed scans; run `metatrack process`")
    tracks = list(session.scalars(select(LesionTrack).where(LesionTrack.patient_id == patient.id)))
    numbers = {t.id: t.number for t in tracks}
    parents = {t.number: numbers[t.parent_track_id] for t in tracks if t.parent_track_id in numbers}
    lesions: dict[int | None, Lesion] = {
        les.id: les for les in session.scalars(select(Lesion).where(Lesion.scan_id.in_([s.id for s in scans])))
    }
    links: dict[int, list] = {s.id: [] for s in scans}
    for ln in session.scalars(select(TrackLink).where(TrackLink.scan_id.in_([s.id for s in scans]))):
        les = lesions.get(ln.lesion_id)
        owner = numbers.get(les.track_id) if les is not None and les.track_id is not None else None
        links[ln.scan_id].append((numbers[ln.track_id], les, ln.change.value, owner))
    baseline = [les for les in lesions.values() if les.scan_id == scans[0].id]
    unmasked = {s.id for s in scans if repo.latest_mask(session, s) is None}
    return RecistHistory(patient, scans, baseline, links, parents, unmasked)


def write_recist(
    session: Session, patient: Patient, scans: list[Scan], roles: dict[int, str], sums: list[dict[str, Any]]
) -> None:
    """Replace a patient's target roles (marked as a user override) and RECIST assessments."""
    for t in session.scalars(select(LesionTrack).where(LesionTrack.patient_id == patient.id)):
        t.recist_role = roles.get(t.number)
        t.recist_override = True
    rows = {
        r.scan_id: r
        for r in session.scalars(select(RecistAssessment).where(RecistAssessment.scan_id.in_([s.id for s in scans])))
    }
    for scan, values in zip(scans, sums, strict=True):
        row = rows.get(scan.id) or RecistAssessment(scan_id=scan.id)
        for k, v in values.items():
            setattr(row, k, v)
        session.add(row)


def reset_from(session: Session, external_id: str, day: date) -> int:
    """Forget the results of a patient's scans dated `day` or later, so that they are processed again.

    Lesions (with their features), the lesion masks processing derived, links, registrations, RECIST and patient
    features of those scans go; tracks that started there go; the scans return to `ingested`. Returns how many
    scans were reset.
    """
    patient = repo.get_patient(session, external_id)
    if patient is None:
        raise MetatrackError(f"unknown patient {external_id!r}")
    scans = [s for s in repo.patient_scans(session, patient) if s.scan_date >= day]
    ids = [s.id for s in scans]
    if not ids:
        return 0
    for model in (TrackDelta, TrackLink, PatientFeature, RecistAssessment):
        session.execute(delete(model).where(model.scan_id.in_(ids)))
    session.execute(delete(FeatureValue).where(FeatureValue.scan_id.in_(ids)))
    lesion_ids = select(Lesion.id).where(Lesion.scan_id.in_(ids))
    session.execute(delete(FeatureExtraction).where(FeatureExtraction.lesion_id.in_(lesion_ids)))
    session.execute(delete(Lesion).where(Lesion.scan_id.in_(ids)))
    session.execute(delete(Mask).where(Mask.scan_id.in_(ids), Mask.source == "derived"))
    session.execute(delete(Registration).where(Registration.moving_scan_id.in_(ids)))
    session.execute(delete(LesionTrack).where(LesionTrack.first_scan_id.in_(ids)))
    for scan in scans:
        scan.state, scan.error, scan.processed_at, scan.processing = ScanState.INGESTED, None, None, None
        scan.review_reasons = None
    return len(ids)

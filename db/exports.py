"""Reads for the exports: the lesion table as a stream, each processed scan's files and results, provenance.

The lesion table is read with ``yield_per`` (a server-side cursor on PostgreSQL), so exporting a whole cohort holds
one batch of rows in memory, never the table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import case, literal, select
from sqlalchemy.orm import Session, aliased

from db.models import (
    FeatureConfig,
    FeatureValue,
    HarmonisationModel,
    Lesion,
    LesionTrack,
    Mask,
    ModelState,
    ModelVersion,
    Patient,
    RecistAssessment,
    Scan,
    ScanState,
    TrackLink,
)
from db.repo import lesions_mask
from db.results import _blob_path
from tracker.errors import MetatrackError
from tracker.exports.records import ExportLesion, ExportScan
from tracker.exports.tables import KEY_COLUMNS
from tracker.records import ChangeClass
from tracker.segmentation import SEGMENTATION_ENDPOINT
from tracker.store import FileStore

# The lesion stream's columns, in the order `lesion_stream` yields them (the feature part is long: one tag a row).
LESION_STREAM_COLUMNS = (*KEY_COLUMNS, "tag", "value", "harmonised")


def _patient_id(session: Session, external_id: str) -> int:
    pid = session.scalar(select(Patient.id).where(Patient.external_id == external_id))
    if pid is None:
        raise MetatrackError(f"unknown patient {external_id!r}")
    return pid


def feature_tags(session: Session, external_id: str | None = None) -> list[str]:
    """The lesion feature tags present (of one patient, or of everyone), sorted."""
    q = select(FeatureValue.tag).distinct()
    if external_id is not None:
        pid = _patient_id(session, external_id)
        q = q.join(Scan, Scan.id == FeatureValue.scan_id).where(Scan.patient_id == pid)
    return sorted(session.scalars(q))


def lesion_stream(session: Session, external_id: str | None = None, batch_rows: int = 5000) -> Iterator[list[tuple]]:
    """Batches of lesion rows (`LESION_STREAM_COLUMNS`, one feature value a row; a lesion without features is one
    row with no region/tag), lesion by lesion, at most `batch_rows` rows a batch, read with ``yield_per``.

    A lesion other tracks merged into has change "merged", as in the timeline."""
    merge = aliased(TrackLink)
    merged_into = select(merge.id).where(merge.lesion_id == Lesion.id, merge.change == ChangeClass.MERGED).exists()
    q = (
        select(
            Patient.external_id,
            Scan.scan_date,
            Scan.id,
            Lesion.id,
            Lesion.label,
            LesionTrack.number,
            case((merged_into, literal(ChangeClass.MERGED, TrackLink.change.type)), else_=TrackLink.change),
            LesionTrack.recist_role,
            Lesion.organ,
            Lesion.volume_mm3,
            Lesion.long_axis_mm,
            Lesion.short_axis_mm,
            Lesion.source,
            Lesion.confidence,
            FeatureValue.region,
            FeatureConfig.name,
            FeatureConfig.config_sha256,
            FeatureConfig.engine_version,
            FeatureValue.tag,
            FeatureValue.value,
            FeatureValue.harmonised,
        )
        .join(Scan, Scan.id == Lesion.scan_id)
        .join(Patient, Patient.id == Scan.patient_id)
        .join(LesionTrack, LesionTrack.id == Lesion.track_id, isouter=True)
        .join(TrackLink, (TrackLink.track_id == Lesion.track_id) & (TrackLink.scan_id == Lesion.scan_id), isouter=True)
        .join(FeatureValue, FeatureValue.lesion_id == Lesion.id, isouter=True)
        .join(FeatureConfig, FeatureConfig.id == FeatureValue.config_id, isouter=True)
        .where(Scan.state == ScanState.PROCESSED)
        # lesion ids grow in processing order (a patient's scans in date order); the feature key follows the
        # unique index (lesion, config, region, tag), so one lesion region's values arrive together
        .order_by(Lesion.id, FeatureValue.config_id, FeatureValue.region, FeatureValue.tag)
    )
    if external_id is not None:
        q = q.where(Scan.patient_id == _patient_id(session, external_id))
    # Core on the session's connection (same transaction): ORM row processing would cost several times the query
    result = session.connection().execution_options(yield_per=batch_rows).execute(q)
    for part in result.partitions():
        yield [
            (
                r[0],
                r[1].isoformat(),
                *r[2:6],
                r[6].value if r[6] is not None else None,
                *r[7:],
            )
            for r in part
        ]


def processed_scans(session: Session, store: FileStore, external_id: str) -> list[ExportScan]:
    """Every processed scan of a patient in date order, with its files, settings and lesions (track numbers)."""
    pid = _patient_id(session, external_id)
    scans = list(
        session.scalars(
            select(Scan).where(Scan.patient_id == pid, Scan.state == ScanState.PROCESSED).order_by(Scan.scan_date)
        )
    )
    if not scans:
        raise MetatrackError(f"patient {external_id!r} has no processed scans")
    tracks = session.execute(
        select(LesionTrack.id, LesionTrack.number, LesionTrack.recist_role).where(LesionTrack.patient_id == pid)
    ).all()
    numbers = {tid: number for tid, number, _ in tracks}
    roles = {tid: role for tid, _, role in tracks}
    out = []
    for scan in scans:
        mask: Mask | None = lesions_mask(session, scan)
        links = session.execute(
            select(TrackLink.track_id, TrackLink.lesion_id, TrackLink.change).where(TrackLink.scan_id == scan.id)
        ).all()
        changes = {t: c for t, _, c in links}
        merged_into = {les for _, les, c in links if c == ChangeClass.MERGED}
        recist = session.scalar(select(RecistAssessment.response).where(RecistAssessment.scan_id == scan.id))
        lesions = [
            ExportLesion(
                label=les.label,
                track=numbers[les.track_id] if les.track_id is not None else None,
                change=(
                    ChangeClass.MERGED.value
                    if les.id in merged_into
                    else changes[les.track_id].value
                    if les.track_id in changes
                    else None
                ),
                recist_role=roles.get(les.track_id) if les.track_id is not None else None,
                organ=les.organ,
                volume_mm3=les.volume_mm3,
                long_axis_mm=les.long_axis_mm,
                short_axis_mm=les.short_axis_mm,
            )
            for les in scan.lesions
        ]
        out.append(
            ExportScan(
                scan_id=scan.id,
                scan_date=scan.scan_date,
                modality=scan.modality,
                source_format=scan.source_format,
                image=_blob_path(session, store, scan.image_sha256),
                mask=_blob_path(session, store, mask.mask_sha256) if mask else None,
                settings=dict((scan.processing or {}).get("settings", {})),
                dicom=dict(scan.dicom) if scan.dicom else None,
                recist_response=recist,
                lesions=lesions,
            )
        )
    return out


def provenance(session: Session, config_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """What made the exported numbers: feature configs, active harmonisations, promoted risk and segmentation
    models."""
    promoted = list(session.scalars(select(ModelVersion).where(ModelVersion.state == ModelState.PROMOTED)))
    configs = select(FeatureConfig).order_by(FeatureConfig.id)
    if config_ids is not None:
        configs = configs.where(FeatureConfig.id.in_(list(config_ids)))
    return {
        "feature_configs": [
            {"name": c.name, "sha256": c.config_sha256, "engine": c.engine, "engine_version": c.engine_version}
            for c in session.scalars(configs)
        ],
        "harmonisations": [
            {"name": h.name, "kind": h.kind, "config_id": h.config_id}
            for h in session.scalars(select(HarmonisationModel).where(HarmonisationModel.active))
        ],
        "risk_models": [
            {"model": f"{m.name}:{m.version}", "endpoint": m.endpoint, "versions": m.versions}
            for m in promoted
            if m.endpoint != SEGMENTATION_ENDPOINT
        ],
        "segmentation_models": [
            {"model": f"{m.name}:{m.version}", "versions": m.versions, "metrics": m.metrics}
            for m in promoted
            if m.endpoint == SEGMENTATION_ENDPOINT
        ],
    }

"""Queries and writes the rest of metatrack needs; every function takes the caller's session (its transaction)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Blob, Lesion, Mask, Patient, Scan, ScanState


def add_patient(session: Session, external_id: str) -> Patient:
    patient = Patient(external_id=external_id)
    session.add(patient)
    session.flush()
    return patient


def patient_of(session: Session, scan: Scan) -> Patient:
    patient = session.get(Patient, scan.patient_id)
    assert patient is not None  # a foreign key
    return patient


def add_scan(session: Session, **columns: Any) -> Scan:
    """A new scan row (columns as in `db.models.Scan`), flushed so that it has its id."""
    scan = Scan(**columns)
    session.add(scan)
    session.flush()
    return scan


def add_mask(session: Session, **columns: Any) -> Mask:
    """A new mask row of a scan (columns as in `db.models.Mask`)."""
    mask = Mask(**columns)
    session.add(mask)
    session.flush()
    return mask


def get_patient(session: Session, external_id: str) -> Patient | None:
    return session.scalar(select(Patient).where(Patient.external_id == external_id))


def patient_ids(session: Session, external_ids: list[str]) -> list[int]:
    """Database ids of patients given by their pseudonyms (unknown ones are left out)."""
    return list(session.scalars(select(Patient.id).where(Patient.external_id.in_(external_ids)).order_by(Patient.id)))


def scan_by_image(session: Session, sha256: str) -> Scan | None:
    return session.scalar(select(Scan).where(Scan.image_sha256 == sha256))


def patient_scans(session: Session, patient: Patient) -> list[Scan]:
    return list(session.scalars(select(Scan).where(Scan.patient_id == patient.id).order_by(Scan.scan_date)))


def ensure_blob(session: Session, sha256: str, kind: str, suffix: str, size_bytes: int) -> Blob:
    """The blob row for a stored file, created if new."""
    blob = session.get(Blob, sha256)
    if blob is None:
        blob = Blob(sha256=sha256, kind=kind, suffix=suffix, size_bytes=size_bytes)
        session.add(blob)
        session.flush()
    return blob


def latest_mask(session: Session, scan: Scan, kind: str = "lesions", *, given_only: bool = False) -> Mask | None:
    """The newest mask of a kind ('lesions' or 'organs') of a scan; a given (ingested) mask wins over one that
    processing derived, which `given_only` leaves out."""
    q = select(Mask).where(Mask.scan_id == scan.id, Mask.kind == kind)
    if given_only:
        q = q.where(Mask.source == "given")
    return session.scalar(q.order_by((Mask.source == "given").desc(), Mask.id.desc()).limit(1))


def lesions_mask(session: Session, scan: Scan) -> Mask | None:
    """The lesion mask a scan's lesions are measured on: for a processed scan the one its lesions point to (a mask
    ingested since counts once the scan is processed again), else its newest given mask."""
    if scan.state == ScanState.PROCESSED:
        measured = session.scalar(select(Lesion.mask_id).where(Lesion.scan_id == scan.id).limit(1))
        if measured is not None:
            return session.get(Mask, measured)
        return latest_mask(session, scan)
    return latest_mask(session, scan, given_only=True)


def table_counts(session: Session) -> dict[str, int]:
    """Row count of every table (used to prove that a failed unit of work changed nothing)."""
    from db.models import Base

    return {
        name: int(session.scalar(select(func.count()).select_from(table)) or 0)
        for name, table in Base.metadata.tables.items()
    }

"""The segmentation model's training data: every ingested scan with a lesion mask the user gave, and its files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from db.models import Blob, Mask, Patient, Scan

if TYPE_CHECKING:
    from tracker.store import FileStore

LESION_MASK = "lesions"
GIVEN = "given"


@dataclass(frozen=True)
class LabelledScan:
    """A scan with a given lesion mask: the patient's pseudonym, the stored image and mask and their hashes."""

    patient: str
    scan_id: int
    image: Path
    mask: Path
    image_sha256: str
    mask_sha256: str


def labelled_scans(session: Session, store: FileStore) -> list[LabelledScan]:
    """Every scan with a lesion mask whose source is "given" (the newest such mask of a scan), by patient and date."""
    image_blob, mask_blob = aliased(Blob), aliased(Blob)
    rows = session.execute(
        select(
            Patient.external_id,
            Scan.id,
            Scan.image_sha256,
            image_blob.suffix,
            Mask.mask_sha256,
            mask_blob.suffix,
        )
        .join(Scan, Scan.patient_id == Patient.id)
        .join(Mask, Mask.scan_id == Scan.id)
        .join(image_blob, image_blob.sha256 == Scan.image_sha256)
        .join(mask_blob, mask_blob.sha256 == Mask.mask_sha256)
        .where(Mask.kind == LESION_MASK, Mask.source == GIVEN)
        .order_by(Patient.external_id, Scan.scan_date, Mask.id)
    ).all()
    latest: dict[int, LabelledScan] = {}
    for patient, scan_id, image_sha, image_suffix, mask_sha, mask_suffix in rows:
        latest[scan_id] = LabelledScan(
            patient,
            scan_id,
            store.find(image_sha, image_suffix),
            store.find(mask_sha, mask_suffix),
            image_sha,
            mask_sha,
        )
    return list(latest.values())

"""Ingest scans and masks: validate, store once by content hash, record them in one transaction per scan."""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from db import repo
from db.session import session_scope
from tracker.errors import MetatrackError
from tracker.imageio import LoadedImage, LoadedMask, read_image, read_mask, volume_suffix
from tracker.records import ScanRole, ScanState
from tracker.store import FileStore, StoredFile, StoreUnit, sha256_file, sha256_files

if TYPE_CHECKING:
    import SimpleITK as sitk
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from db.models import Patient, Scan

MODALITIES = ("CT", "MR")
# Organ label codes of organ maps (the simulator writes these); lesions take the organ under most of their voxels.
DEFAULT_ORGAN_NAMES = {1: "soft_tissue", 2: "liver", 3: "lung", 4: "bone", 5: "fat", 6: "lymph_node"}
MANIFEST_REQUIRED = ("patient_id", "date", "image")
EXTERNAL_ID_MAX = 64


@dataclass(frozen=True)
class ScanRequest:
    """What the user asks to ingest: one image (and optionally its lesion mask) of one patient at one date.

    ``external_id`` is the patient's pseudonym (the manifest's ``patient_id`` column, the CLI's ``--patient``).
    """

    external_id: str
    scan_date: date
    image: Path
    mask: Path | None = None
    modality: str = "CT"
    scanner: str | None = None
    site: str | None = None
    role: ScanRole | None = None  # None: baseline for a new patient, else follow-up
    series_uid: str | None = None
    organs: Path | None = None  # an organ label map on the image's grid (codes: DEFAULT_ORGAN_NAMES)


@dataclass(frozen=True)
class IngestResult:
    external_id: str  # the patient's pseudonym
    scan_date: date
    scan_id: int
    role: ScanRole
    status: str  # ingested | already present
    lesion_labels: int
    mask_empty: bool | None


def parse_date(text: str, where: str) -> date:
    """An ISO date (YYYY-MM-DD), or an error naming where it came from."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise MetatrackError(f"{where}: date {text!r} is not an ISO date (YYYY-MM-DD)") from exc


def _check_request(req: ScanRequest) -> None:
    if not req.external_id or len(req.external_id) > EXTERNAL_ID_MAX or req.external_id != req.external_id.strip():
        raise MetatrackError(
            f"{req.image}: patient ID {req.external_id!r} must be 1-{EXTERNAL_ID_MAX} characters without outer spaces"
        )
    if req.modality not in MODALITIES:
        raise MetatrackError(f"{req.image}: modality {req.modality!r} is not one of {', '.join(MODALITIES)}")


def _store_image(files: StoreUnit, loaded: LoadedImage) -> StoredFile:
    """Store the image: single files as they are; DICOM series converted to NIfTI, keyed by the series' hash."""
    digest = sha256_files(loaded.content_files)
    if loaded.source_format != "dicom":
        return files.put_file(loaded.content_files[0], volume_suffix(loaded.content_files[0]) or "", sha256=digest)
    return _store_volume(files, loaded.image, digest)


def _store_volume(files: StoreUnit, image: sitk.Image, digest: str) -> StoredFile:
    """Store an image read from another format as NIfTI, keyed by the hash of its source content."""
    import SimpleITK as sitk

    suffix = ".nii.gz"
    existing = files.store.path_for(digest, suffix)
    if existing.exists():
        return StoredFile(digest, existing, existing.stat().st_size, True, suffix)
    root = files.store.root
    with tempfile.TemporaryDirectory(dir=root.parent if root.parent.exists() else None) as tmp:
        out = Path(tmp) / f"volume{suffix}"
        sitk.WriteImage(image, str(out), useCompression=True)
        return files.put_file(out, suffix, sha256=digest)


def _scanner_from_dicom(loaded: LoadedImage) -> str | None:
    if loaded.source_format != "dicom":
        return None
    import pydicom

    ds = pydicom.dcmread(str(loaded.content_files[0]), stop_before_pixels=True)
    parts = [str(getattr(ds, k, "")).strip() for k in ("Manufacturer", "ManufacturerModelName")]
    return " ".join(p for p in parts if p) or None


def _resolve_role(session: Session, req: ScanRequest, patient: Patient | None) -> ScanRole:
    """Apply the ordering rules: a baseline first, follow-ups after it, no processed scan left behind."""
    name = req.image
    if patient is None:
        if req.role == ScanRole.FOLLOW_UP:
            raise MetatrackError(
                f"{name}: unknown patient {req.external_id!r} for a follow-up; ingest the baseline scan first"
            )
        return ScanRole.BASELINE
    scans = repo.patient_scans(session, patient)
    if any(s.scan_date == req.scan_date for s in scans):
        raise MetatrackError(f"{name}: patient {req.external_id!r} already has a scan dated {req.scan_date}")
    baseline = next((s for s in scans if s.role == ScanRole.BASELINE), None)
    if req.role == ScanRole.BASELINE and baseline is not None:
        raise MetatrackError(f"{name}: patient {req.external_id!r} already has a baseline scan ({baseline.scan_date})")
    if baseline is not None and req.scan_date < baseline.scan_date:
        raise MetatrackError(
            f"{name}: date {req.scan_date} is before patient {req.external_id!r}'s baseline ({baseline.scan_date})"
        )
    later_done = [s for s in scans if s.scan_date > req.scan_date and s.state not in (ScanState.INGESTED,)]
    if later_done:
        raise MetatrackError(
            f"{name}: date {req.scan_date} is out of order: patient {req.external_id!r} has a processed scan of "
            f"{later_done[0].scan_date}; re-process from that date to insert an earlier scan"
        )
    return ScanRole.FOLLOW_UP if req.role is None else req.role


def ingest_scan(engine: Engine, store: FileStore, req: ScanRequest) -> IngestResult:
    """Validate and ingest one scan (and its mask) in one transaction; the database is unchanged on error."""
    _check_request(req)
    present = _present_without_reading(engine, req)
    if present is not None:
        return present
    loaded = read_image(req.image, req.series_uid)
    mask: LoadedMask | None = read_mask(req.mask, loaded.image) if req.mask is not None else None
    organs: LoadedMask | None = read_mask(req.organs, loaded.image) if req.organs is not None else None
    image_hash = sha256_files(loaded.content_files)
    mask_hash = sha256_files(mask.content_files) if mask else None
    with StoreUnit(store) as files, session_scope(engine) as session:
        existing = repo.scan_by_image(session, image_hash)
        if existing is not None:
            return _already_present(session, existing, req, mask_hash)
        patient = repo.get_patient(session, req.external_id)
        role = _resolve_role(session, req, patient)
        if patient is None:
            patient = repo.add_patient(session, req.external_id)
        stored = _store_image(files, loaded)
        repo.ensure_blob(session, stored.sha256, "image", stored.suffix, stored.size_bytes)
        img = loaded.image
        scan = repo.add_scan(
            session,
            patient_id=patient.id,
            scan_date=req.scan_date,
            role=role,
            modality=req.modality,
            scanner=req.scanner or _scanner_from_dicom(loaded),
            site=req.site,
            image_sha256=stored.sha256,
            source_format=loaded.source_format,
            source_name=loaded.source_name,
            size_xyz=list(img.GetSize()),
            spacing_xyz=[float(v) for v in img.GetSpacing()],
            origin_xyz=[float(v) for v in img.GetOrigin()],
            direction=[float(v) for v in img.GetDirection()],
        )
        for loaded_mask, kind in ((mask, "lesions"), (organs, "organs")):
            if loaded_mask is not None:
                _add_mask(session, files, scan.id, loaded_mask, kind)
        return IngestResult(
            req.external_id,
            req.scan_date,
            scan.id,
            role,
            "ingested",
            len(mask.labels) if mask else 0,
            (mask.voxel_count == 0) if mask else None,
        )


def _present_without_reading(engine: Engine, req: ScanRequest) -> IngestResult | None:
    """A single-file scan already ingested is recognised by its hash alone, without decoding it again."""
    if not req.image.is_file() or (req.mask is not None and not req.mask.is_file()):
        return None
    with session_scope(engine) as session:
        existing = repo.scan_by_image(session, sha256_file(req.image))
        if existing is None:
            return None
        mask_hash = sha256_file(req.mask) if req.mask is not None else None
        return _already_present(session, existing, req, mask_hash)


def _add_mask(session: Session, files: StoreUnit, scan_id: int, loaded: LoadedMask, kind: str) -> None:
    """Store the reader's label image (keyed by the hash of the mask's source content) and record it."""
    stored = _store_volume(files, loaded.mask, sha256_files(loaded.content_files))
    repo.ensure_blob(session, stored.sha256, "mask", stored.suffix, stored.size_bytes)
    names = {str(k): v for k, v in DEFAULT_ORGAN_NAMES.items()} if kind == "organs" else None
    repo.add_mask(
        session,
        scan_id=scan_id,
        kind=kind,
        mask_sha256=stored.sha256,
        source_format=loaded.source_format,
        labels=loaded.labels,
        label_names=names,
        voxel_count=loaded.voxel_count,
        is_empty=loaded.voxel_count == 0,
    )


def _already_present(session: Session, scan: Scan, req: ScanRequest, mask_hash: str | None) -> IngestResult:
    patient = repo.patient_of(session, scan)
    if patient.external_id != req.external_id or scan.scan_date != req.scan_date:
        raise MetatrackError(
            f"{req.image}: duplicate scan: this image is already ingested as patient {patient.external_id!r} "
            f"on {scan.scan_date}"
        )
    current = repo.latest_mask(session, scan)
    if mask_hash is not None and (current is None or current.mask_sha256 != mask_hash):
        raise MetatrackError(f"{req.mask}: scan already ingested with a different mask (or none)")
    return IngestResult(
        req.external_id,
        req.scan_date,
        scan.id,
        scan.role,
        "already present",
        len(current.labels) if current else 0,
        current.is_empty if current else None,
    )


def read_manifest(path: Path) -> list[ScanRequest]:
    """Scan requests from a manifest CSV (patient_id, date, image[, mask, modality, scanner, site, role, series]).

    Relative paths are relative to the manifest's folder; rows come back sorted by patient, then date.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [{k.strip(): (v or "") for k, v in r.items() if k} for r in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MetatrackError(f"{path}: cannot read the manifest ({exc})") from exc
    for r in rows:
        if "patient_id" not in r and "patient" in r:
            r["patient_id"] = r.pop("patient")
    missing = [c for c in MANIFEST_REQUIRED if rows and c not in rows[0]]
    if missing:
        raise MetatrackError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    base = path.parent
    out = []
    for i, r in enumerate(rows, start=2):
        where = f"{path}:{i}"
        role = (r.get("role") or "").strip() or None
        if role is not None and role not in {m.value for m in ScanRole}:
            raise MetatrackError(f"{where}: role {role!r} is not baseline or follow-up")
        mask = (r.get("mask") or "").strip()
        organs = (r.get("organs") or "").strip()
        out.append(
            ScanRequest(
                external_id=r["patient_id"].strip(),
                scan_date=parse_date(r["date"], where),
                image=base / r["image"].strip(),
                mask=base / mask if mask else None,
                modality=(r.get("modality") or "CT").strip() or "CT",
                scanner=(r.get("scanner") or "").strip() or None,
                site=(r.get("site") or "").strip() or None,
                role=ScanRole(role) if role else None,
                series_uid=(r.get("series") or "").strip() or None,
                organs=base / organs if organs else None,
            )
        )
    return sorted(out, key=lambda q: (q.external_id, q.scan_date))


def ingest_many(
    engine: Engine,
    store: FileStore,
    requests: Sequence[ScanRequest],
    on_done: Callable[[ScanRequest, IngestResult | None, MetatrackError | None], None] | None = None,
) -> tuple[list[IngestResult], list[tuple[ScanRequest, MetatrackError]]]:
    """Ingest each request in its own transaction; failures are collected, not fatal to the others."""
    done: list[IngestResult] = []
    failed: list[tuple[ScanRequest, MetatrackError]] = []
    for req in requests:
        try:
            res = ingest_scan(engine, store, req)
        except MetatrackError as exc:
            failed.append((req, exc))
            if on_done:
                on_done(req, None, exc)
            continue
        done.append(res)
        if on_done:
            on_done(req, res, None)
    return done, failed

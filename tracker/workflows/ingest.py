"""Ingest scans and masks: validate, store once by content hash, record them in one transaction per scan.

A DICOM series gives the scan its date (StudyDate, then SeriesDate, AcquisitionDate) and modality when the user
gives none, and its kept headers (`tracker.dicom.headers.KEPT_KEYS`) go to `scans.dicom`. Nothing that identifies
the patient or the source is recorded: `scans.source_name` is the SeriesInstanceUID of a DICOM series, else the
image hash's first 16 hex digits, never a file or folder name.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import functools
import hashlib
import json
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from db import repo
from db.session import DatabaseUnavailable as _Unavailable
from db.session import is_conflict, is_connection_loss, is_disk_full, retrying, session_scope
from tracker.errors import MetatrackError, describe_db_error, is_database_error, os_error_message
from tracker.imageio import LoadedImage, LoadedMask, MaskContext, read_image, read_mask, volume_suffix
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
# The earliest scan date taken: radiography began in 1895 and CT in 1971, so anything older is a typo (0024 for
# 2024, 1024 for 2024); 1900 refuses those and no real archive date.
EARLIEST_DATE = date(1900, 1, 1)
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# Characters a terminal acts on or hides: controls and ANSI escapes (Cc), zero-width and bidi marks (Cf), line and
# paragraph separators (Zl, Zp). A pseudonym with one prints as something else than what must be typed.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})
# What rich (the CLI's printer) reads as a markup tag: [bold], [/], [red on white], [link=...], [@click], [#fff]
_MARKUP_TAG = re.compile(r"\[[a-z#/@][^\[\]]*\]")


class DiskFull(MetatrackError):
    """No space left on the device: the rest of a batch would fail the same way, so it stops."""


class NotAttempted(MetatrackError):
    """A request a stopped batch did not get to."""


@dataclass(frozen=True)
class ScanRequest:
    """What the user asks to ingest: one image (and optionally its lesion mask) of one patient at one date.

    ``external_id`` is the patient's pseudonym (the manifest's ``patient_id`` column, the CLI's ``--patient``).
    """

    external_id: str
    scan_date: date | None  # None: the DICOM headers' date
    image: Path
    mask: Path | None = None
    modality: str | None = None  # None: the DICOM header's Modality, else CT
    scanner: str | None = None
    site: str | None = None
    role: ScanRole | None = None  # None: baseline for a new patient, else follow-up
    series_uid: str | None = None
    organs: Path | None = None  # an organ label map on the image's grid (codes: DEFAULT_ORGAN_NAMES)
    rois: tuple[str, ...] = ()  # RTSTRUCT ROIs to take as lesions (names or regular expressions)
    segments: tuple[str, ...] = ()  # DICOM SEG segments to take as lesions (numbers, names or regular expressions)
    recursive: bool = False  # search the DICOM folder's subfolders too
    replace_mask: bool = False  # the scan is ingested already with another given mask: this one replaces it


@dataclass(frozen=True)
class IngestResult:
    external_id: str  # the patient's pseudonym
    scan_date: date
    scan_id: int
    role: ScanRole
    status: str  # ingested | already present
    lesion_labels: int
    mask_empty: bool | None
    notes: tuple[str, ...] = ()  # what the user should know (a fractional SEG thresholded, ...)


def _today() -> date:
    """Today where it is latest (local or UTC): a scan taken today is never refused as "in the future"."""
    return max(date.today(), datetime.now(UTC).date())


def parse_date(text: str, where: str, *, future_ok: bool = False) -> date:
    """A calendar date written YYYY-MM-DD (no week or ordinal dates), from 1900 on and not after today (unless
    `future_ok`), or an error naming where it came from."""
    value = text.strip()
    if not _ISO_DAY.fullmatch(value):
        raise MetatrackError(f"{where}: date {text!r} is not an ISO date (YYYY-MM-DD)")
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise MetatrackError(f"{where}: date {text!r} is not an ISO date (YYYY-MM-DD): {exc}") from exc
    if day < EARLIEST_DATE:
        raise MetatrackError(f"{where}: date {value} is before {EARLIEST_DATE} (a typo in the year?)")
    if not future_ok and day > _today():
        raise MetatrackError(f"{where}: date {value} is in the future (today is {_today()})")
    return day


def check_external_id(external_id: str, where: str) -> None:
    """A pseudonym must be 1-64 printable characters, without outer spaces or text a terminal reads as markup."""
    if not external_id or len(external_id) > EXTERNAL_ID_MAX or external_id != external_id.strip():
        raise MetatrackError(
            f"{where}: patient ID {external_id!r} must be 1-{EXTERNAL_ID_MAX} characters without outer spaces"
        )
    bad = dict.fromkeys(c for c in external_id if unicodedata.category(c) in _INVISIBLE)
    if bad:
        codes = ", ".join(f"U+{ord(c):04X}" for c in bad)
        raise MetatrackError(
            f"{where}: patient ID {external_id!r} holds control or invisible character(s) {codes}; "
            "use printable characters only"
        )
    tag = _MARKUP_TAG.search(external_id)
    if tag:
        raise MetatrackError(
            f"{where}: patient ID {external_id!r} holds {tag.group()!r}, which terminals print as formatting; "
            "use other brackets or none"
        )


def _check_request(req: ScanRequest) -> None:
    check_external_id(req.external_id, str(req.image))
    if req.modality is not None and req.modality not in MODALITIES:
        raise MetatrackError(f"{req.image}: modality {req.modality!r} is not one of {', '.join(MODALITIES)}")


def _with_header_values(req: ScanRequest, loaded: LoadedImage) -> ScanRequest:
    """The request with its date and modality settled: the user's, checked against a DICOM header's, else the
    header's (date: StudyDate, then SeriesDate, AcquisitionDate), else CT for the modality."""
    series = loaded.dicom
    modality, scan_date = req.modality, req.scan_date
    if series is not None:
        header = series.modality
        if header not in MODALITIES:
            shown = header or "(empty)"
            raise MetatrackError(f"{req.image}: the series' Modality is {shown}; metatrack reads CT or MR")
        if modality is not None and modality != header:
            raise MetatrackError(f"{req.image}: --modality {modality} contradicts the series' Modality {header}")
        modality = header
        if scan_date is None and series.scan_date is not None:
            scan_date = parse_date(series.scan_date.isoformat(), f"{req.image}: {series.date_keyword}")
    if scan_date is None:
        why = "its headers hold no StudyDate, SeriesDate or AcquisitionDate" if series else "it is not DICOM"
        raise MetatrackError(f"{req.image}: no scan date given and {why}; give --date YYYY-MM-DD")
    return dataclasses.replace(req, modality=modality or "CT", scan_date=scan_date)


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
        try:
            sitk.WriteImage(image, str(out), useCompression=True)
        except RuntimeError as exc:  # ITK's message does not say why (a full disk reads "Could not write ...")
            if _disk_nearly_full(Path(tmp), image):
                raise OSError(errno.ENOSPC, "No space left on device", str(out)) from exc
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise MetatrackError(f"{out}: cannot write the converted volume ({reason})") from exc
        return files.put_file(out, suffix, sha256=digest)


def _disk_nearly_full(folder: Path, image: sitk.Image) -> bool:
    """Whether `folder`'s file system lacks the room for `image` uncompressed (or 1 MiB)."""
    need = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent() * image.GetNumberOfComponentsPerPixel()
    try:
        return shutil.disk_usage(folder).free < max(need, 1 << 20)
    except OSError:
        return False


def _settled_date(req: ScanRequest) -> date:
    """The request's date once settled (by the user, or by `_with_header_values`)."""
    if req.scan_date is None:
        raise MetatrackError(f"{req.image}: no scan date given; give --date YYYY-MM-DD")
    return req.scan_date


def _scanner_from_dicom(loaded: LoadedImage) -> str | None:
    if loaded.dicom is None:
        return None
    parts = [loaded.dicom.metadata.get(k) or "" for k in ("manufacturer", "manufacturer_model_name")]
    return " ".join(p for p in parts if p)[:64] or None


def _source_name(loaded: LoadedImage, image_hash: str) -> str:
    """What names the source without naming the patient: the SeriesInstanceUID, else the start of the hash."""
    if loaded.dicom is not None and loaded.dicom.metadata.get("series_instance_uid"):
        return str(loaded.dicom.metadata["series_instance_uid"])
    return f"sha256:{image_hash[:16]}"


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
    day = _settled_date(req)
    if any(s.scan_date == day for s in scans):
        raise MetatrackError(f"{name}: patient {req.external_id!r} already has a scan dated {day}")
    baseline = next((s for s in scans if s.role == ScanRole.BASELINE), None)
    if req.role == ScanRole.BASELINE and baseline is not None:
        raise MetatrackError(f"{name}: patient {req.external_id!r} already has a baseline scan ({baseline.scan_date})")
    if baseline is not None and day < baseline.scan_date:
        raise MetatrackError(
            f"{name}: date {day} is before patient {req.external_id!r}'s baseline ({baseline.scan_date})"
        )
    later_done = [s for s in scans if s.scan_date > day and s.state not in (ScanState.INGESTED,)]
    if later_done:
        raise MetatrackError(
            f"{name}: date {day} is out of order: patient {req.external_id!r} has a processed scan of "
            f"{later_done[0].scan_date}; re-process from that date to insert an earlier scan"
        )
    return ScanRole.FOLLOW_UP if req.role is None else req.role


def ingest_scan(engine: Engine, store: FileStore, req: ScanRequest) -> IngestResult:
    """Validate and ingest one scan (and its mask) in one transaction; the database is unchanged on error.

    The modality is taken in any case (stored upper-case). When another run commits the same patient or scan
    first (the same manifest ingested twice at once), the scan is looked at again: its rows are "already present".
    """
    req = dataclasses.replace(req, modality=req.modality.strip().upper() if req.modality else None)
    _check_request(req)
    if req.scan_date is not None:
        present = _present_without_reading(engine, req)
        if present is not None:
            return present
    beside = [p for p in (req.mask, req.organs) if p is not None]
    loaded = read_image(req.image, req.series_uid, recursive=req.recursive, beside=beside)
    req = _with_header_values(req, loaded)
    if (req.rois or req.segments) and req.mask is None:
        raise MetatrackError(f"{req.image}: --roi and --segment choose in the --mask (an RTSTRUCT or DICOM SEG)")
    context = MaskContext(loaded.dicom, req.rois, req.segments)
    mask: LoadedMask | None = read_mask(req.mask, loaded.image, context) if req.mask is not None else None
    organs: LoadedMask | None = read_mask(req.organs, loaded.image, MaskContext(loaded.dicom)) if req.organs else None
    image_hash = sha256_files(loaded.content_files)
    mask_hash = mask_digest(mask) if mask else None
    try:
        return _record(engine, store, req, loaded, mask, organs, image_hash, mask_hash)
    except Exception as exc:
        if not (is_conflict(exc) or isinstance(exc, MetatrackError)):
            raise
        first = exc
    # another run may have committed this scan (or its patient) since this one looked: look again with its rows in
    # view, so that the outcome is the one of running after it
    with session_scope(engine) as session:
        existing = repo.scan_by_image(session, image_hash)
        present = _already_present(session, existing, req, mask_hash) if existing is not None else None
        if present is not None:
            return present
    if not is_conflict(first):
        raise first
    return _record(engine, store, req, loaded, mask, organs, image_hash, mask_hash)


def _record(
    engine: Engine,
    store: FileStore,
    req: ScanRequest,
    loaded: LoadedImage,
    mask: LoadedMask | None,
    organs: LoadedMask | None,
    image_hash: str,
    mask_hash: str | None,
) -> IngestResult:
    """Store the files and record the scan in one transaction (the unit's new files leave with a failure)."""
    with StoreUnit(store) as files:
        try:
            return _record_in(engine, files, req, loaded, mask, organs, image_hash, mask_hash)
        except Exception as exc:
            if is_conflict(exc):
                files.keep_on_failure()
            raise


def _record_in(
    engine: Engine,
    files: StoreUnit,
    req: ScanRequest,
    loaded: LoadedImage,
    mask: LoadedMask | None,
    organs: LoadedMask | None,
    image_hash: str,
    mask_hash: str | None,
) -> IngestResult:
    with session_scope(engine) as session:
        existing = repo.scan_by_image(session, image_hash)
        if existing is not None:
            present = _already_present(session, existing, req, mask_hash)
            if present is not None:
                return present
            assert mask is not None  # a mask to add
            return _add_lesion_mask(session, files, existing, req, mask)
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
            source_name=_source_name(loaded, image_hash),
            dicom=loaded.dicom.metadata if loaded.dicom else None,
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
            _settled_date(req),
            scan.id,
            role,
            "ingested",
            len(mask.labels) if mask else 0,
            (mask.voxel_count == 0) if mask else None,
            mask.notes if mask else (),
        )


def _add_lesion_mask(
    session: Session, files: StoreUnit, scan: Scan, req: ScanRequest, mask: LoadedMask
) -> IngestResult:
    """A drawn mask for a scan ingested before (without one, or `--replace-mask`). A processed scan keeps its
    results until it is processed again: the note says how."""
    _add_mask(session, files, scan.id, mask, "lesions")
    notes = list(mask.notes)
    if scan.state == ScanState.PROCESSED:
        notes.append(
            f"scan of {scan.scan_date} was processed with other lesions: run `metatrack process --patient "
            f"{req.external_id} --reprocess-from {scan.scan_date}` for this mask to count"
        )
    return IngestResult(
        req.external_id,
        scan.scan_date,
        scan.id,
        scan.role,
        "mask added",
        len(mask.labels),
        mask.voxel_count == 0,
        tuple(notes),
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


def mask_digest(loaded: LoadedMask) -> str:
    """The key of a mask's label image: the hash of its source files, and of the ROIs/segments taken from them
    (one RTSTRUCT read with another --roi is another label image)."""
    digest = sha256_files(loaded.content_files)
    if loaded.label_names is None:
        return digest
    chosen = json.dumps(sorted(loaded.label_names.items())).encode()
    return hashlib.sha256(bytes.fromhex(digest) + chosen).hexdigest()


def _add_mask(session: Session, files: StoreUnit, scan_id: int, loaded: LoadedMask, kind: str) -> None:
    """Store the reader's label image (keyed by the hash of the mask's source content) and record it."""
    stored = _store_volume(files, loaded.mask, mask_digest(loaded))
    repo.ensure_blob(session, stored.sha256, "mask", stored.suffix, stored.size_bytes)
    names = {str(k): v for k, v in DEFAULT_ORGAN_NAMES.items()} if kind == "organs" else None
    if loaded.label_names:  # RTSTRUCT ROI or SEG segment names
        names = {str(k): v for k, v in loaded.label_names.items()}
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


def _already_present(session: Session, scan: Scan, req: ScanRequest, mask_hash: str | None) -> IngestResult | None:
    """The result of ingesting a scan that is there already; None when its lesion mask is to be added: the scan
    has no given mask yet (none, or only the one processing derived), or ``req.replace_mask`` replaces it."""
    patient = repo.patient_of(session, scan)
    if patient.external_id != req.external_id or scan.scan_date != req.scan_date:
        raise MetatrackError(
            f"{req.image}: duplicate scan: this image is already ingested as patient {patient.external_id!r} "
            f"on {scan.scan_date}"
        )
    current = repo.latest_mask(session, scan, given_only=True)
    if mask_hash is not None and (current is None or current.mask_sha256 != mask_hash):
        if current is not None and not req.replace_mask:
            raise MetatrackError(
                f"{req.mask}: scan already ingested with a different mask (--replace-mask replaces it)"
            )
        return None
    return IngestResult(
        req.external_id,
        _settled_date(req),
        scan.id,
        scan.role,
        "already present",
        len(current.labels) if current else 0,
        current.is_empty if current else None,
    )


def read_manifest(path: Path) -> list[ScanRequest]:
    """Scan requests from a manifest CSV (patient_id, date, image[, mask, modality, scanner, site, role, series,
    organs, roi, segment]; roi and segment cells hold names separated by ';').

    Relative paths are relative to the manifest's folder; rows come back sorted by patient, then date. A manifest
    without rows, and a row without an image, are errors (an empty cell would name the manifest's own folder).
    Row numbers in messages are the CSV's line numbers (the header is row 1).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = [{k.strip(): (v or "") for k, v in r.items() if isinstance(k, str)} for r in reader]
            header = [h.strip() for h in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MetatrackError(f"{path}: cannot read the manifest ({exc})") from exc
    if not header:
        expected = ",".join(MANIFEST_REQUIRED)
        raise MetatrackError(f"{path}: the manifest is empty (expected a header {expected} and rows)")
    if "patient_id" not in header and "patient" in header:
        header.append("patient_id")
        for r in rows:
            r["patient_id"] = r.pop("patient", "")
    missing = [c for c in MANIFEST_REQUIRED if c not in header]
    if missing:
        raise MetatrackError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    if not rows:
        raise MetatrackError(f"{path}: the manifest has a header but no rows: nothing to ingest")
    base = path.parent
    out = []
    for i, r in enumerate(rows, start=2):
        where = f"{path}: row {i}"
        role = (r.get("role") or "").strip() or None
        if role is not None and role not in {m.value for m in ScanRole}:
            raise MetatrackError(f"{where}: role {role!r} is not baseline or follow-up")
        image = (r.get("image") or "").strip()
        if not image:
            raise MetatrackError(f"{where}: image is empty")
        mask = (r.get("mask") or "").strip()
        organs = (r.get("organs") or "").strip()
        out.append(
            ScanRequest(
                external_id=r["patient_id"].strip(),
                scan_date=parse_date(r["date"], where),
                image=base / image,
                mask=base / mask if mask else None,
                modality=(r.get("modality") or "").strip().upper() or None,
                scanner=(r.get("scanner") or "").strip() or None,
                site=(r.get("site") or "").strip() or None,
                role=ScanRole(role) if role else None,
                series_uid=(r.get("series") or "").strip() or None,
                organs=base / organs if organs else None,
                rois=_choices(r.get("roi")),
                segments=_choices(r.get("segment")),
            )
        )
    return sorted(out, key=lambda q: (q.external_id, _settled_date(q)))


def _choices(cell: str | None) -> tuple[str, ...]:
    """A manifest cell of ROI or segment names, separated by ';'."""
    return tuple(v.strip() for v in (cell or "").split(";") if v.strip())


OnDone = Callable[[ScanRequest, IngestResult | None, MetatrackError | None], None]


def _row_error(req: ScanRequest, exc: Exception) -> MetatrackError:
    """One line naming the request's image and the cause of an error that is not metatrack's own."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return DiskFull(os_error_message(exc))
        path = exc.filename if exc.filename is not None else req.image
        where = f"{req.image}" if str(path) == str(req.image) else f"{req.image}: {path}"
        return MetatrackError(f"{where}: {exc.strerror or exc}")
    if is_disk_full(exc):
        return DiskFull(f"{req.image}: the database's disk is full ({describe_db_error(exc)})")
    if is_connection_loss(exc) or is_database_error(exc):
        return MetatrackError(f"{req.image}: database error: {describe_db_error(exc)}")
    return MetatrackError(f"{req.image}: {type(exc).__name__}: {exc}".splitlines()[0])


def ingest_many(
    engine: Engine,
    store: FileStore,
    requests: Sequence[ScanRequest],
    on_done: OnDone | None = None,
    *,
    notify: Callable[[str], None] | None = None,
) -> tuple[list[IngestResult], list[tuple[ScanRequest, MetatrackError]]]:
    """Ingest each request in its own transaction; failures are collected, not fatal to the others.

    Every failure is a :class:`MetatrackError` of one line naming the image. A lost database connection is tried
    again (:func:`db.session.retrying`, announced through `notify`). A full disk (:class:`DiskFull`) or a database
    that stays unreachable stops the batch: the requests not attempted are listed in the failures as
    :class:`NotAttempted` (`on_done` is not called for them).
    """
    done: list[IngestResult] = []
    failed: list[tuple[ScanRequest, MetatrackError]] = []
    for k, req in enumerate(requests):
        try:
            res = retrying(functools.partial(ingest_scan, engine, store, req), f"ingesting {req.image}", notify=notify)
        except Exception as exc:
            err = exc if isinstance(exc, MetatrackError) else _row_error(req, exc)
            if err is not exc:
                err.__cause__ = exc
            failed.append((req, err))
            if on_done:
                on_done(req, None, err)
            stop = isinstance(err, DiskFull) or is_connection_loss(exc) or isinstance(exc, _Unavailable)
            if stop:
                why = NotAttempted(f"not attempted: the batch stopped at {req.image} ({err})")
                failed += [(rest, why) for rest in requests[k + 1 :]]
                break
            continue
        done.append(res)
        if on_done:
            on_done(req, res, None)
    return done, failed

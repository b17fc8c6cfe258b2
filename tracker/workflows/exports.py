"""Exports: lesion and survival tables, track label maps, DICOM SEG + SR; each with a JSON manifest beside it.

Files appear complete or not at all: each is written under a temporary name and renamed. Exports hold no
identifying value: only the pseudonym and UIDs, unless the original DICOM files are given for DICOM export.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db import exports as db_exports
from db.session import session_scope
from db.visits import VISIT_KEY_COLUMNS, event_table, visit_table
from tracker.errors import MetatrackError
from tracker.exports.manifest import write_manifest
from tracker.exports.tables import TableFormat, lesion_columns, pivot_lesion_rows, table_format, write_table

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tracker.exports.records import ExportScan
    from tracker.store import FileStore

LESION_BATCH_ROWS = 5000  # long rows per database batch; the writers batch wide rows on their own


@contextmanager
def _written(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed to it when the block succeeds, removed when it fails."""
    if path.is_dir():
        raise MetatrackError(f"{path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise MetatrackError(f"{path.parent}: no such folder")
    tmp = path.with_name(f".tmp{os.getpid()}.{path.name}")  # same suffix: writers that go by it still can
    try:
        yield tmp
        if tmp.exists():  # a writer may decline to write (a SEG of a scan without lesions)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _out_dir(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise MetatrackError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_lesions(engine: Engine, out: Path, fmt: str, patient: str | None = None) -> dict[str, Any]:
    """One row per lesion x scan x region (lesion, shell) x feature config, streamed from the database to `out`."""
    kind = table_format(fmt)
    with session_scope(engine) as s:
        tags = db_exports.feature_tags(s, patient)
        with _written(out) as tmp:
            rows = pivot_lesion_rows(db_exports.lesion_stream(s, patient, LESION_BATCH_ROWS), tags)
            n = write_table(rows, lesion_columns(tags), tmp, kind)
        provenance = db_exports.provenance(s)
    settings = {"format": kind.value, "patient": patient, "features": len(tags)}
    manifest = write_manifest(out, "lesions", settings, provenance, [out.name])
    return {"file": str(out), "rows": n, "features": len(tags), "manifest": str(manifest)}


def export_survival(engine: Engine, endpoint: str, out: Path, fmt: str = "csv") -> dict[str, Any]:
    """One row per patient: time, event (first `endpoint` event, else censoring), baseline and latest features."""
    from tracker.exports.survival import survival_table

    kind = table_format(fmt)
    with session_scope(engine) as s:
        visits, events = visit_table(s), event_table(s, endpoint)
        provenance = db_exports.provenance(s)
    features = [c for c in visits.columns if c not in VISIT_KEY_COLUMNS]
    table = survival_table(visits, events, features)
    if table.empty:
        raise MetatrackError(f"no patient has both a processed scan and a {endpoint!r} event or censoring date")
    with _written(out) as tmp:
        if kind is TableFormat.CSV:
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)
    settings = {"format": kind.value, "endpoint": endpoint, "latest": "last processed scan on or before time_days"}
    manifest = write_manifest(out, "survival", settings, provenance, [out.name])
    return {"file": str(out), "patients": len(table), "events": int(table["event"].sum()), "manifest": str(manifest)}


def _scans(engine: Engine, store: FileStore, patient: str) -> tuple[list[ExportScan], dict[str, Any]]:
    with session_scope(engine) as s:
        return db_exports.processed_scans(s, store, patient), db_exports.provenance(s)


def _processing_settings(scans: list[ExportScan]) -> list[dict[str, Any]]:
    distinct: list[dict[str, Any]] = []
    for scan in scans:
        if scan.settings not in distinct:
            distinct.append(scan.settings)
    return distinct


def _file_stem(scan: ExportScan) -> str:
    return f"{scan.scan_date.isoformat()}_scan{scan.scan_id}"


def _track_map(scan: ExportScan) -> tuple[Any, Any, Any]:
    """(image, lesion labels, track label map) of a processed scan, read from the store."""
    import numpy as np
    import SimpleITK as sitk

    from tracker.exports.labelmap import lesion_labels, track_label_map
    from tracker.lesions import Geometry

    image = sitk.ReadImage(str(scan.image))
    if scan.mask is None:
        labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.int32)
    else:
        labels = lesion_labels(
            sitk.GetArrayFromImage(sitk.ReadImage(str(scan.mask))), Geometry.from_image(image), scan.settings
        )
    return image, labels, track_label_map(labels, scan.lesions)


def export_masks(engine: Engine, store: FileStore, patient: str, out_dir: Path) -> dict[str, Any]:
    """Each processed scan's final lesion label map as NIfTI on the scan's grid, label = track number."""
    import SimpleITK as sitk

    scans, provenance = _scans(engine, store, patient)
    folder = _out_dir(out_dir)
    files = []
    for scan in scans:
        image, _, tracks = _track_map(scan)
        label_image = sitk.GetImageFromArray(tracks)
        label_image.CopyInformation(image)
        name = f"{_file_stem(scan)}_tracks.nii.gz"
        with _written(folder / name) as tmp:
            sitk.WriteImage(label_image, str(tmp), useCompression=True)
        files.append(name)
    settings = {"patient": patient, "label": "track number", "processing": _processing_settings(scans)}
    manifest = write_manifest(folder, "masks", settings, provenance, files)
    return {"folder": str(folder), "files": files, "manifest": str(manifest)}


def export_dicom(
    engine: Engine, store: FileStore, patient: str, out_dir: Path, source_dicom: Path | None = None
) -> dict[str, Any]:
    """A DICOM SEG and an SR TID 1500 for every processed scan of the patient whose source was DICOM.

    Scans from other formats are listed as skipped; a patient with none from DICOM is refused in one line. With
    `source_dicom` (a folder holding the original instances) the objects carry the originals' patient and study;
    without it, the pseudonym and the stored UIDs only.
    """
    import SimpleITK as sitk

    from tracker.exports import dicom
    from tracker.lesions import Geometry

    scans, provenance = _scans(engine, store, patient)
    from_dicom = [scan for scan in scans if scan.dicom]
    skipped = [
        f"{scan.scan_date.isoformat()}: source was {scan.source_format}, not DICOM" for scan in scans if not scan.dicom
    ]
    if not from_dicom:
        raise MetatrackError(
            f"patient {patient!r}: no processed scan came from DICOM ({len(scans)} from "
            f"{', '.join(sorted({s.source_format for s in scans}))}); DICOM SEG/SR need a DICOM source "
            "(use `export masks`)"
        )
    if source_dicom is not None and not source_dicom.is_dir():
        raise MetatrackError("--source-dicom: not a folder")  # its path may name the patient: not repeated
    originals = dicom.index_source_folder(source_dicom) if source_dicom is not None else None
    folder = _out_dir(out_dir)
    files: list[str] = []
    order = {scan.scan_id: k for k, scan in enumerate(scans, start=1)}
    for scan in from_dicom:
        image, labels, tracks = _track_map(scan)
        what = f"scan {scan.scan_date.isoformat()}"
        headers = dicom.check_dicom_source(scan.dicom, image.GetSize()[2], what)
        if originals is not None:
            sources = dicom.read_source_instances(originals, headers["sop_instance_uids"])
        else:
            sources = dicom.minimal_source_images(headers, Geometry.from_image(image), image.GetSize(), patient)
        stem = _file_stem(scan)
        with _written(folder / f"{stem}_seg.dcm") as tmp:
            seg = dicom.write_seg(tracks, scan.lesions, sources, patient, tmp)
        if seg is not None:
            files.append(f"{stem}_seg.dcm")
        means = dicom.mean_intensities(sitk.GetArrayFromImage(image), labels, scan.lesions)
        measures = [dicom.LesionMeasures(les, means.get(les.label)) for les in scan.lesions]
        with _written(folder / f"{stem}_sr.dcm") as tmp:
            dicom.write_sr(
                measures,
                scan.recist_response,
                seg,
                sources,
                headers["modality"],
                patient,
                tmp,
                time_point=scan.scan_date.isoformat(),
                time_point_order=order[scan.scan_id],
            )
        files.append(f"{stem}_sr.dcm")
    settings = {
        "patient": patient,
        "identity": "original DICOM patient and study" if source_dicom is not None else "pseudonym and UIDs only",
        "processing": _processing_settings(from_dicom),
    }
    manifest = write_manifest(folder, "dicom", settings, provenance, files)
    return {"folder": str(folder), "files": files, "skipped": skipped, "manifest": str(manifest)}

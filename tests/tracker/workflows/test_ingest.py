"""Ingest: round trip, idempotence, and every kind of bad input rejected with the database unchanged."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from sqlalchemy import Engine
from typer.testing import CliRunner

from cli.main import app
from db import repo
from db.models import Mask, Scan, ScanRole
from db.session import session_scope
from tracker.errors import MetatrackError
from tracker.store import FileStore, sha256_file
from tracker.workflows.ingest import ScanRequest, ingest_scan, read_manifest

SHAPE_ZYX = (12, 16, 20)
SPACING_XYZ = (1.5, 1.5, 3.0)


def _image(seed: int, dtype: type = np.int16) -> sitk.Image:
    arr = np.random.default_rng(seed).normal(40, 10, SHAPE_ZYX).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin((-15.0, -12.0, 4.0))
    return img


def _mask(labels: dict[int, tuple[slice, slice, slice]], ref: sitk.Image) -> sitk.Image:
    arr = np.zeros(SHAPE_ZYX, np.uint8)
    for lab, sl in labels.items():
        arr[sl] = lab
    m = sitk.GetImageFromArray(arr)
    m.CopyInformation(ref)
    return m


def _write(img: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """A baseline and a follow-up with label masks, and assorted bad inputs."""
    d = tmp_path / "in"
    base, fu = _image(1), _image(2)
    f: dict[str, Path] = {
        "base": _write(base, d / "base.nii.gz"),
        "base_mask": _write(_mask({1: np.s_[2:6, 3:8, 4:9], 2: np.s_[7:10, 9:13, 10:15]}, base), d / "bm.nii.gz"),
        "fu": _write(fu, d / "fu.nrrd"),
        "fu_mask": _write(_mask({1: np.s_[2:6, 3:7, 4:8]}, fu), d / "fm.nrrd"),
        "fu2": _write(_image(3), d / "fu2.mha"),
        "empty_mask": _write(_mask({}, fu), d / "empty.nii.gz"),
    }
    shifted = _mask({1: np.s_[2:6, 3:8, 4:9]}, base)
    shifted.SetSpacing((1.5, 1.5, 3.5))
    f["bad_spacing_mask"] = _write(shifted, d / "bad_spacing.nii.gz")
    small = sitk.GetImageFromArray(np.zeros((12, 16, 19), np.uint8))
    small.SetSpacing(SPACING_XYZ)
    f["bad_size_mask"] = _write(small, d / "bad_size.nii.gz")
    prob = sitk.GetImageFromArray(np.full(SHAPE_ZYX, 0.5, np.float32))
    prob.CopyInformation(base)
    f["prob_mask"] = _write(prob, d / "prob.nii.gz")
    nan = sitk.GetArrayFromImage(_image(4, np.float32))
    nan[3, 3, 3] = np.nan
    nan_img = sitk.GetImageFromArray(nan)
    nan_img.CopyInformation(base)
    f["nan"] = _write(nan_img, d / "nan.nii.gz")
    f["nan_mha"] = _write(nan_img, d / "nan.mha")
    corrupt = d / "corrupt.nii.gz"
    corrupt.write_bytes(f["base"].read_bytes()[:200])
    f["corrupt"] = corrupt
    return f


def _counts(engine: Engine) -> dict[str, int]:
    with session_scope(engine) as s:
        return repo.table_counts(s)


def _store_files(store: FileStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file()) if store.root.exists() else []


def test_round_trip_and_idempotent_reingest(engine: Engine, tmp_path: Path, files: dict[str, Path]) -> None:
    store = FileStore(tmp_path / "store")
    b = ingest_scan(engine, store, ScanRequest("P1", date(2024, 1, 10), files["base"], files["base_mask"]))
    f = ingest_scan(engine, store, ScanRequest("P1", date(2024, 3, 20), files["fu"], files["fu_mask"], scanner="S2"))
    assert (b.role, b.status, b.lesion_labels) == (ScanRole.BASELINE, "ingested", 2)
    assert (f.role, f.status, f.lesion_labels) == (ScanRole.FOLLOW_UP, "ingested", 1)
    with session_scope(engine) as s:
        scan = s.get(Scan, b.scan_id)
        assert scan.spacing_xyz == list(SPACING_XYZ) and scan.size_xyz == [20, 16, 12]
        stored = store.find(scan.image_sha256, ".nii.gz")
        assert sha256_file(stored) == sha256_file(files["base"]) == scan.image_sha256
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(stored)))
        np.testing.assert_array_equal(back, sitk.GetArrayFromImage(sitk.ReadImage(str(files["base"]))))
        mask = repo.latest_mask(s, scan)
        assert isinstance(mask, Mask) and mask.labels == [1, 2] and mask.voxel_count == 4 * 5 * 5 + 3 * 4 * 5
    before, files_before = _counts(engine), _store_files(store)
    again = ingest_scan(engine, store, ScanRequest("P1", date(2024, 1, 10), files["base"], files["base_mask"]))
    assert again.status == "already present" and again.scan_id == b.scan_id
    assert _counts(engine) == before and _store_files(store) == files_before


def test_empty_mask_is_recorded(engine: Engine, tmp_path: Path, files: dict[str, Path]) -> None:
    store = FileStore(tmp_path / "store")
    ingest_scan(engine, store, ScanRequest("P1", date(2024, 1, 10), files["base"], files["base_mask"]))
    res = ingest_scan(engine, store, ScanRequest("P1", date(2024, 4, 1), files["fu"], files["empty_mask"]))
    assert res.mask_empty is True and res.lesion_labels == 0


BAD_CASES = {
    # name: (patient, date, image key, mask key, role, expected message fragment)
    "corrupt image": ("P1", date(2024, 5, 1), "corrupt", None, None, "compressed data is damaged"),
    "mask spacing": (
        "P1",
        date(2024, 5, 1),
        "fu2",
        "bad_spacing_mask",
        None,
        "spacing differs from the image by 0.5",
    ),
    "mask size": ("P1", date(2024, 5, 1), "fu2", "bad_size_mask", None, "size differs"),
    "probability mask": ("P1", date(2024, 5, 1), "fu2", "prob_mask", None, "non-integer"),
    "non-finite voxels": ("P1", date(2024, 5, 1), "nan", None, None, "not finite"),
    "non-finite voxels mha": ("P1", date(2024, 5, 1), "nan_mha", None, None, "not finite"),
    "unknown patient": ("P9", date(2024, 5, 1), "fu2", None, ScanRole.FOLLOW_UP, "unknown patient"),
    "duplicate date": ("P1", date(2024, 3, 20), "fu2", None, None, "already has a scan dated 2024-03-20"),
    "before baseline": ("P1", date(2023, 12, 1), "fu2", None, None, "before patient 'P1''s baseline"),
    "second baseline": ("P1", date(2024, 6, 1), "fu2", None, ScanRole.BASELINE, "already has a baseline"),
    "duplicate scan": ("P2", date(2024, 5, 1), "fu", None, None, "duplicate scan"),
    "missing file": ("P1", date(2024, 5, 1), "nope", None, None, "no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_leaves_database_unchanged(case: str, engine: Engine, tmp_path: Path, files: dict[str, Path]) -> None:
    store = FileStore(tmp_path / "store")
    ingest_scan(engine, store, ScanRequest("P1", date(2024, 1, 10), files["base"], files["base_mask"]))
    ingest_scan(engine, store, ScanRequest("P1", date(2024, 3, 20), files["fu"], files["fu_mask"]))
    before, stored_before = _counts(engine), _store_files(store)
    patient, day, img, mask, role, fragment = BAD_CASES[case]
    image_path = files.get(img, tmp_path / "missing.nii.gz")
    req = ScanRequest(patient, day, image_path, files[mask] if mask else None, role=role)
    with pytest.raises(MetatrackError) as err:
        ingest_scan(engine, store, req)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg
    assert image_path.name in msg or (mask and files[mask].name in msg)
    assert _counts(engine) == before
    assert _store_files(store) == stored_before


def _write_dicom_series(folder: Path, seed: int, uid: str) -> None:
    """A CT series written with pydicom, one slice per file, with the geometry of `_image`."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    arr = sitk.GetArrayFromImage(_image(seed)).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(arr.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{uid}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{uid[-3:]}_{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"{uid}.{k + 1}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.1", uid
        ds.Modality, ds.Manufacturer, ds.InstanceNumber = "CT", "SimVendor", k + 1
        ds.ImagePositionPatient = [-15.0, -12.0, 4.0 + SPACING_XYZ[2] * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING_XYZ[1], SPACING_XYZ[0]]
        ds.SliceThickness = SPACING_XYZ[2]
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = arr[k].tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)


def test_dicom_series_folder(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "dicom"
    _write_dicom_series(folder, 5, "1.2.826.0.1.3680043.2.1125.101")
    _write_dicom_series(folder, 6, "1.2.826.0.1.3680043.2.1125.102")
    store = FileStore(tmp_path / "store")
    with pytest.raises(MetatrackError, match="holds 2 DICOM series"):
        ingest_scan(engine, store, ScanRequest("D1", date(2024, 1, 1), folder))
    res = ingest_scan(
        engine,
        store,
        ScanRequest("D1", date(2024, 1, 1), folder, series_uid="1.2.826.0.1.3680043.2.1125.102"),
    )
    with session_scope(engine) as s:
        scan = s.get(Scan, res.scan_id)
        assert scan.source_format == "dicom" and scan.scanner == "SimVendor"
        assert scan.size_xyz == [20, 16, 12]
        np.testing.assert_allclose(scan.spacing_xyz, SPACING_XYZ, atol=1e-6)
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(store.find(scan.image_sha256, ".nii.gz"))))
    np.testing.assert_array_equal(arr, sitk.GetArrayFromImage(_image(6)))


def test_cli_ingest_manifest_and_errors(home: Path, tmp_path: Path, files: dict[str, Path]) -> None:
    manifest = tmp_path / "in" / "manifest.csv"
    manifest.write_text(
        "patient_id,date,image,mask,role\n"
        "P1,2024-03-20,fu.nrrd,fm.nrrd,follow-up\n"
        "P1,2024-01-10,base.nii.gz,bm.nii.gz,baseline\n"
        "P3,2024-02-01,corrupt.nii.gz,,\n"
    )
    assert [r.scan_date for r in read_manifest(manifest)][:2] == [date(2024, 1, 10), date(2024, 3, 20)]
    runner = CliRunner()
    res = runner.invoke(app, ["--no-progress", "ingest", "--manifest", str(manifest), "--json"])
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert [r["status"] for r in data["ingested"]] == ["ingested", "ingested"]
    assert len(data["failed"]) == 1 and "corrupt.nii.gz" in data["failed"][0]["error"]
    res = runner.invoke(app, ["ingest", str(files["fu2"]), "--patient", "P7", "--date", "2024-01-01", "--mask",
                              str(files["bad_spacing_mask"])])  # fmt: skip
    assert res.exit_code == 1
    err_lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err_lines) == 1 and "bad_spacing.nii.gz" in err_lines[0] and "spacing differs" in err_lines[0]
    res = runner.invoke(app, ["ingest", str(files["fu2"]), "--patient", "P7", "--date", "2024-13-01"])
    assert res.exit_code == 1 and "not an ISO date" in res.stderr
    res = runner.invoke(app, ["ingest", "--bogus"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["timeline", "P1", "--json"])
    assert res.exit_code == 0
    tl = json.loads(res.stdout)
    assert [s["role"] for s in tl["scans"]] == ["baseline", "follow-up"]
    assert [s["days_from_baseline"] for s in tl["scans"]] == [0, 70]
    assert tl["scans"][0]["mask"] == {"labels": 2, "empty": False, "source": "given"}
    res = runner.invoke(app, ["timeline", "NOBODY"])
    assert res.exit_code == 1 and "unknown patient" in res.stderr

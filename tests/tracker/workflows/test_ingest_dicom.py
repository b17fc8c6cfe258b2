"""Ingest from DICOM: header date, modality and kept headers (`scans.dicom`), RTSTRUCT and SEG masks with their
ROI/segment names, and the bad inputs refused in one line with the database and the store unchanged."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from sqlalchemy import Engine, select

from db import repo
from db.models import Base, Mask, Scan
from db.session import session_scope
from tests.helpers import write_dicom_series, write_rtstruct, write_seg
from tracker.errors import MetatrackError
from tracker.store import FileStore
from tracker.workflows.ingest import ScanRequest, ingest_scan, read_manifest

SERIES = "1.2.826.0.1.3680043.8.498.5.1"
FRAME = "1.2.826.0.1.3680043.8.498.5.2"


def _image(seed: int = 0) -> sitk.Image:
    img = sitk.GetImageFromArray(np.random.default_rng(seed).normal(40, 10, (6, 10, 12)).astype(np.int16))
    img.SetSpacing((1.0, 1.0, 2.0))
    return img


def _square(x0: float, y0: float, x1: float, y1: float, z: float) -> np.ndarray:
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])


@pytest.fixture()
def series(tmp_path: Path) -> list[Path]:
    return write_dicom_series(
        _image(), tmp_path / "mr", modality="MR", study_date="20240305", series_uid=SERIES,
        frame_of_reference_uid=FRAME,
    )  # fmt: skip


def _dump(engine: Engine) -> dict[str, list[tuple]]:
    with session_scope(engine) as s:
        return {t.name: sorted(map(tuple, s.execute(select(t)).all())) for t in Base.metadata.sorted_tables}


def _store(store: FileStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file()) if store.root.exists() else []


def test_dicom_series_gives_date_modality_and_kept_headers(engine: Engine, tmp_path: Path, series) -> None:
    rs = write_rtstruct(
        tmp_path / "mr" / "rs.dcm",
        series,
        {"GTV-1": [_square(1.5, 1.5, 4.5, 4.5, 2.0)], "GTV-2": [_square(6.5, 5.5, 9.5, 8.5, 6.0)], "BODY": []},
    )
    res = ingest_scan(
        engine, FileStore(tmp_path / "store"), ScanRequest("P1", None, tmp_path / "mr", rs, rois=("GTV-.",))
    )
    assert (res.scan_date, res.lesion_labels, res.status) == (date(2024, 3, 5), 2, "ingested")
    with session_scope(engine) as s:
        scan = s.execute(select(Scan)).scalar_one()
        mask = s.execute(select(Mask)).scalar_one()
        assert (scan.modality, scan.source_format, scan.source_name) == ("MR", "dicom", SERIES)
        assert scan.scanner == "TestVendor TestScanner 1"
        dicom: dict[str, Any] = dict(scan.dicom or {})
        assert dicom["sop_instance_uids"] == [f"{SERIES}.{k + 1}" for k in range(6)]
        assert {k: dicom[k] for k in ("series_instance_uid", "frame_of_reference_uid", "modality", "study_date")} == {
            "series_instance_uid": SERIES,
            "frame_of_reference_uid": FRAME,
            "modality": "MR",
            "study_date": "2024-03-05",
        }
        assert (mask.source_format, mask.labels, mask.voxel_count) == ("rtstruct", [1, 2], 9 + 9)
        assert mask.label_names == {"1": "GTV-1", "2": "GTV-2"}
    store = FileStore(tmp_path / "store")
    again = ingest_scan(engine, store, ScanRequest("P1", None, tmp_path / "mr", rs, rois=("GTV-1", "GTV-2")))
    assert again.status == "already present"
    with pytest.raises(MetatrackError, match="scan already ingested with a different mask"):  # another choice of ROIs
        ingest_scan(engine, store, ScanRequest("P1", None, tmp_path / "mr", rs, rois=("GTV-1",)))
    replaced = ingest_scan(
        engine, store, ScanRequest("P1", None, tmp_path / "mr", rs, rois=("GTV-1",), replace_mask=True)
    )
    assert (replaced.status, replaced.lesion_labels, replaced.notes) == ("mask added", 1, ())  # not processed yet
    with session_scope(engine) as s:
        newest = repo.latest_mask(s, s.execute(select(Scan)).scalar_one())
        assert newest is not None and (newest.labels, newest.voxel_count, newest.source) == ([1], 9, "given")


def test_nifti_scan_keeps_no_file_name(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "Doe_Jane.nii.gz"
    sitk.WriteImage(_image(), str(path))
    ingest_scan(engine, FileStore(tmp_path / "store"), ScanRequest("P1", date(2024, 1, 2), path))
    with session_scope(engine) as s:
        scan = s.execute(select(Scan)).scalar_one()
        assert scan.source_name.startswith("sha256:") and len(scan.source_name) == 23 and scan.dicom is None


def test_fractional_seg_is_ingested_with_a_note(engine: Engine, tmp_path: Path, series) -> None:
    soft = np.zeros((6, 10, 12), np.float32)
    soft[2:4, 3:6, 3:7] = 0.7
    seg = write_seg(tmp_path / "seg.dcm", series, {"met": soft}, fractional=True)
    res = ingest_scan(engine, FileStore(tmp_path / "store"), ScanRequest("P1", None, tmp_path / "mr", seg))
    assert res.lesion_labels == 1 and res.notes == (
        "fractional DICOM SEG: segments thresholded at 0.5 (at or above: in)",
    )
    with session_scope(engine) as s:
        mask = s.execute(select(Mask)).scalar_one()
        assert (mask.source_format, mask.voxel_count, mask.label_names) == ("dicom-seg", 24, {"1": "met"})


def _corrupt(series: list[Path]) -> None:
    series[2].write_bytes(series[2].read_bytes()[:300])  # preamble and a header cut short


SQUARE = _square(1.5, 1.5, 4.5, 4.5, 2.0)
BAD = {
    # name: (how the inputs are spoiled: ROIs of the RTSTRUCT, its keyword arguments, request fields; message)
    "rtstruct of another series": ({"GTV": [SQUARE]}, {"referenced_series_uid": "1.2.3.4"}, {}, "references series"),
    "empty roi": ({"GTV": []}, {}, {}, "ROI 'GTV' is empty"),
    "unknown roi": ({"GTV": [SQUARE]}, {}, {"rois": ("PTV",)}, "no ROI 'PTV'"),
    "contour between slices": ({"GTV": [_square(1.5, 1.5, 4.5, 4.5, 3.0)]}, {}, {}, "between image slices"),
    "modality mismatch": ({"GTV": [SQUARE]}, {}, {"modality": "CT"}, "--modality CT contradicts"),
    "seg on another frame of reference": (None, {}, {}, "frame of reference 1.2.3.9 is not the image's"),
    "corrupt dicom": ({"GTV": [SQUARE]}, {}, {"corrupt": True}, "damaged DICOM file"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_dicom_input_is_refused_and_changes_nothing(engine: Engine, tmp_path: Path, series, case: str) -> None:
    store = FileStore(tmp_path / "store")
    other = tmp_path / "other.nii.gz"
    sitk.WriteImage(_image(1), str(other))
    ingest_scan(engine, store, ScanRequest("P0", date(2024, 1, 1), other))
    before, stored = _dump(engine), _store(store)
    rois, rs_args, spoil, fragment = BAD[case]
    fields = dict(spoil)
    if rois is None:
        mask = write_seg(
            tmp_path / "seg.dcm", series, {"met": np.ones((6, 10, 12), bool)}, frame_of_reference_uid="1.2.3.9"
        )
    else:
        mask = write_rtstruct(tmp_path / "rs.dcm", series, rois, **rs_args)
    if fields.pop("corrupt", False):
        _corrupt(series)
    with pytest.raises(MetatrackError) as err:
        ingest_scan(engine, store, ScanRequest("P1", None, tmp_path / "mr", mask, **fields))
    message = str(err.value)
    assert fragment in message and "\n" not in message, message
    assert _dump(engine) == before and _store(store) == stored


def test_manifest_roi_and_segment_cells(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient_id,date,image,mask,roi,segment\nP1,2024-01-02,mr,rs.dcm,GTV-1; GTV-[23],\n")
    (req,) = read_manifest(manifest)
    assert (req.rois, req.segments, req.modality, req.mask) == (("GTV-1", "GTV-[23]"), (), None, tmp_path / "rs.dcm")


def test_rtstruct_beside_the_series_and_no_mask_is_asked_about(engine: Engine, tmp_path: Path, series) -> None:
    write_rtstruct(tmp_path / "mr" / "rs.dcm", series, {"GTV": [SQUARE]})
    store = FileStore(tmp_path / "store")
    with pytest.raises(MetatrackError) as err:
        ingest_scan(engine, store, ScanRequest("P1", None, tmp_path / "mr"))
    assert f"holds 1 DICOM series and 1 RTSTRUCT/SEG: MR series {SERIES} (6 files); RTSTRUCT rs.dcm; " in str(err.value)
    assert "--mask FILE" in str(err.value) and _dump(engine) == {t: [] for t in _dump(engine)} and _store(store) == []
    res = ingest_scan(engine, store, ScanRequest("P1", None, tmp_path / "mr", series_uid=SERIES))  # the image alone
    assert res.lesion_labels == 0 and res.mask_empty is None

"""What several test modules share: synthetic cohorts, a tiny trained model, where the IBSI data are."""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from db.synthetic import fill_cohort
from tracker.survival.synthetic import SLOPE_FEATURES as FEATURES
from tracker.survival.synthetic import slope_cohort as synthetic_tables

__all__ = [
    "DCIODVFY",
    "FEATURES",
    "VENDORED_IBSI",
    "dciodvfy_errors",
    "fill_cohort",
    "gaussian_bump_field",
    "shared_ibsi",
    "synthetic_tables",
    "tiny_model",
    "tiny_model_bytes",
    "write_dicom_series",
    "write_rtstruct",
    "write_seg",
]

VENDORED_IBSI = Path(__file__).resolve().parent / "data" / "ibsi"


def shared_ibsi() -> Path:
    """The full IBSI data (CT phantom, IBSI 2; not vendored): $METATRACK_IBSI_DATA, else ../shared/data/ibsi.

    The small IBSI 1 digital phantom and its reference values are vendored: :data:`VENDORED_IBSI`.
    """
    env = os.environ.get("METATRACK_IBSI_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ibsi"


@functools.lru_cache(maxsize=1)
def tiny_model_bytes() -> bytes:
    """A small trained RiskModel (few epochs) on a 200-patient synthetic cohort, trained once per process."""
    from tracker.survival import SurvivalModelConfig, train_model

    visits, events = synthetic_tables(200, seed=5)
    cfg = SurvivalModelConfig(max_epochs=8, min_epochs=1, hidden_size=4, val_fraction=0.2)
    model = train_model(
        visits[["patient_id", "time_days", *FEATURES]], events[["patient_id", "time_days", "event"]], cfg, seed=0
    )
    return model.to_bytes()


def tiny_model():
    """A fresh copy of the tiny model."""
    from tracker.survival import RiskModel

    return RiskModel.from_bytes(tiny_model_bytes())


def gaussian_bump_field(reference: Any, peak_mm: Any, sigma_mm: float) -> Any:
    """A known deformation: a Gaussian bump of displacement (peak (x, y, z) mm) centred in ``reference``, on its
    grid (a SimpleITK vector image, LPS mm)."""
    import numpy as np
    import SimpleITK as sitk

    size = np.asarray(reference.GetSize())
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), axis=-1)[..., ::-1]
    points = np.asarray(reference.GetOrigin()) + idx * np.asarray(reference.GetSpacing())
    centre = np.asarray(reference.GetOrigin()) + (size - 1) / 2.0 * np.asarray(reference.GetSpacing())
    weight = np.exp(-((points - centre) ** 2).sum(-1) / (2.0 * sigma_mm**2))
    field = sitk.GetImageFromArray(weight[..., None] * np.asarray(peak_mm), isVector=True)
    field.CopyInformation(reference)
    return field


def write_dicom_series(
    image: Any,
    folder: Path,
    *,
    modality: str = "CT",
    study_date: str = "20240101",
    series_date: str | None = None,
    acquisition_date: str | None = None,
    patient_name: str = "Doe^Jane",
    patient_id: str = "MRN0000001",
    birth_date: str = "19600101",
    accession_number: str = "ACC0000001",
    institution: str = "Test Hospital",
    manufacturer: str = "TestVendor",
    model: str = "TestScanner 1",
    kernel: str = "B30f",
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    series_uid: str = "1.2.826.0.1.3680043.8.498.1.1",
    frame_of_reference_uid: str = "1.2.826.0.1.3680043.8.498.1.2",
) -> list[Path]:
    """Write `image` (a 3D SimpleITK image, values rounded to int16) as a single-frame CT or MR series in `folder`.

    UIDs are known: slice k (0-based along the image's third axis) has SOPInstanceUID ``f"{series_uid}.{k + 1}"``
    and InstanceNumber k + 1, and is written to ``folder / f"slice{k + 1:04d}.dcm"``; the files are returned in
    slice order. The identifying values (name, ID, birth date, accession, institution) are what privacy tests grep
    for.
    """
    import numpy as np
    import SimpleITK as sitk
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}[modality]
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.clip(np.round(sitk.GetArrayFromImage(image)), -32768, 32767).astype(np.int16)  # (z, y, x)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = image.GetSpacing()
    paths = []
    for k in range(arr.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = f"{series_uid}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1.99"
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, f"{series_uid}.{k + 1}"
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality == "CT" else "OTHER"]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, birth_date, "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, study_date, "120000", "1"
        ds.ReferringPhysicianName, ds.AccessionNumber = "", accession_number
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality, ds.Laterality = series_uid, 1, modality, ""
        if series_date:
            ds.SeriesDate = series_date
        if acquisition_date:
            ds.AcquisitionDate = acquisition_date
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference_uid, ""
        ds.Manufacturer, ds.ManufacturerModelName, ds.InstitutionName = manufacturer, model, institution
        ds.InstanceNumber, ds.AcquisitionNumber = k + 1, 1
        ds.PatientPosition = "HFS"
        ds.ImageOrientationPatient = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = float(spacing[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if modality == "CT":
            ds.ConvolutionKernel, ds.KVP = kernel, 120
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
            ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "2D", 500, 15, 1
        ds.PixelData = arr[k].tobytes()
        path = folder / f"slice{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


DCIODVFY = Path("/usr/bin/dciodvfy")


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dicom3tools' `dciodvfy` reports for a DICOM file (warnings are allowed); the caller skips
    when :data:`DCIODVFY` is absent."""
    import subprocess

    res = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, check=False)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


CHROMIUM = "/usr/bin/chromium"
_IMAGE_PROBE = """<!DOCTYPE html><html><body><iframe id="r" src="{uri}" style="width:1280px;height:3000px"></iframe>
<pre id="sizes">not loaded</pre><script>
document.getElementById("r").addEventListener("load", () => {{
  const images = [...document.getElementById("r").contentDocument.images];
  document.getElementById("sizes").textContent = JSON.stringify(
    images.map(i => [i.id, i.naturalWidth, i.naturalHeight, i.width, i.height]));
}});
</script></body></html>"""


def browser_check(page: Path, folder: Path, height: int = 3000) -> dict[str, Any]:
    """Open `page` in headless Chromium: its console messages, a screenshot, and every image's sizes.

    Returns ``{"console": [lines], "screenshot": Path, "images": [[id, natural w, natural h, shown w, shown h]]}``.
    The sizes come from a probe page that reads the page's images through an iframe (file pages may read each
    other with ``--allow-file-access-from-files``); the page itself runs no script. Skips the calling test where
    Chromium is not installed (`.ci/run` installs it).
    """
    import json
    import re

    import pytest

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} (Debian package chromium) is not installed")
    import subprocess

    base = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    shot = folder / f"{page.stem}-screenshot.png"
    logging = ["--enable-logging=stderr", "--v=0"]
    run = subprocess.run(
        [*base, *logging, f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    console = [ln for ln in run.stderr.splitlines() if ":CONSOLE" in ln]
    probe = folder / f"{page.stem}-probe.html"
    probe.write_text(_IMAGE_PROBE.format(uri=page.as_uri()))
    dom = subprocess.run(
        [*base, "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    found = re.search(r'<pre id="sizes">(.*?)</pre>', dom, re.S)
    text = found.group(1) if found else "null"
    return {"console": console, "screenshot": shot, "images": json.loads(text) if text.startswith("[") else None}


def write_rtstruct(
    path: Path,
    series: list[Path],
    rois: dict[str, list[Any]],
    *,
    referenced_series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> Path:
    """Write an RTSTRUCT for the series `series` (files from `write_dicom_series`): ROI name -> closed planar
    contours, each an (n, 3) array of LPS points in mm (an ROI with no contours is written empty). The referenced
    series and frame of reference default to the series' own (override them to make a bad reference)."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    first = pydicom.dcmread(series[0], stop_before_pixels=True)
    sop_class, uid = "1.2.840.10008.5.1.4.1.1.481.3", f"{first.StudyInstanceUID}.77"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, uid, "RTSTRUCT"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        setattr(ds, keyword, first.get(keyword, ""))
    ds.SeriesInstanceUID, ds.StructureSetLabel = f"{first.StudyInstanceUID}.78", "test"
    frame = frame_of_reference_uid or str(first.FrameOfReferenceUID)
    contour_images = []
    for p in series:
        item = Dataset()
        item.ReferencedSOPClassUID = first.SOPClassUID
        item.ReferencedSOPInstanceUID = pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
        contour_images.append(item)
    ref_series = Dataset()
    ref_series.SeriesInstanceUID = referenced_series_uid or str(first.SeriesInstanceUID)
    ref_series.ContourImageSequence = Sequence(contour_images)
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ref_study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    ref_study.RTReferencedSeriesSequence = Sequence([ref_series])
    ref_frame = Dataset()
    ref_frame.FrameOfReferenceUID = frame
    ref_frame.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_frame])
    structure, contours = [], []
    for number, (name, polygons) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID, roi.ROIName = number, frame, name
        roi.ROIGenerationAlgorithm = "MANUAL"
        structure.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber, rc.ROIDisplayColor = number, [255, 0, 0]
        items = []
        for points in polygons:
            c = Dataset()
            pts = np.asarray(points, dtype=float)
            c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", len(pts)
            c.ContourData = [f"{v:.6g}" for v in pts.ravel()]
            items.append(c)
        if items:
            rc.ContourSequence = Sequence(items)
        contours.append(rc)
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(structure), Sequence(contours)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_seg(
    path: Path,
    series: list[Path],
    segments: dict[str, Any],
    *,
    fractional: bool = False,
    frame_of_reference_uid: str | None = None,
) -> Path:
    """Write a DICOM SEG (highdicom) of the series `series` (files from `write_dicom_series`, in slice order):
    segment label -> (z, y, x) array on the series' grid (bool, or floats in [0, 1] when `fractional`)."""
    import highdicom as hd
    import numpy as np
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(p) for p in series]
    if frame_of_reference_uid is not None:
        for ds in sources:
            ds.FrameOfReferenceUID = frame_of_reference_uid
    pixels = np.stack([np.asarray(v, dtype=np.float32 if fractional else bool) for v in segments.values()], axis=-1)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for k, label in enumerate(segments, start=1)
    ]
    kind = hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=f"{sources[0].StudyInstanceUID}.88",
        series_number=88,
        sop_instance_uid=f"{sources[0].StudyInstanceUID}.88.1",
        instance_number=1,
        manufacturer="metatrack tests",
        manufacturer_model_name="write_seg",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)
    return path


def truth_edges(truth_patient: dict) -> set[tuple[int, int, int, int]]:
    """Consecutive sightings of the same true lesion in a simulator truth.json patient: (scan j, label, scan k,
    label)."""
    last: dict[str, tuple[int, int]] = {}
    edges = set()
    for k, scan in enumerate(truth_patient["scans"]):
        for label, ids in sorted(scan["labels"].items(), key=lambda kv: int(kv[0])):
            for true_id in ids:
                if true_id in last:
                    edges.add((*last[true_id], k, int(label)))
        for label, ids in scan["labels"].items():
            for true_id in ids:
                last[true_id] = (k, int(label))
    return edges


def predicted_edges(tl: dict) -> set[tuple[int, int, int, int]]:
    """Consecutive sightings of one track in a timeline (persistent or merged links), as in ``truth_edges``."""
    last: dict[int, tuple[int, int]] = {}
    edges = set()
    for k, scan in enumerate(tl["scans"]):
        for les in scan["lesions"]:
            if les["track_id"] in last and les["change"] in ("persistent", "merged"):
                edges.add((*last[les["track_id"]], k, les["label"]))
        for les in scan["lesions"]:
            last[les["track_id"]] = (k, les["label"])
    return edges


def ingested_home(root: Path, cfg: Any, n_scans: int) -> Path:
    """Simulate ``cfg``'s cohort in ``root/cohort`` and ingest it into a SQLite data home ``root/template``
    (metatrack.db and store/); asserts that all ``n_scans`` scans were ingested. Tests copy the home to process it."""
    from db import migrate
    from db.session import make_engine
    from tracker.simulator import simulate_cohort
    from tracker.store import FileStore
    from tracker.workflows.ingest import ingest_many, read_manifest

    simulate_cohort(cfg, root / "cohort")
    home = root / "template"
    engine = make_engine(f"sqlite:///{home / 'metatrack.db'}")
    migrate.upgrade(engine)
    done, failed = ingest_many(engine, FileStore(home / "store"), read_manifest(root / "cohort" / "manifest.csv"))
    engine.dispose()
    assert not failed and len(done) == n_scans, (failed, len(done))
    return home


@contextlib.contextmanager
def cli_on_new_db(url: str) -> Iterator[tuple[Callable[..., Any], Any]]:
    """A migrated database at ``url`` and ``run(*args, code=0)``, which invokes the CLI on it (``--no-progress``)
    and asserts the exit code: yields (run, engine); the engine is disposed afterwards."""
    from typer.testing import CliRunner

    from cli.main import app
    from db.migrate import upgrade
    from db.session import make_engine

    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Any:
        result = runner.invoke(app, ["--db", url, "--no-progress", *args])
        assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
        return result

    engine = make_engine(url)
    upgrade(engine)
    try:
        yield run, engine
    finally:
        engine.dispose()


def result_differences(a: Any, b: Any, tolerance: float = 1e-9, where: str = "") -> list[str]:
    """Where two nested results (dicts, lists, numbers) differ: numbers beyond `tolerance` relative to their size,
    anything else when unequal; NaN equals NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(set(a) ^ set(b))[:5]}"]
        return [d for k in a for d in result_differences(a[k], b[k], tolerance, f"{where}/{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} != {len(b)} items"]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in result_differences(x, y, tolerance, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        same = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance * max(1.0, abs(a))
        return [] if same else [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]

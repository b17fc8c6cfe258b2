"""What several test modules share: synthetic cohorts, a tiny trained model, where the IBSI data are."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from db.synthetic import fill_cohort
from tracker.survival.synthetic import SLOPE_FEATURES as FEATURES
from tracker.survival.synthetic import slope_cohort as synthetic_tables

__all__ = [
    "FEATURES",
    "VENDORED_IBSI",
    "fill_cohort",
    "gaussian_bump_field",
    "shared_ibsi",
    "synthetic_tables",
    "tiny_model",
    "tiny_model_bytes",
    "write_dicom_series",
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

"""DICOM SEG (one segment per lesion) and SR TID 1500 (per-lesion measurements, the scan's RECIST response) for a
processed scan whose source was DICOM, written with highdicom.

The SEG and SR reference the source series by its UIDs. Without the original files, minimal source datasets are
built from the stored UIDs and the stored image's geometry (slice k of the stored image is source instance k), with
the user's pseudonym as patient name and ID and no other patient attribute; with the originals
(:func:`index_source_folder`, :func:`read_source_instances`), highdicom copies the patient and study from them.

A lesion keeps its identity across timepoints: segment label and tracking identifier are ``T<track>``, and the
tracking UID is derived from the pseudonym and the track number alone, so every scan's SEG and SR carry the same
UID for the same track.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tracker.dicom.headers import REFERENCE_KEYS
from tracker.errors import MetatrackError
from tracker.exports.records import ExportLesion
from tracker.lesions import Geometry

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# Our own codes (a private coding scheme, DICOM PS3.16 8.2) where DICOM has none: the change classes and RECIST
# responses as metatrack assigns them.
CODING_SCHEME = "99METATRACK"
_CHANGE_NAME = ("change", "Lesion change since previous timepoint")
_RESPONSE_MEANINGS = {
    "BL": "Baseline",
    "CR": "Complete response",
    "PR": "Partial response",
    "SD": "Stable disease",
    "PD": "Progressive disease",
    "NE": "Not evaluable",
}
EQUIPMENT = "metatrack"
_TRACK_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "metatrack:lesion-track")
SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902


@dataclass(frozen=True)
class LesionMeasures:
    """What the SR reports for one lesion: its record and the mean intensity inside it (HU on CT)."""

    lesion: ExportLesion
    mean_intensity: float | None


def _code(value: str, meaning: str) -> Any:
    from pydicom.sr.coding import Code

    return Code(value, CODING_SCHEME, meaning)


def _coding_scheme() -> Dataset:
    """The private coding scheme's identification (PS3.3 C.12.1.1.2), so readers know what defines its codes."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.CodingSchemeDesignator = CODING_SCHEME
    ds.CodingSchemeName = "metatrack lesion change classes and RECIST 1.1 responses"
    ds.CodingSchemeResponsibleOrganization = "metatrack"
    return ds


def _da(iso: str | None) -> str:
    return iso.replace("-", "") if iso else ""


def _person_name(external_id: str) -> str:
    """The pseudonym as a one-component DICOM person name (the trailing caret says it is the whole name)."""
    return external_id.replace("^", " ").replace("=", " ") + "^"


def _version() -> str:
    return importlib.metadata.version("metatrack")


def tracking_uid(external_id: str, track: int) -> str:
    """The lesion track's UID (a UUID-derived "2.25." UID, PS3.5 B.2): the same in every export of the patient's
    track, from the pseudonym and the track number alone."""
    return f"2.25.{uuid.uuid5(_TRACK_NAMESPACE, f'{external_id}/T{track}').int}"


def check_dicom_source(dicom: dict[str, Any] | None, n_slices: int, what: str) -> dict[str, Any]:
    """The scan's DICOM headers, refused in one line when the scan did not come from DICOM or they are incomplete."""
    if not dicom:
        raise MetatrackError(
            f"{what}: source was not DICOM; DICOM SEG/SR export needs a DICOM series (use `export masks`)"
        )
    missing = [k for k in REFERENCE_KEYS if not dicom.get(k)]
    if missing:
        raise MetatrackError(f"{what}: stored DICOM headers lack {', '.join(missing)}; ingest the series again")
    if len(dicom["sop_instance_uids"]) != n_slices:
        raise MetatrackError(
            f"{what}: {len(dicom['sop_instance_uids'])} stored source instance UIDs for {n_slices} slices"
        )
    return dicom


def minimal_source_images(
    dicom: dict[str, Any], geometry: Geometry, size_xyz: Sequence[int], external_id: str
) -> list[Dataset]:
    """One dataset per slice with the stored UIDs and the slice's geometry: the pseudonym is the patient's name and
    ID; no pixel data, no other patient attribute."""
    from pydicom.dataset import Dataset

    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    origin = np.asarray(geometry.origin, dtype=float)
    out = []
    for k, uid in enumerate(dicom["sop_instance_uids"]):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = dicom["sop_class_uid"], uid
        ds.PatientName, ds.PatientID = _person_name(external_id), external_id
        ds.PatientBirthDate, ds.PatientSex = "", ""
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = dicom["study_instance_uid"], _da(dicom.get("study_date")), ""
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = dicom["series_instance_uid"], 1, dicom["modality"]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = dicom["frame_of_reference_uid"], ""
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
        position = origin + direction[:, 2] * geometry.spacing[2] * k
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.PixelSpacing = [float(geometry.spacing[1]), float(geometry.spacing[0])]  # rows (y), columns (x)
        ds.SliceThickness = float(dicom.get("slice_thickness") or geometry.spacing[2])
        ds.Rows, ds.Columns = int(size_xyz[1]), int(size_xyz[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        out.append(ds)
    return out


def index_source_folder(folder: Path) -> dict[str, Path]:
    """SOPInstanceUID -> file of every DICOM file under `folder` (searched recursively; other files are ignored)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    index: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except (InvalidDicomError, OSError, ValueError):
            continue
        if "SOPInstanceUID" in ds:
            index[str(ds.SOPInstanceUID)] = path
    return index


def read_source_instances(index: Mapping[str, Path], uids: Sequence[str]) -> list[Dataset]:
    """The original instances (headers only) with these SOPInstanceUIDs, in that order, from an
    :func:`index_source_folder` index; missing ones are refused by count (the folder's name may name the patient)."""
    import pydicom

    missing = [u for u in uids if u not in index]
    if missing:
        raise MetatrackError(
            f"--source-dicom: {len(missing)} of the scan's {len(uids)} source instances are not in the folder"
        )
    return [pydicom.dcmread(index[u], stop_before_pixels=True) for u in uids]


def _tracked(lesions: Sequence[ExportLesion]) -> list[ExportLesion]:
    return sorted((les for les in lesions if les.track is not None), key=lambda les: les.track or 0)


def write_seg(
    track_labels: np.ndarray,
    lesions: Sequence[ExportLesion],
    source_images: Sequence[Dataset],
    external_id: str,
    path: Path,
) -> Dataset | None:
    """Write the DICOM SEG of a scan (binary, one segment per tracked lesion, frames with lesion only) to `path`.

    `track_labels` is the scan's label map with track numbers as labels, (z, y, x) on the source grid (slice k =
    ``source_images[k]``). Returns the written dataset, or None (nothing written) when the scan has no lesion.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    tracked = _tracked(lesions)
    if not tracked:
        return None
    if track_labels.shape[0] != len(source_images):
        raise MetatrackError(f"{path.name}: label map has {track_labels.shape[0]} slices, {len(source_images)} sources")
    segment_of = np.zeros(int(track_labels.max()) + 1, dtype=np.uint16)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(
        name=EQUIPMENT, family=codes.cid7162.ArtificialIntelligence, version=_version()
    )
    for number, les in enumerate(tracked, start=1):
        assert les.track is not None
        if les.track < len(segment_of):
            segment_of[les.track] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"T{les.track}",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Lesion,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=tracking_uid(external_id, les.track),
                tracking_id=f"T{les.track}",
            )
        )
    seg = hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=segment_of[track_labels],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=EQUIPMENT,
        manufacturer_model_name=EQUIPMENT,
        software_versions=_version(),
        device_serial_number="0",
        series_description="metatrack lesions (segment = track)",
    )
    seg.save_as(path)
    return seg


def _lesion_group(
    m: LesionMeasures, seg: Dataset, segment_number: int, modality: str, external_id: str, time_point: Any
) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    les = m.lesion
    assert les.track is not None
    measured = [
        (codes.SCT.Volume, les.volume_mm3, codes.UCUM.CubicMillimeter, None),
        (codes.SCT.LongAxis, les.long_axis_mm, codes.UCUM.Millimeter, None),
        (codes.SCT.ShortAxis, les.short_axis_mm, codes.UCUM.Millimeter, None),
    ]
    if modality == "CT":
        measured.append((codes.DCM.AttenuationCoefficient, m.mean_intensity, codes.UCUM.HounsfieldUnit, codes.SCT.Mean))
    measurements = [
        hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation)
        for name, value, unit, derivation in measured
        if value is not None and np.isfinite(value)
    ]
    evaluations = []
    if les.change is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(name=_code(*_CHANGE_NAME), value=_code(les.change, les.change.capitalize()))
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(external_id, les.track), identifier=f"T{les.track}"
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID),
        ),
        time_point_context=time_point,
        finding_type=codes.SCT.Lesion,
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
    )


def write_sr(
    measures: Sequence[LesionMeasures],
    recist_response: str | None,
    seg: Dataset | None,
    source_images: Sequence[Dataset],
    modality: str,
    external_id: str,
    path: Path,
    *,
    time_point: str | None = None,
    time_point_order: int | None = None,
) -> Dataset:
    """Write the SR TID 1500 measurement report of a scan to `path` and return it.

    One volumetric group per tracked lesion (volume, RECIST long and short axis, mean HU on CT, change class),
    referencing its segment in `seg`; one group for the scan with its RECIST response. `time_point` (the scan date)
    and `time_point_order` (1 = baseline) go into every group's time point context (TID 1502).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    groups: list[Any] = []
    context = hd.sr.TimePointContext(time_point, time_point_order=time_point_order) if time_point else None
    if seg is not None:
        numbers = {d.SegmentLabel: int(d.SegmentNumber) for d in seg.SegmentSequence}
        for m in sorted(measures, key=lambda m: m.lesion.track or 0):
            if m.lesion.track is not None:
                groups.append(_lesion_group(m, seg, numbers[f"T{m.lesion.track}"], modality, external_id, context))
    if recist_response is not None:
        if recist_response not in _RESPONSE_MEANINGS:
            raise MetatrackError(
                f"RECIST response {recist_response!r}: expected one of {', '.join(_RESPONSE_MEANINGS)}"
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(identifier="RECIST 1.1"),
                time_point_context=context,
                method=codes.DCM.RECIST,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=codes.DCM.CurrentResponse,
                        value=_code(recist_response, _RESPONSE_MEANINGS[recist_response]),
                    )
                ],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=EQUIPMENT, model_name=EQUIPMENT
        ),
    )
    procedure = codes.LN.CTUnspecifiedBodyRegion if modality == "CT" else codes.LN.MRIUnspecifiedBodyRegion
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    evidence = [*source_images, *([seg] if seg is not None else [])]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=EQUIPMENT,
        is_complete=True,
        series_description="metatrack measurements (TID 1500)",
    )
    sr.CodingSchemeIdentificationSequence = [_coding_scheme()]
    sr.save_as(path)
    return sr


def mean_intensities(image: np.ndarray, labels: np.ndarray, lesions: Sequence[ExportLesion]) -> dict[int, float]:
    """Mean image value inside each lesion label (HU on a CT)."""
    from scipy import ndimage

    index = [les.label for les in lesions]
    if not index:
        return {}
    means = ndimage.mean(image.astype(np.float64), labels=labels, index=index)
    return {label: float(v) for label, v in zip(index, np.atleast_1d(means), strict=True)}

"""DICOM SEG and SR TID 1500 of a scan: valid for dciodvfy, read back by highdicom with the same segments, tracks
and measurements; the pseudonym and UIDs only, unless the original files are given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import DCIODVFY, dciodvfy_errors, write_dicom_series
from tracker.errors import MetatrackError
from tracker.exports import dicom
from tracker.exports.records import ExportLesion
from tracker.lesions import Geometry

PSEUDONYM = "PT-0042"
IDENTIFYING = (b"Doe", b"MRN0000001", b"ACC0000001", b"Test Hospital", b"19600101")
SIZE_XYZ = (12, 10, 5)
TIME_POINT_ORDER = "Time Point Order"
# label 1 -> track 3 (40 HU), label 2 -> track 7 (-10 HU)
LESIONS = [
    ExportLesion(1, 3, "persistent", "target", "liver", 36.0, 4.1, 2.5),
    ExportLesion(2, 7, "new", None, None, 18.0, 3.0, None),
]


def _image() -> object:
    import SimpleITK as sitk

    arr = np.full(SIZE_XYZ[::-1], -100, np.int16)
    arr[1:3, 2:5, 2:6] = 40
    arr[3:5, 6:9, 8:11] = -10
    image = sitk.GetImageFromArray(arr)
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((-50.0, 20.0, 100.0))
    return image


def _labels() -> np.ndarray:
    labels = np.zeros(SIZE_XYZ[::-1], np.int32)
    labels[1:3, 2:5, 2:6] = 1
    labels[3:5, 6:9, 8:11] = 2
    return labels


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The scan's source series written with identifying values, and the headers ingest would keep."""
    folder = tmp_path_factory.mktemp("Doe_Jane") / "series"
    paths = write_dicom_series(_image(), folder)
    import pydicom

    ds = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    headers = {
        "study_instance_uid": ds[0].StudyInstanceUID,
        "series_instance_uid": ds[0].SeriesInstanceUID,
        "frame_of_reference_uid": ds[0].FrameOfReferenceUID,
        "sop_class_uid": ds[0].SOPClassUID,
        "sop_instance_uids": [d.SOPInstanceUID for d in ds],
        "modality": "CT",
        "slice_thickness": 2.5,
        "study_date": "2024-01-01",
    }
    return folder, headers


def _write(tmp_path: Path, sources: list) -> tuple[Path, Path]:
    import SimpleITK as sitk

    labels = _labels()
    tracks = np.choose(labels, [0, 3, 7]).astype(np.uint16)
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg = dicom.write_seg(tracks, LESIONS, sources, PSEUDONYM, seg_path)
    means = dicom.mean_intensities(sitk.GetArrayFromImage(_image()), labels, LESIONS)
    assert means == {1: 40.0, 2: -10.0}
    measures = [dicom.LesionMeasures(les, means[les.label]) for les in LESIONS]
    dicom.write_sr(measures, "PR", seg, sources, "CT", PSEUDONYM, sr_path, time_point="2024-01-01", time_point_order=2)
    return seg_path, sr_path


@pytest.fixture(scope="module")
def minimal(series: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    _, headers = series
    sources = dicom.minimal_source_images(headers, Geometry.from_image(_image()), SIZE_XYZ, PSEUDONYM)
    return _write(tmp_path_factory.mktemp("minimal"), sources)


@pytest.mark.skipif(not DCIODVFY.exists(), reason=f"{DCIODVFY} (dicom3tools) is not installed")
def test_seg_and_sr_pass_dciodvfy(minimal: tuple[Path, Path]) -> None:
    for path in minimal:
        assert dciodvfy_errors(path) == [], path.name


def test_seg_reads_back_with_one_segment_per_track(minimal: tuple[Path, Path], series: tuple[Path, dict]) -> None:
    import highdicom as hd

    _, headers = series
    seg = hd.seg.segread(minimal[0])
    described = [seg.get_segment_description(n) for n in seg.get_segment_numbers()]
    assert [(d.segment_number, d.segment_label, d.tracking_id) for d in described] == [(1, "T3", "T3"), (2, "T7", "T7")]
    assert [d.tracking_uid for d in described] == [dicom.tracking_uid(PSEUDONYM, 3), dicom.tracking_uid(PSEUDONYM, 7)]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == headers["series_instance_uid"]
    assert seg.FrameOfReferenceUID == headers["frame_of_reference_uid"]
    assert (seg.PatientID, str(seg.PatientName)) == (PSEUDONYM, f"{PSEUDONYM}^")
    assert sorted(uid for _, _, uid in seg.get_source_image_uids()) == sorted(headers["sop_instance_uids"])
    with_lesion = [headers["sop_instance_uids"][k] for k in range(1, 5)]  # slices 1..4 hold lesion voxels
    pixels = seg.get_pixels_by_source_instance(with_lesion, combine_segments=True)
    expected = np.choose(_labels(), [0, 1, 2])[1:5]
    np.testing.assert_array_equal(pixels, expected)


def test_sr_reads_back_with_the_measurements(minimal: tuple[Path, Path]) -> None:
    import highdicom as hd

    sr = hd.sr.srread(minimal[1])
    for group in sr.content.get_volumetric_roi_measurement_groups():  # TID 1502: the order is a NUM in the group
        assert [m.value for m in group.get_measurements() if m.name.meaning == TIME_POINT_ORDER] == [2.0]
    seg_uid = hd.seg.segread(minimal[0]).SOPInstanceUID
    assert {
        g.referenced_segment.referenced_sop_instance_uid for g in sr.content.get_volumetric_roi_measurement_groups()
    } == {seg_uid}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    got = {
        g.tracking_identifier: (
            g.tracking_uid,
            {
                m.name.meaning: (m.value, m.unit.value)
                for m in g.get_measurements()
                if m.name.meaning != TIME_POINT_ORDER
            },
            [q.value.value for q in g.get_qualitative_evaluations()],
            g.referenced_segment.referenced_segment_numbers,
        )
        for g in groups
    }
    assert got["T3"] == (
        dicom.tracking_uid(PSEUDONYM, 3),
        {
            "Volume": (36.0, "mm3"),
            "Long axis": (4.1, "mm"),
            "Short axis": (2.5, "mm"),
            "Attenuation Coefficient": (40.0, "[hnsf'U]"),
        },
        ["persistent"],
        [1],
    )
    assert got["T7"][3] == [2]
    assert got["T7"][1] == {
        "Volume": (18.0, "mm3"),
        "Long axis": (3.0, "mm"),
        "Attenuation Coefficient": (-10.0, "[hnsf'U]"),
    }
    (recist,) = sr.content.get_image_measurement_groups()
    assert [(q.name.meaning, q.value.value) for q in recist.get_qualitative_evaluations()] == [
        ("Current Response", "PR")
    ]


def test_without_originals_nothing_identifying_is_written(minimal: tuple[Path, Path]) -> None:
    for path in minimal:
        data = path.read_bytes()
        assert not [v for v in IDENTIFYING if v in data], path.name
        assert PSEUDONYM.encode() in data


def test_with_originals_the_patient_comes_from_them(series: tuple[Path, dict], tmp_path: Path) -> None:
    import highdicom as hd

    folder, headers = series
    sources = dicom.read_source_instances(dicom.index_source_folder(folder.parent), headers["sop_instance_uids"])
    seg_path, sr_path = _write(tmp_path, sources)
    assert str(hd.seg.segread(seg_path).PatientName) == "Doe^Jane"
    assert hd.sr.srread(sr_path).PatientID == "MRN0000001"
    if DCIODVFY.exists():
        assert dciodvfy_errors(seg_path) == [] and dciodvfy_errors(sr_path) == []


def test_minimal_sources_have_the_series_geometry(series: tuple[Path, dict]) -> None:
    import pydicom

    folder, headers = series
    built = dicom.minimal_source_images(headers, Geometry.from_image(_image()), SIZE_XYZ, PSEUDONYM)
    for ds, path in zip(built, sorted(folder.glob("*.dcm")), strict=True):
        real = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == real.SOPInstanceUID and (ds.Rows, ds.Columns) == (real.Rows, real.Columns)
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            np.testing.assert_allclose(
                np.asarray(getattr(ds, key), float), np.asarray(getattr(real, key), float), atol=1e-5
            )


def test_refusals(series: tuple[Path, dict], tmp_path: Path) -> None:
    folder, headers = series
    with pytest.raises(MetatrackError, match="scan 2024-01-01: source was not DICOM"):
        dicom.check_dicom_source(None, 5, "scan 2024-01-01")
    with pytest.raises(MetatrackError, match="5 stored source instance UIDs for 6 slices"):
        dicom.check_dicom_source(headers, 6, "scan 2024-01-01")
    with pytest.raises(MetatrackError, match=r"^--source-dicom: 1 of the scan's 6 source instances are not in the"):
        dicom.read_source_instances(dicom.index_source_folder(folder), [*headers["sop_instance_uids"], "1.2.3"])


def test_a_scan_without_lesions_gets_an_sr_only(series: tuple[Path, dict], tmp_path: Path) -> None:
    import highdicom as hd

    _, headers = series
    sources = dicom.minimal_source_images(headers, Geometry.from_image(_image()), SIZE_XYZ, PSEUDONYM)
    empty = np.zeros(SIZE_XYZ[::-1], np.uint16)
    assert dicom.write_seg(empty, [], sources, PSEUDONYM, tmp_path / "seg.dcm") is None
    assert not (tmp_path / "seg.dcm").exists()
    dicom.write_sr([], "CR", None, sources, "CT", PSEUDONYM, tmp_path / "sr.dcm")
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    (recist,) = sr.content.get_image_measurement_groups()
    assert [q.value.value for q in recist.get_qualitative_evaluations()] == ["CR"]
    if DCIODVFY.exists():
        assert dciodvfy_errors(tmp_path / "sr.dcm") == []

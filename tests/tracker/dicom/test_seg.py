"""DICOM SEG masks (written by highdicom): segments chosen by number or label, fractional thresholded at 0.5, a
SEG of another frame of reference refused, a SEG whose frames name no source slice placed by position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_dicom_series, write_seg
from tracker.errors import MetatrackError
from tracker.imageio import MaskContext, read_image, read_mask

SHAPE_ZYX = (5, 10, 12)


@pytest.fixture()
def series(tmp_path: Path) -> list[Path]:
    import SimpleITK as sitk

    img = sitk.Image(SHAPE_ZYX[2], SHAPE_ZYX[1], SHAPE_ZYX[0], sitk.sitkInt16)
    img.SetSpacing((0.8, 0.8, 2.5))
    img.SetOrigin((-4.0, 3.0, 10.0))
    return write_dicom_series(img, tmp_path / "ct")


def _box(z: slice, y: slice, x: slice, value: float = 1.0) -> np.ndarray:
    arr = np.zeros(SHAPE_ZYX, dtype=np.float32)
    arr[z, y, x] = value
    return arr


def _read(series: list[Path], seg: Path, *segments: str):
    import SimpleITK as sitk

    loaded = read_image(series[0].parent)
    mask = read_mask(seg, loaded.image, MaskContext(loaded.dicom, segments=segments))
    return mask, sitk.GetArrayFromImage(mask.mask)


LIVER = _box(slice(1, 3), slice(2, 5), slice(3, 7))  # 2 x 3 x 4 = 24 voxels
LUNG = _box(slice(3, 5), slice(6, 9), slice(1, 3))  # 2 x 3 x 2 = 12 voxels


def test_binary_segments_by_number_and_label(series: list[Path], tmp_path: Path) -> None:
    seg = write_seg(tmp_path / "seg.dcm", series, {"liver met": LIVER > 0, "lung met": LUNG > 0})
    mask, arr = _read(series, seg, "2", "liver met")
    assert mask.source_format == "dicom-seg" and mask.label_names == {1: "lung met", 2: "liver met"}
    assert int((arr == 1).sum()) == 12 and int((arr == 2).sum()) == 24
    assert np.array_equal(arr == 2, LIVER > 0) and mask.notes == ()
    with pytest.raises(MetatrackError, match=r"holds 2 segments \('liver met', 'lung met'\); choose with --segment"):
        _read(series, seg)
    with pytest.raises(MetatrackError, match="no segment 'bone'"):
        _read(series, seg, "bone")


def test_fractional_segment_is_thresholded_at_one_half(series: list[Path], tmp_path: Path) -> None:
    soft = LIVER * 0.4 + _box(slice(1, 2), slice(2, 5), slice(3, 7), 0.2)  # 0.6 on slice 1, 0.4 on slice 2
    seg = write_seg(tmp_path / "frac.dcm", series, {"met": soft}, fractional=True)
    mask, arr = _read(series, seg)
    assert mask.voxel_count == 12 and np.array_equal(arr > 0, soft >= 0.5)
    assert mask.notes == ("fractional DICOM SEG: segments thresholded at 0.5 (at or above: in)",)


def test_seg_on_another_frame_of_reference_is_refused(series: list[Path], tmp_path: Path) -> None:
    seg = write_seg(tmp_path / "seg.dcm", series, {"met": LIVER > 0}, frame_of_reference_uid="1.2.3.9")
    with pytest.raises(MetatrackError, match=r"frame of reference 1\.2\.3\.9 is not the image's"):
        _read(series, seg)


def _without_source_references(seg: Path, shift_mm: float = 0.0) -> Path:
    """The SEG with its frames' Derivation Image Sequences removed (as some writers leave them out), each frame's
    position moved by `shift_mm` along z."""
    import pydicom

    ds = pydicom.dcmread(seg)
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence
        position = item.PlanePositionSequence[0]
        position.ImagePositionPatient = [
            *position.ImagePositionPatient[:2],
            position.ImagePositionPatient[2] + shift_mm,
        ]
    out = seg.with_name(f"noref{shift_mm:g}.dcm")
    ds.save_as(out)
    return out


def test_seg_whose_frames_name_no_source_slice_is_placed_by_position(series: list[Path], tmp_path: Path) -> None:
    seg = write_seg(tmp_path / "seg.dcm", series, {"liver met": LIVER > 0, "lung met": LUNG > 0})
    mask, arr = _read(series, _without_source_references(seg), "2", "liver met")
    assert np.array_equal(arr, _read(series, seg, "2", "liver met")[1])
    assert int((arr == 1).sum()) == 12 and int((arr == 2).sum()) == 24
    assert mask.notes == ("DICOM SEG frames name no source slice: placed on the image by their plane positions",)
    soft = LIVER * 0.4 + _box(slice(1, 2), slice(2, 5), slice(3, 7), 0.2)
    frac = write_seg(tmp_path / "frac.dcm", series, {"met": soft}, fractional=True)
    assert np.array_equal(_read(series, _without_source_references(frac))[1] > 0, soft >= 0.5)


def test_seg_frame_between_the_slices_is_refused(series: list[Path], tmp_path: Path) -> None:
    seg = write_seg(tmp_path / "seg.dcm", series, {"met": LIVER > 0})
    moved = _without_source_references(seg, shift_mm=1.0)  # slices are 2.5 mm apart
    with pytest.raises(MetatrackError, match=r"^\S+noref1\.dcm: SEG frame 1: its position .* is not on one of the"):
        _read(series, moved)

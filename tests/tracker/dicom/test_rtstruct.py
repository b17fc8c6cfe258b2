"""RTSTRUCT rasterisation: the IBSI CT phantom's GTV-1 against its NIfTI mask, even-odd holes, ROI choice, the
contours and references that are refused, and an ROI cut at the image's edge kept with a note."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import shared_ibsi, write_dicom_series, write_rtstruct
from tracker.dicom.rtstruct import fill_even_odd
from tracker.errors import MetatrackError
from tracker.imageio import MaskContext, read_image, read_mask


def _square(x0: float, y0: float, x1: float, y1: float, z: float = 0.0) -> np.ndarray:
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]])


def test_even_odd_fill_makes_a_hole_and_an_island_in_it() -> None:
    # corners at half-pixels: centres 0..9 inside the outer square (100), 3..6 in the hole (16), 4..5 in the island
    outer, hole, island = (_square(-0.5, -0.5, 9.5, 9.5)[:, :2], _square(2.5, 2.5, 6.5, 6.5)[:, :2],
                           _square(3.5, 3.5, 5.5, 5.5)[:, :2])  # fmt: skip
    assert fill_even_odd([outer], 12, 12).sum() == 100
    ring = fill_even_odd([outer, hole], 12, 12)
    assert ring.sum() == 100 - 16 and not ring[4, 4] and ring[0, 0]
    assert fill_even_odd([outer, hole, island], 12, 12).sum() == 100 - 16 + 4


def test_triangle_takes_the_centres_inside_it() -> None:
    # x + y <= 4.5 with x, y >= -0.5 (centres whole): the pairs with x + y <= 4 -> 5 + 4 + 3 + 2 + 1 = 15
    triangle = np.array([[-0.5, -0.5], [5.0, -0.5], [-0.5, 5.0]])
    assert fill_even_odd([triangle], 8, 8).sum() == 15


@pytest.fixture()
def series(tmp_path: Path) -> list[Path]:
    """A 12 x 10 x 6 CT series, 1 mm pixels, 2 mm slices, origin 0 (slice k at z = 2k)."""
    import SimpleITK as sitk

    img = sitk.Image(12, 10, 6, sitk.sitkInt16)
    img.SetSpacing((1.0, 1.0, 2.0))
    return write_dicom_series(img, tmp_path / "ct")


def _read(series: list[Path], rtstruct: Path, *rois: str):
    loaded = read_image(series[0].parent)
    return read_mask(rtstruct, loaded.image, MaskContext(loaded.dicom, rois))


def test_rois_become_labels_in_the_order_chosen(series: list[Path], tmp_path: Path) -> None:
    rs = write_rtstruct(
        tmp_path / "rs.dcm",
        series,
        {"GTV-1": [_square(1.5, 1.5, 7.5, 6.5, 4.0)], "GTV-2": [_square(8.5, 1.5, 10.5, 3.5, 6.0)], "BODY": []},
    )
    mask = _read(series, rs, "GTV-2", "GTV-1")
    assert mask.source_format == "rtstruct" and mask.labels == [1, 2]
    assert mask.label_names == {1: "GTV-2", 2: "GTV-1"}
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(mask.mask)
    assert int((arr == 2).sum()) == 6 * 5 and set(np.flatnonzero((arr == 2).any(axis=(1, 2)))) == {2}
    assert int((arr == 1).sum()) == 2 * 2 and set(np.flatnonzero((arr == 1).any(axis=(1, 2)))) == {3}
    assert _read(series, rs, "GTV-[0-9]+").label_names == {1: "GTV-1", 2: "GTV-2"}  # a regular expression
    assert mask.notes == ()


def test_roi_cut_at_the_image_edge_is_kept_with_a_note(series: list[Path], tmp_path: Path) -> None:
    # x from 8.5 to 14.5 mm on a 12-pixel-wide image (centres 0..11): centres 9, 10, 11 of 6 are inside
    rs = write_rtstruct(tmp_path / "rs.dcm", series, {"GTV": [_square(8.5, 1.5, 14.5, 3.5, 4.0)]})
    mask = _read(series, rs)
    assert mask.voxel_count == 3 * 2
    assert mask.notes == ("RTSTRUCT ROI 'GTV' reaches beyond the image's edge: only its part inside the image is kept",)


SQUARE, ABOVE, BESIDE = _square(1.5, 1.5, 4.5, 4.5), _square(1.5, 1.5, 4.5, 4.5, 2.0), _square(3.5, 3.5, 6.5, 6.5)
BAD_ROIS = {
    "several-no-roi": ({"A": [SQUARE], "B": [ABOVE]}, (), ("holds 2 ROIs", "'A'", "'B'", "--roi")),
    "unknown-roi": ({"A": [SQUARE]}, ("GTV",), ("no ROI 'GTV'", "holds 'A'")),
    "empty-roi": ({"A": []}, (), ("ROI 'A' is empty",)),
    "between-slices": ({"A": [_square(1.5, 1.5, 4.5, 4.5, 3.0)]}, (), ("between image slices", "3.00 mm")),
    "outside": ({"A": [_square(1.5, 1.5, 4.5, 4.5, 40.0)]}, (), ("outside the image",)),
    "overlap": ({"A": [SQUARE], "B": [BESIDE]}, ("A", "B"), ("overlap in 1 voxels",)),
}


@pytest.mark.parametrize(("rois", "chosen", "fragments"), list(BAD_ROIS.values()), ids=list(BAD_ROIS))
def test_bad_rois_are_refused(series: list[Path], tmp_path: Path, rois, chosen, fragments) -> None:
    rs = write_rtstruct(tmp_path / "rs.dcm", series, rois)
    with pytest.raises(MetatrackError) as err:
        _read(series, rs, *chosen)
    assert str(err.value).startswith(str(rs)) and "\n" not in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_rtstruct_of_another_series_or_frame_is_refused(series: list[Path], tmp_path: Path) -> None:
    roi = {"A": [_square(1.5, 1.5, 4.5, 4.5)]}
    other = write_rtstruct(tmp_path / "other.dcm", series, roi, referenced_series_uid="1.2.3.4")
    with pytest.raises(MetatrackError, match=r"references series 1\.2\.3\.4, not the image's series"):
        _read(series, other)
    frame = write_rtstruct(tmp_path / "frame.dcm", series, roi, frame_of_reference_uid="1.2.3.5")
    with pytest.raises(MetatrackError, match=r"frame of reference 1\.2\.3\.5 is not the image's"):
        _read(series, frame)


def test_rtstruct_needs_its_dicom_series(series: list[Path], tmp_path: Path) -> None:
    import SimpleITK as sitk

    rs = write_rtstruct(tmp_path / "rs.dcm", series, {"A": [_square(1.5, 1.5, 4.5, 4.5)]})
    nifti = tmp_path / "ct.nii.gz"
    sitk.WriteImage(read_image(series[0].parent).image, str(nifti))
    with pytest.raises(MetatrackError, match="needs the DICOM series it references"):
        read_mask(rs, read_image(nifti).image)


def _phantom() -> Path:
    folder = shared_ibsi() / "ibsi_1" / "ct_phantom"
    if not (folder / "dicom" / "mask" / "DCM_RS_00060.dcm").is_file():
        pytest.skip(f"IBSI CT phantom (CC BY-NC, not vendored) not found under {folder}; set METATRACK_IBSI_DATA")
    return folder


def test_ibsi_phantom_gtv_matches_the_nifti_mask() -> None:
    import SimpleITK as sitk

    folder = _phantom()
    loaded = read_image(folder / "dicom" / "image")
    mask = read_mask(
        folder / "dicom" / "mask" / "DCM_RS_00060.dcm", loaded.image, MaskContext(loaded.dicom, ("GTV-1",))
    )
    ours = sitk.GetArrayFromImage(mask.mask) > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "nifti" / "mask" / "mask.nii.gz"))) > 0
    dice = 2 * (ours & truth).sum() / (ours.sum() + truth.sum())
    print(f"GTV-1: {ours.sum()} voxels (NIfTI {truth.sum()}), Dice {dice:.6f}")
    assert dice >= 0.99
    assert abs(int(ours.sum()) - int(truth.sum())) <= 0.005 * truth.sum()
    assert mask.label_names == {1: "GTV-1"} and mask.voxel_count == int(ours.sum())

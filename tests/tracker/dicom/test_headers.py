"""A series' kept headers (slice order of the SOP instances, the date's fallbacks, nothing identifying) and what a
folder survey lists."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_dicom_series, write_rtstruct
from tracker.dicom.headers import KEPT_KEYS
from tracker.errors import MetatrackError
from tracker.imageio import read_image

SERIES = "1.2.826.0.1.3680043.8.498.7.1"


def _image():
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    img.SetSpacing((0.7, 0.7, 3.0))
    img.SetOrigin((1.0, -2.0, -30.0))
    return img


def test_headers_kept_in_slice_order_and_nothing_identifying(tmp_path: Path) -> None:
    import SimpleITK as sitk

    folder = tmp_path / "SecretFolder"
    files = write_dicom_series(_image(), folder, series_uid=SERIES, patient_name="Secret^Name")
    for k, path in enumerate(files):  # file names now run against the slice order
        path.rename(path.with_name(f"x{len(files) - k}.dcm"))
    loaded = read_image(folder)
    assert loaded.dicom is not None
    meta = loaded.dicom.metadata
    assert tuple(meta) == KEPT_KEYS
    assert meta["sop_instance_uids"] == [f"{SERIES}.{k + 1}" for k in range(4)]  # slice k of the stored image
    assert np.array_equal(sitk.GetArrayFromImage(loaded.image), sitk.GetArrayFromImage(_image()))
    assert meta["modality"] == "CT" and meta["study_date"] == "2024-01-01" and meta["slice_thickness"] == 3.0
    assert (meta["manufacturer"], meta["manufacturer_model_name"], meta["convolution_kernel"]) == (
        "TestVendor",
        "TestScanner 1",
        "B30f",
    )
    assert (loaded.dicom.scan_date, loaded.dicom.date_keyword) == (date(2024, 1, 1), "StudyDate")
    text = repr(meta)
    for value in ("Secret", "MRN0000001", "19600101", "ACC0000001", "Test Hospital", "SecretFolder"):
        assert value not in text


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        (
            {"study_date": "", "series_date": "20230505", "acquisition_date": "20230506"},
            (date(2023, 5, 5), "SeriesDate"),
        ),
        ({"study_date": "", "acquisition_date": "20230506"}, (date(2023, 5, 6), "AcquisitionDate")),
        ({"study_date": ""}, (None, None)),
    ],
)
def test_scan_date_falls_back_to_series_then_acquisition_date(tmp_path: Path, dates, expected) -> None:
    write_dicom_series(_image(), tmp_path / "ct", **dates)
    series = read_image(tmp_path / "ct").dicom
    assert series is not None and (series.scan_date, series.date_keyword) == expected
    assert series.metadata["study_date"] is None


def test_folder_with_several_series_or_an_rtstruct_lists_them_and_asks(tmp_path: Path) -> None:
    write_dicom_series(_image(), tmp_path / "study", series_uid=SERIES)
    for path in write_dicom_series(
        _image(), tmp_path / "mr", series_uid="1.2.826.0.1.3680043.8.498.7.2", modality="MR"
    ):
        path.rename(tmp_path / "study" / f"mr_{path.name}")
    with pytest.raises(MetatrackError) as err:
        read_image(tmp_path / "study")
    assert f"holds 2 DICOM series: CT series {SERIES} (4 files); MR series 1.2.826.0.1.3680043.8.498.7.2" in str(
        err.value
    )
    assert "--series UID" in str(err.value)
    assert read_image(tmp_path / "study", SERIES).dicom.metadata["modality"] == "CT"  # type: ignore[union-attr]

    folder = tmp_path / "one"
    files = write_dicom_series(_image(), folder, series_uid=SERIES)
    rs = write_rtstruct(folder / "rs.dcm", files, {"GTV": []})
    with pytest.raises(
        MetatrackError, match=r"holds 1 DICOM series and 1 RTSTRUCT/SEG: .*; RTSTRUCT rs\.dcm; .*--mask"
    ):
        read_image(folder)
    assert read_image(folder, beside=[rs]).dicom is not None  # given as the mask: no question
    assert read_image(folder, beside=[tmp_path / "mask.nii.gz"]).dicom is not None  # a mask was given: no question
    assert read_image(folder, SERIES).dicom is not None  # the series named: the image alone


def test_recursive_finds_the_series_in_subfolders(tmp_path: Path) -> None:
    write_dicom_series(_image(), tmp_path / "patient" / "study" / "series", series_uid=SERIES)
    with pytest.raises(MetatrackError, match="no DICOM image series found in this folder; --recursive searches"):
        read_image(tmp_path / "patient")
    loaded = read_image(tmp_path / "patient", recursive=True)
    assert loaded.image.GetSize() == (6, 5, 4) and len(loaded.content_files) == 4

"""Input integrity of `tracker.imageio`: broken DICOM series, broken NIfTI headers, oversized declared volumes and
mask labels that do not fit the stored label type are refused with one line naming the file and the problem.

Every bad file is crafted in tmp (pydicom, struct, gzip): headers declare what the payload does not hold, so no
test writes or decodes a large volume.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from cli.main import app
from db import repo
from db.migrate import upgrade
from db.session import make_engine, session_scope
from tests.helpers import shared_ibsi
from tracker.errors import MetatrackError
from tracker.imageio import MaskContext, read_image, read_mask

# --- DICOM -------------------------------------------------------------------------------------------------------


def _dicom_series(
    folder: Path,
    n: int = 8,
    spacing: float = 3.0,
    z0: float = 10.0,
    skip: tuple[int, ...] = (),
    edit: Callable[[int, object], None] | None = None,
) -> Path:
    """A tiny axial CT series (6 rows x 5 columns, int16) at z = z0 + i * spacing, one file per slice."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for i in range(n):
        if i in skip:
            continue
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "SYN", i + 1
        ds.ImagePositionPatient = [-7.5, -9.0, z0 + i * spacing]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.5, 1.5], spacing
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 6, 5, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = (np.arange(30, dtype=np.int16) + 100 * i).tobytes()
        if edit is not None:
            edit(i, ds)
        ds.save_as(folder / f"s{i:03d}.dcm", enforce_file_format=True)
    return folder


def _truncate(path: Path, keep: float = 0.5, pixel_bytes: int = 60) -> None:
    """Cut `path` inside its pixel data (which is its last element), keeping `keep` of it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - pixel_bytes + int(pixel_bytes * keep)])


def _refused(path: Path, *fragments: str, mask_for: sitk.Image | None = None) -> str:
    """The one-line MetatrackError message for reading `path`, checked to hold every fragment."""
    with pytest.raises(MetatrackError) as info:
        if mask_for is None:
            read_image(path)
        else:
            read_mask(path, mask_for)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert path.name in msg, msg
    problem = msg.replace(str(path.parent), "")  # tmp folders are named after the test
    for fragment in fragments:
        assert fragment in problem, msg
    return msg


def test_intact_synthetic_series_is_read(tmp_path: Path) -> None:
    img = read_image(_dicom_series(tmp_path / "ok")).image
    assert img.GetSize() == (5, 6, 8)
    np.testing.assert_allclose(img.GetSpacing(), (1.5, 1.5, 3.0))


def test_position_jitter_within_tolerance_is_accepted_silently(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # +-0.01 mm of rounding on 3 mm slices (tolerance 0.03 mm): read, and ITK's non-uniformity warning stays off
    def jitter(i: int, ds) -> None:
        ds.ImagePositionPatient = [-7.5, -9.0, 10.0 + 3.0 * i + (0.01 if i % 2 else -0.01)]

    capfd.readouterr()
    img = read_image(_dicom_series(tmp_path / "jitter", edit=jitter)).image
    assert img.GetSize() == (5, 6, 8) and img.GetSpacing()[2] == pytest.approx(3.0, abs=0.01)
    assert capfd.readouterr().err == ""


def test_missing_slices_are_refused_with_the_gap(tmp_path: Path) -> None:
    # slices 3 and 4 (z = 19 and 22) removed: ITK read 6 slices at 4.2 mm with only a warning
    folder = _dicom_series(tmp_path / "gap", skip=(3, 4))
    _refused(
        folder,
        "2 slices missing",
        "between slice positions z=16.0 and z=25.0 mm (spacing 3.0 mm expected, found 9.0)",
    )


def test_truncated_slice_is_refused_naming_the_file(tmp_path: Path) -> None:
    # GDCM silently leaves a truncated file out of the series: ITK read 7 slices at 3.5 mm
    folder = _dicom_series(tmp_path / "trunc")
    _truncate(folder / "s003.dcm")
    _refused(folder, "s003.dcm", "truncated", "pixel data")


def _instance_gap(i: int, ds) -> None:
    ds.InstanceNumber = i + 1 + (3 if i >= 4 else 0)


def _tilted(i: int, ds) -> None:
    ds.ImagePositionPatient = [-7.5, -9.0 + 0.5 * i, 10.0 + 3.0 * i]


def _uneven(i: int, ds) -> None:
    ds.ImagePositionPatient = [-7.5, -9.0, 10.0 + 3.0 * i + (0.4 if i == 5 else 0.0)]


def _drift(i: int, ds) -> None:  # steps grow from 3.0 to 3.18 mm: each near the median, the stack not even
    ds.ImagePositionPatient = [-7.5, -9.0, 10.0 + 3.0 * i + 0.015 * i * (i - 1)]


def _duplicate(i: int, ds) -> None:
    ds.ImagePositionPatient = [-7.5, -9.0, 10.0 + 3.0 * min(i, 6)]


def _orientation(i: int, ds) -> None:
    if i == 2:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.99, 0.141]


def _rows(i: int, ds) -> None:
    if i == 6:
        ds.Rows, ds.PixelData = 3, ds.PixelData[:30]


def _short_pixels(i: int, ds) -> None:
    if i == 1:
        ds.PixelData = ds.PixelData[:40]


BAD_SERIES = {
    "instance gap": (_instance_gap, ("InstanceNumber jumps from 4 to 8", "3 numbers missing")),
    "gantry tilt": (_tilted, ("not stacked along their normal", "gantry tilt")),
    "uneven spacing": (_uneven, ("uneven slice spacing", "z=22.0 and z=25.4 mm", "found 3.4")),
    "drift": (_drift, ("drift from an evenly spaced stack", "0.105 mm off", "tolerance 0.0309 mm")),
    "duplicate position": (_duplicate, ("2 slices at the same position z=28.0 mm",)),
    "orientation": (_orientation, ("s002.dcm", "ImageOrientationPatient")),
    "rows": (_rows, ("s006.dcm", "3 x 5 pixels", "6 x 5")),
    "short pixel data": (_short_pixels, ("s001.dcm", "pixel data is 40 bytes", "declare 60")),
}


@pytest.mark.parametrize("case", sorted(BAD_SERIES))
def test_inconsistent_series_is_refused(tmp_path: Path, case: str) -> None:
    edit, fragments = BAD_SERIES[case]
    _refused(_dicom_series(tmp_path / case.replace(" ", "_"), edit=edit), *fragments)


def test_damaged_dicom_file_in_the_folder_is_refused(tmp_path: Path) -> None:
    folder = _dicom_series(tmp_path / "damaged")
    path = folder / "s005.dcm"
    path.write_bytes(path.read_bytes()[:200])  # DICM preamble, header cut short
    _refused(folder, "s005.dcm")


def _ibsi_ct_series() -> Path:
    folder = shared_ibsi() / "ibsi_1" / "ct_phantom" / "dicom" / "image"
    if not folder.is_dir():
        pytest.skip(f"IBSI CT phantom DICOM series not found at {folder} (set METATRACK_IBSI_DATA)")
    return folder


@pytest.fixture()
def phantom(tmp_path: Path) -> Path:
    """A writable copy of the IBSI 1 CT phantom's 60-slice series (3.0 mm, z from 76.6 down to -100.4)."""
    return Path(shutil.copytree(_ibsi_ct_series(), tmp_path / "phantom"))


def test_phantom_series_reads_as_60_slices_at_3_mm(phantom: Path) -> None:
    img = read_image(phantom).image
    assert img.GetSize()[2] == 60
    assert img.GetSpacing()[2] == pytest.approx(3.0, abs=1e-4)


def test_phantom_with_three_slices_removed_is_refused(phantom: Path) -> None:
    for i in (20, 21, 22):  # z = 16.6, 13.6, 10.6
        (phantom / f"DCM_IMG_{i:05d}.dcm").unlink()
    _refused(phantom, "3 slices missing", "between slice positions z=7.6 and z=19.6 mm", "found 12.0")


def test_phantom_with_a_half_length_slice_is_refused(phantom: Path) -> None:
    path = phantom / "DCM_IMG_00030.dcm"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refused(phantom, "DCM_IMG_00030.dcm", "truncated")


def test_dicom_series_above_the_size_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METATRACK_MAX_VOXELS", "200")
    _refused(_dicom_series(tmp_path / "big"), "5 x 6 x 8", "240 voxels", "METATRACK_MAX_VOXELS", "200")


# --- masks --------------------------------------------------------------------------------------------------------


def test_mask_label_above_65535_is_refused(tmp_path: Path) -> None:
    ref = sitk.Image(6, 5, 4, sitk.sitkInt16)
    arr = np.zeros((4, 5, 6), np.uint32)
    arr[1, 1, 1], arr[2, 2, 2] = 3, 65536  # 65536 wrapped to 0: the lesion vanished
    mask = sitk.GetImageFromArray(arr)
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(mask, str(path))
    _refused(path, "mask label 65536", "largest supported label 65535", mask_for=ref)
    arr[2, 2, 2] = 65535
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    assert read_mask(path, ref).labels == [3, 65535]


def test_roi_or_segment_choice_on_a_volume_mask_or_an_unknown_file_is_refused(tmp_path: Path) -> None:
    ref = sitk.Image(6, 5, 4, sitk.sitkInt16)
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(sitk.Image(6, 5, 4, sitk.sitkUInt8), str(path))
    with pytest.raises(MetatrackError, match="--roi and --segment choose in an RTSTRUCT or DICOM SEG, not a volume"):
        read_mask(path, ref, MaskContext(rois=("GTV",)))
    other = tmp_path / "mask.dcm"
    other.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 20)  # a DICOM preamble and nothing readable
    with pytest.raises(MetatrackError, match=r"unsupported mask format .* a DICOM RTSTRUCT or SEG"):
        read_mask(other, ref)


# --- NIfTI headers --------------------------------------------------------------------------------------------------

SHAPE_XYZ = (6, 5, 4)
NAN, INF = float("nan"), float("inf")


def _nifti1(
    dims: tuple[int, ...] = SHAPE_XYZ,
    datatype: int = 4,
    bitpix: int = 16,
    pixdim: tuple[float, ...] = (1.0, 0.8, 0.8, 2.5),
    vox_offset: float = 352.0,
    scl: tuple[float, float] = (0.0, 0.0),
    qform: tuple[float, ...] = (0.0, 0.0, 0.0, -10.0, 5.0, 3.0),
    srow: tuple[float, ...] = (0.8, 0, 0, -10.0, 0, 0.8, 0, 5.0, 0, 0, 2.5, 3.0),
    dim0: int | None = None,
    magic: bytes = b"n+1\0",
) -> bytearray:
    """A single-file NIfTI-1 header (352 bytes with the extension flag), little endian, qform and sform set."""
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    d = [len(dims) if dim0 is None else dim0, *dims] + [1] * (7 - len(dims))
    struct.pack_into("<8h", h, 40, *d)
    struct.pack_into("<2h", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, *pixdim, *([1.0] * (8 - len(pixdim))))
    struct.pack_into("<3f", h, 108, vox_offset, *scl)
    h[123] = 2  # xyzt_units: mm
    struct.pack_into("<2h", h, 252, 1, 1)  # qform_code, sform_code: scanner
    struct.pack_into("<6f", h, 256, *qform)
    struct.pack_into("<12f", h, 280, *srow)
    h[344:348] = magic
    return h


def _nifti2(vox_offset: int = 544) -> bytearray:
    """A single-file NIfTI-2 header (544 bytes with the extension flag), little endian, sform set."""
    h = bytearray(544)
    struct.pack_into("<i", h, 0, 540)
    h[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<2h", h, 12, 4, 16)
    struct.pack_into("<8q", h, 16, 3, *SHAPE_XYZ, 1, 1, 1, 1)
    struct.pack_into("<8d", h, 104, 1.0, 0.8, 0.8, 2.5, 1, 1, 1, 1)
    struct.pack_into("<q", h, 168, vox_offset)
    struct.pack_into("<2i", h, 344, 0, 1)
    struct.pack_into("<12d", h, 400, 0.8, 0, 0, -10.0, 0, 0.8, 0, 5.0, 0, 0, 2.5, 3.0)
    struct.pack_into("<i", h, 500, 2)
    return h


def _payload(dtype: str = "<i2", start: int = 0) -> bytes:
    return np.arange(start, start + int(np.prod(SHAPE_XYZ))).astype(dtype).tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data, 1) if path.name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("name", ["ok.nii", "ok.nii.gz"])
def test_crafted_nifti1_is_read(tmp_path: Path, name: str) -> None:
    img = read_image(_write(tmp_path / name, bytes(_nifti1()) + _payload())).image
    assert img.GetSize() == SHAPE_XYZ
    np.testing.assert_allclose(img.GetSpacing(), (0.8, 0.8, 2.5), rtol=1e-6)
    assert sitk.GetArrayViewFromImage(img).ravel()[7] == 7


BAD_NIFTI1 = {
    # name: (header, payload, message fragments)
    "neg_offset.nii": (_nifti1(vox_offset=-16.0), _payload(), ("vox_offset -16", "at least 352")),
    "low_offset.nii.gz": (_nifti1(vox_offset=300.0), _payload(), ("vox_offset 300", "at least 352")),
    "frac_offset.nii": (_nifti1(vox_offset=352.5), _payload(), ("vox_offset 352.5", "whole number")),
    "nan_pixdim.nii.gz": (_nifti1(pixdim=(1.0, NAN, 0.8, 2.5)), _payload(), ("pixdim[1]", "nan")),
    "zero_pixdim.nii": (_nifti1(pixdim=(1.0, 0.8, 0.8, 0.0)), _payload(), ("pixdim[3] is 0",)),
    "inf_slope.nii": (_nifti1(scl=(INF, 0.0)), _payload(), ("scl_slope", "inf")),
    "nan_inter.nii": (_nifti1(scl=(1.0, NAN)), _payload(), ("scl_inter", "nan")),
    "nan_qform.nii": (_nifti1(qform=(NAN, 0, 0, 0, 0, 0)), _payload(), ("quatern_b", "nan")),
    "nan_srow.nii.gz": (_nifti1(srow=(NAN,) + (0.0,) * 11), _payload(), ("srow_x", "nan")),
    "bitpix8.nii": (_nifti1(datatype=16, bitpix=8), _payload("<f4"), ("bitpix 8", "datatype 16 (float32)", "32")),
    "dim0_9.nii": (_nifti1(dim0=9), _payload(), ("dim[0] is 9", "1 to 7")),
    "dim_zero.nii": (_nifti1(dims=(6, 0, 4)), b"", ("dim[2] is 0",)),
    "dim_neg.nii.gz": (_nifti1(dims=(6, -5, 4)), _payload(), ("dim[2] is -5",)),
    "datatype.nii": (_nifti1(datatype=1536, bitpix=128), _payload(), ("datatype 1536", "not supported")),
    "magic.nii": (_nifti1(magic=b"ni1\0"), _payload(), ("magic", "n+1")),
    "truncated.nii.gz": (_nifti1(), _payload()[:-10], ("truncated", "582 bytes", "declares 592")),
}


@pytest.mark.parametrize("name", sorted(BAD_NIFTI1))
def test_broken_nifti1_header_is_refused(tmp_path: Path, name: str) -> None:
    header, payload, fragments = BAD_NIFTI1[name]
    _refused(_write(tmp_path / name, bytes(header) + payload), *fragments)


def test_nifti2_is_refused_plainly(tmp_path: Path) -> None:
    # ITK vendors only the NIfTI-1 library: it answered "Unable to determine ImageIO reader"
    _refused(_write(tmp_path / "two.nii.gz", bytes(_nifti2()) + _payload()), "NIfTI-2", "not supported")


# --- declared size (gzip bombs) ----------------------------------------------------------------------------------


def test_nifti_gzip_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    # 1024^3 int16 declared (2 GiB once decoded); the refusal comes from the header, before any voxel is read
    path = _write(tmp_path / "bomb.nii.gz", bytes(_nifti1(dims=(1024, 1024, 1024))) + bytes(1 << 20))
    _refused(path, "1024 x 1024 x 1024", "1,073,741,824 voxels", "2.1 GB", "limit of 1,000,000,000", "MAX_VOXELS")


def test_a_large_real_ct_passes_the_size_limit(tmp_path: Path) -> None:
    # 512 x 512 x 2000 int16 is declared, only the header is there: refused as truncated, not as too large
    path = _write(tmp_path / "ct.nii.gz", bytes(_nifti1(dims=(512, 512, 2000))) + bytes(1000))
    msg = _refused(path, "truncated")
    assert "limit" not in msg


def test_size_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "small.nii.gz", bytes(_nifti1()) + _payload())
    assert read_image(path).image.GetSize() == SHAPE_XYZ
    monkeypatch.setenv("METATRACK_MAX_VOXELS", "100")
    _refused(path, "6 x 5 x 4", "120 voxels", "limit of 100")
    monkeypatch.setenv("METATRACK_MAX_VOXELS", "lots")
    with pytest.raises(MetatrackError, match="METATRACK_MAX_VOXELS must be a positive whole number, not 'lots'"):
        read_image(path)


def test_nrrd_gzip_bomb_is_refused(tmp_path: Path) -> None:
    header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 1024 1024 1024\nencoding: gzip\nendian: little\n\n"
    path = tmp_path / "bomb.nrrd"
    path.write_bytes(header + gzip.compress(bytes(1 << 20)))
    _refused(path, "1024 x 1024 x 1024", "2.1 GB", "limit of 1,000,000,000")


def test_mha_gzip_bomb_is_refused(tmp_path: Path) -> None:
    header = (
        b"ObjectType = Image\nNDims = 3\nDimSize = 1024 1024 1024\nElementType = MET_FLOAT\n"
        b"CompressedData = True\nElementDataFile = LOCAL\n"
    )
    path = tmp_path / "bomb.mha"
    path.write_bytes(header + gzip.compress(bytes(1 << 20)))
    _refused(path, "1024 x 1024 x 1024", "4.3 GB", "limit of 1,000,000,000")


def test_nrrd_and_mha_written_by_itk_are_read(tmp_path: Path) -> None:
    img = sitk.GetImageFromArray(np.arange(120, dtype=np.int16).reshape(4, 5, 6))
    for name in ("a.nrrd", "a.mha"):
        sitk.WriteImage(img, str(tmp_path / name), useCompression=True)
        assert read_image(tmp_path / name).image.GetSize() == SHAPE_XYZ


# --- through the CLI: exit 1, one line, database and store unchanged -----------------------------------------------


BadInput = tuple[list[str], str, str]  # ingest arguments, the file the error names, a fragment of the error


def _bad_gap_series(tmp_path: Path) -> BadInput:
    folder = _dicom_series(tmp_path / "gapseries", skip=(3, 4))
    return [str(folder)], folder.name, "spacing 3.0 mm expected, found 9.0"


def _bad_nifti(tmp_path: Path) -> BadInput:
    path = _write(tmp_path / "nanpix.nii.gz", bytes(_nifti1(pixdim=(1.0, NAN, 0.8, 2.5))) + _payload())
    return [str(path)], path.name, "pixdim[1]"


def _bad_bomb(tmp_path: Path) -> BadInput:
    path = _write(tmp_path / "bomb.nii.gz", bytes(_nifti1(dims=(1024, 1024, 1024))) + bytes(4096))
    return [str(path)], path.name, "limit of 1,000,000,000"


def _bad_mask(tmp_path: Path) -> BadInput:
    image = _write(tmp_path / "fu.nii.gz", bytes(_nifti1()) + _payload(start=7))
    labels = np.zeros(SHAPE_XYZ[::-1], np.uint32)
    labels[1, 1, 1] = 70000
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(read_image(image).image)
    sitk.WriteImage(mask, str(tmp_path / "fu_mask.nii.gz"))
    return [str(image), "--mask", str(tmp_path / "fu_mask.nii.gz")], "fu_mask.nii.gz", "mask label 70000"


@pytest.mark.parametrize("bad", [_bad_gap_series, _bad_nifti, _bad_bomb, _bad_mask], ids=lambda f: f.__name__[5:])
def test_cli_ingest_of_bad_input_changes_nothing(
    tmp_path: Path, home: Path, capfd: pytest.CaptureFixture[str], bad: Callable[[Path], BadInput]
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = make_engine(url)
    upgrade(engine)
    runner = CliRunner()
    baseline = _write(tmp_path / "base.nii.gz", bytes(_nifti1()) + _payload())
    ok = runner.invoke(app, ["--db", url, "--no-progress", "ingest", str(baseline), "-p", "P1", "-d", "2024-01-10"])
    assert ok.exit_code == 0, ok.stderr
    with session_scope(engine) as s:
        before = repo.table_counts(s)
    store_before = sorted((home / "store").rglob("*"))
    assert before["scans"] == 1 and store_before
    args, named, fragment = bad(tmp_path)
    capfd.readouterr()
    res = runner.invoke(app, ["--db", url, "--no-progress", "ingest", *args, "-p", "P1", "-d", str(date(2024, 3, 1))])
    assert res.exit_code == 1, (res.stdout, res.stderr, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], res.stderr
    assert named in lines[0], lines[0]
    assert capfd.readouterr().err == ""  # nor a warning from ITK/GDCM on the process's stderr
    with session_scope(engine) as s:
        assert repo.table_counts(s) == before
    assert sorted((home / "store").rglob("*")) == store_before
    engine.dispose()

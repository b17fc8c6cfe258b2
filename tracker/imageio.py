"""Reading and checking images and lesion masks (NIfTI, NRRD, MHA, DICOM series); no computation here.

Masks are read through `MaskReader`s chosen by `read_mask`: NIfTI/NRRD/MHA label or binary maps, RTSTRUCT contours
(rasterised, `tracker.dicom.rtstruct`) and DICOM SEG (`tracker.dicom.seg`). A reader returns the integer label image
on the reference image's grid and the files that define the mask's content; ingest stores that label image (as
NIfTI, keyed by the hash of those files), so a reader for a new format is one class added to `MASK_READERS`.
A DICOM folder is surveyed first (`tracker.dicom.discovery`): several image series, or an RTSTRUCT/SEG beside the
image that was not given as the mask, are listed and the user is asked which to use.

Nothing is handed to ITK on trust: NIfTI-1 headers are checked field by field (ITK shifts voxels by a negative
vox_offset and reads NaN geometry), every header's declared size is held against `max_voxels()` before a voxel is
decoded (gzip bombs), and a DICOM series is checked file by file and as a stack (ITK reads a series with missing or
truncated slices at a wrong spacing, with a warning only). Every refusal is one `MetatrackError` line naming the
file and the problem.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tracker.errors import MetatrackError

if TYPE_CHECKING:
    import SimpleITK as sitk

    from tracker.dicom.discovery import ImageSeries
    from tracker.dicom.headers import DicomSeries

VOLUME_SUFFIXES = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
}
SPACING_TOL_MM = 1e-3
ORIGIN_TOL_MM = 1e-2
DIRECTION_TOL = 1e-4


def volume_suffix(path: Path) -> str | None:
    """The recognised volume suffix of `path` ('.nii.gz', '.nrrd', ...) or None."""
    name = path.name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


@dataclass(frozen=True)
class LoadedImage:
    """An image read from disk with what identifies its content."""

    image: sitk.Image
    source_format: str  # nifti | nrrd | mha | dicom
    content_files: list[Path]  # the files whose bytes define the content hash, in a fixed order (DICOM: slice order)
    dicom: DicomSeries | None = None  # a DICOM series' kept headers


@dataclass(frozen=True)
class MaskContext:
    """What a mask reader may need besides the reference grid: the image's DICOM headers and the user's choice of
    RTSTRUCT ROIs (`--roi`) or SEG segments (`--segment`): exact names, else regular expressions (or numbers)."""

    dicom: DicomSeries | None = None
    rois: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()


@dataclass(frozen=True)
class MaskContent:
    """What a `MaskReader` returns."""

    mask: sitk.Image  # integer label image (0 = background) on the reference image's grid
    content_files: list[Path]  # the source files whose bytes define the mask's content hash, in a fixed order
    label_names: dict[int, str] | None = None  # label -> ROI or segment name, where the format names them
    notes: tuple[str, ...] = ()  # what the user should know about the reading (a threshold applied, ...)


@dataclass(frozen=True)
class LoadedMask:
    mask: sitk.Image  # integer label image (0 = background) on the reference image's grid
    source_format: str
    content_files: list[Path]
    labels: list[int]
    voxel_count: int
    label_names: dict[int, str] | None = None
    notes: tuple[str, ...] = ()


def _itk_message(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in reversed(lines) if not ln.startswith(("File", "itk::", "Exception"))), "")
    return detail or (lines[-1] if lines else type(exc).__name__)


# --- declared size ------------------------------------------------------------------------------------------------

MAX_VOXELS_ENV = "METATRACK_MAX_VOXELS"
# The largest volume (all axes and components counted) read at all. 1e9 voxels is 2 GB as int16 and 4 GB as the
# float32 copies registration and radiomics make: about what a workstation can still process. A whole-body CT of
# 512 x 512 x 2000 slices (5.2e8) passes with room to spare; a 1024^3 header (a typical gzip bomb: 1 MB on disk)
# does not. Checked on the header, before a single voxel is decoded.
DEFAULT_MAX_VOXELS = 1_000_000_000


def max_voxels() -> int:
    """The size limit in voxels: $METATRACK_MAX_VOXELS, else DEFAULT_MAX_VOXELS."""
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 1 and value.is_integer()):
        raise MetatrackError(f"{MAX_VOXELS_ENV} must be a positive whole number, not {raw!r}")
    return int(value)


def _size_problem(shape: Sequence[int], bytes_per_voxel: float | None) -> str | None:
    """Why a volume of `shape` (declared by its header) is too large to read, or None."""
    n = math.prod(shape)
    limit = max_voxels()
    if n <= limit:
        return None
    size = f", {n * bytes_per_voxel / 1e9:.1f} GB" if bytes_per_voxel else ""
    return (
        f"the header declares {' x '.join(str(d) for d in shape)} = {n:,} voxels{size}, more than the limit of "
        f"{limit:,} voxels (raise {MAX_VOXELS_ENV} to read larger volumes)"
    )


# --- NIfTI ----------------------------------------------------------------------------------------------------------

# datatype code: (name, bits per voxel) for the types ITK reads; FLOAT128, COMPLEX256 and BINARY it does not
NIFTI_DATATYPES: dict[int, tuple[str, int]] = {
    2: ("uint8", 8),
    4: ("int16", 16),
    8: ("int32", 32),
    16: ("float32", 32),
    32: ("complex64", 64),
    64: ("float64", 64),
    128: ("rgb24", 24),
    256: ("int8", 8),
    512: ("uint16", 16),
    768: ("uint32", 32),
    1024: ("int64", 64),
    1280: ("uint64", 64),
    1792: ("complex128", 128),
    2304: ("rgba32", 32),
}
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
NIFTI1_MIN_OFFSET = 352  # 348-byte header + 4-byte extension flag of a single-file (.nii) NIfTI-1
_CHUNK_BYTES = 1 << 24


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class _NiftiLayout:
    endian: str
    datatype: int
    shape: tuple[int, ...]  # dim[1..dim[0]]
    offset: int  # vox_offset: where the voxels start
    bytes_per_voxel: int

    @property
    def payload_bytes(self) -> int:
        return math.prod(self.shape) * self.bytes_per_voxel


def _fields(names: str, values: Sequence[float]) -> Iterator[tuple[str, float]]:
    return zip(names.split(), values, strict=True)


def _nifti1_layout(header: bytes) -> _NiftiLayout | str:
    """The voxel layout a NIfTI-1 header declares, or why the header cannot be trusted.

    Everything ITK relies on is checked: ITK shifts voxels by a negative vox_offset, reads NaN spacing and
    orientation into the image, and fails deep inside when bitpix contradicts the datatype.
    """
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    magic = bytes(header[344:348])
    if magic != b"n+1\0":
        shown = magic.rstrip(b"\0").decode("latin-1")
        return f"magic is {shown!r}, expected 'n+1' (a single-file NIfTI-1; 'ni1' is a .hdr/.img pair)"
    dim = struct.unpack(f"{endian}8h", header[40:56])
    datatype, bitpix = struct.unpack(f"{endian}2h", header[70:74])
    pixdim = struct.unpack(f"{endian}8f", header[76:108])
    vox_offset, scl_slope, scl_inter = struct.unpack(f"{endian}3f", header[108:120])
    qform_code, sform_code = struct.unpack(f"{endian}2h", header[252:256])
    quatern = struct.unpack(f"{endian}6f", header[256:280])
    srow = struct.unpack(f"{endian}12f", header[280:328])
    if not 1 <= dim[0] <= 7:
        return f"dim[0] is {dim[0]}, expected 1 to 7 (the number of dimensions)"
    shape = tuple(int(d) for d in dim[1 : dim[0] + 1])
    for i, d in enumerate(shape, start=1):
        if d < 1:
            return f"dim[{i}] is {d}, expected a positive size"
    if datatype not in NIFTI_DATATYPES:
        return f"datatype {datatype} is not supported (expected one of {sorted(NIFTI_DATATYPES)})"
    name, bits = NIFTI_DATATYPES[datatype]
    if bitpix != bits:
        return f"bitpix {bitpix} contradicts datatype {datatype} ({name}), which has {bits} bits per voxel"
    for i in range(0, dim[0] + 1):
        if not math.isfinite(pixdim[i]):
            return f"pixdim[{i}] is {pixdim[i]} (not finite)"
    for i in range(1, min(dim[0], 3) + 1):
        if pixdim[i] <= 0:
            return f"pixdim[{i}] is {pixdim[i]:g}, expected a positive voxel size"
    checked = [*_fields("scl_slope scl_inter", (scl_slope, scl_inter))]
    if qform_code > 0:
        checked += _fields("quatern_b quatern_c quatern_d qoffset_x qoffset_y qoffset_z", quatern)
    if sform_code > 0:
        checked += [(f"srow_{'xyz'[k // 4]}[{k % 4}]", v) for k, v in enumerate(srow)]
    for field, value in checked:
        if not math.isfinite(value):
            return f"{field} is {value} (not finite)"
    if not math.isfinite(vox_offset):
        return f"vox_offset is {vox_offset} (not finite)"
    if vox_offset < NIFTI1_MIN_OFFSET:
        return f"vox_offset {vox_offset:g} points inside the header (a single-file NIfTI-1 needs at least 352)"
    if not vox_offset.is_integer():
        return f"vox_offset {vox_offset:g} is not a whole number of bytes"
    return _NiftiLayout(endian, datatype, shape, int(vox_offset), bits // 8)


def _nifti_payload_problem(path: Path) -> str | None:
    """Why a NIfTI file cannot be read as it declares itself, or None.

    The header is validated before any voxel is decoded (its fields, then the declared size against the limit);
    then the voxels are streamed: ITK reads truncated files without complaint and turns NaN voxels into 0, so
    both are checked here on the raw bytes, a chunk at a time.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            header = fh.read(NIFTI1_MIN_OFFSET)
            if len(header) < 348:
                return f"file is {len(header)} bytes, shorter than a NIfTI header"
            size = {struct.unpack(f"{e}i", header[:4])[0] for e in "<>"}
            if 540 in size:
                return "NIfTI-2 files are not supported (ITK reads NIfTI-1 only): convert it to NIfTI-1, NRRD or MHA"
            if 348 not in size:
                return "not a NIfTI header (bad sizeof_hdr)"
            layout = _nifti1_layout(header)
            if isinstance(layout, str):
                return layout
            too_large = _size_problem(layout.shape, layout.bytes_per_voxel)
            if too_large:
                return too_large
            return _nifti_voxels_problem(fh, layout, len(header))
    except (OSError, EOFError, zlib.error) as exc:
        return f"compressed data is damaged ({exc})"


def _nifti_voxels_problem(fh: _Readable, layout: _NiftiLayout, position: int) -> str | None:
    """Stream the voxels after the header: truncation, non-finite floats; then read on to the end of the stream
    (at most one more chunk) so that gzip checks its CRC."""
    skip = layout.offset - position
    while skip > 0:
        got = len(fh.read(min(skip, _CHUNK_BYTES)))
        if not got:
            break
        position += got
        skip -= got
    needed = layout.offset + layout.payload_bytes
    float_type = NIFTI_FLOAT_TYPES.get(layout.datatype)
    item = layout.bytes_per_voxel
    chunk = _CHUNK_BYTES // item * item
    remaining = layout.payload_bytes if skip <= 0 else 0
    bad = 0
    while remaining > 0:
        data = fh.read(min(chunk, remaining))
        if not data:
            break
        position += len(data)
        remaining -= len(data)
        if float_type is not None:
            whole = len(data) // item * item
            voxels = np.frombuffer(data, dtype=layout.endian + float_type, count=whole // item)
            bad += int(np.count_nonzero(~np.isfinite(voxels)))
    if position < needed:
        return f"file is truncated: {position} bytes, the header declares {needed}"
    if bad:
        return f"{bad} voxels are not finite (NaN or infinity)"
    fh.read(_CHUNK_BYTES)
    return None


# --- NRRD and MHA text headers --------------------------------------------------------------------------------------

_HEADER_LIMIT = 1 << 20
NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t"), 2),
    **dict.fromkeys(("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int"), 8),
    **dict.fromkeys(("int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int"), 8),
    **dict.fromkeys(("uint64", "uint64_t", "double"), 8),
    "float": 4,
}
MHA_TYPE_BYTES = {
    **dict.fromkeys(("MET_CHAR", "MET_UCHAR"), 1),
    **dict.fromkeys(("MET_SHORT", "MET_USHORT"), 2),
    **dict.fromkeys(("MET_INT", "MET_UINT", "MET_LONG", "MET_ULONG", "MET_FLOAT"), 4),
    **dict.fromkeys(("MET_LONG_LONG", "MET_ULONG_LONG", "MET_DOUBLE"), 8),
}


def _text_header(path: Path, separator: str, last: str | None = None) -> dict[str, str]:
    """The fields of a NRRD ('key: value') or MetaImage ('Key = Value') header, keys in lower case, up to a blank
    line or the line whose key is `last`; at most the first MiB is read."""
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_LIMIT)
    for raw in head.split(b"\n"):
        line = raw.decode("latin-1").strip()
        if not line:
            break
        if line.startswith("#") or (separator == ":" and line.find(":=") == line.find(":")):
            continue  # a comment, or a NRRD key/value pair (not a field)
        key, sep, value = line.partition(separator)
        if sep:
            fields[key.strip().lower()] = value.strip()
        if last is not None and key.strip().lower() == last:
            break
    return fields


def _declared_shape(text: str | None, field: str) -> tuple[int, ...] | str | None:
    if text is None:
        return None  # ITK will say what is missing
    try:
        shape = tuple(int(v) for v in text.split())
    except ValueError:
        return f"{field} {text!r} are not whole numbers"
    if not shape or min(shape) < 1:
        return f"{field} {text!r} are not positive sizes"
    return shape


def _nrrd_header_problem(path: Path) -> str | None:
    fields = _text_header(path, ":")
    shape = _declared_shape(fields.get("sizes"), "NRRD sizes")
    if shape is None or isinstance(shape, str):
        return shape
    return _size_problem(shape, NRRD_TYPE_BYTES.get(fields.get("type", "").lower()))


def _mha_header_problem(path: Path) -> str | None:
    fields = _text_header(path, "=", last="elementdatafile")
    shape = _declared_shape(fields.get("dimsize"), "MetaImage DimSize")
    if shape is None or isinstance(shape, str):
        return shape
    channels = _declared_shape(fields.get("elementnumberofchannels", "1"), "MetaImage ElementNumberOfChannels")
    if isinstance(channels, str):
        return channels
    if channels and channels != (1,):
        shape = (*shape, *channels)
    return _size_problem(shape, MHA_TYPE_BYTES.get(fields.get("elementtype", "").upper()))


def _read_volume(path: Path) -> sitk.Image:
    import SimpleITK as sitk

    name = path.name.lower()
    problem = None
    if name.endswith((".nii", ".nii.gz")):
        problem = _nifti_payload_problem(path)
    elif name.endswith((".nrrd", ".nhdr")):
        problem = _nrrd_header_problem(path)
    elif name.endswith((".mha", ".mhd")):
        problem = _mha_header_problem(path)
    if problem:
        raise MetatrackError(f"{path}: {problem}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise MetatrackError(f"{path}: cannot be read as an image ({_itk_message(exc)})") from exc


# --- DICOM series ----------------------------------------------------------------------------------------------------

# Slice positions (projected on the slice normal) must lie on an evenly spaced stack, and on the normal through the
# first slice, within max(SLICE_POSITION_TOL_MM, SLICE_POSITION_TOL_FRACTION x spacing): 0.03 mm for 3 mm slices,
# 0.01 mm for 0.5 mm slices. That is far above the rounding of ImagePositionPatient (decimal strings, float32
# artefacts ~1e-5 mm) and far below any real defect (a missing slice is a 100 % jump); within it every voxel lies
# within 1 % of a slice of where ITK puts it (ITK spaces the slices by first-to-last distance / (n - 1)).
SLICE_POSITION_TOL_MM = 0.01
SLICE_POSITION_TOL_FRACTION = 0.01
UNIT_VECTOR_TOL = 1e-3
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class _DicomSlice:
    path: Path
    rows: int
    columns: int
    frames: int
    samples: int
    bits: int
    orientation: tuple[float, ...] | None  # ImageOrientationPatient: row then column direction cosines
    position: tuple[float, ...] | None  # ImagePositionPatient
    pixel_spacing: tuple[float, ...] | None
    instance: int | None


def _mm(value: float) -> str:
    """A position or distance in mm as people write it: 3.0, 9.0, 3.05, -97.4."""
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _dicom_numbers(path: Path, ds: Any, keyword: str, count: int) -> tuple[float, ...] | None:
    from pydicom.multival import MultiValue

    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        numbers = tuple(float(v) for v in (value if isinstance(value, MultiValue) else [value]))
    except (TypeError, ValueError):
        raise MetatrackError(f"{path}: {keyword} {value!r} is not numeric") from None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise MetatrackError(f"{path}: {keyword} {list(numbers)} is not {count} finite numbers")
    return numbers


def _dicom_int(path: Path, ds: Any, keyword: str) -> int | None:
    """A whole-number attribute, None when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MetatrackError(f"{path}: {keyword} {value!r} is not a whole number") from None


def _dicom_count(path: Path, ds: Any, keyword: str, default: int | None = None) -> int:
    """A positive whole-number attribute (Rows, BitsAllocated, ...); `default` when absent, else required."""
    number = _dicom_int(path, ds, keyword)
    if number is None:
        if default is None:
            raise MetatrackError(f"{path}: has no {keyword}")
        return default
    if number < 1:
        raise MetatrackError(f"{path}: {keyword} is {number}, expected a positive number")
    return number


def _read_dicom_slice(path: Path) -> _DicomSlice:
    """One file's header, checked to hold pixel data of the length its Rows x Columns x BitsAllocated declare."""
    import pydicom
    from pydicom.dataelem import DataElement, RawDataElement

    try:
        # pixel data beyond 4 kB stays on disk: its element header gives its length and where it starts
        ds = pydicom.dcmread(path, defer_size=4096)
        pixels = ds.get_item("PixelData", keep_deferred=True)
    except Exception as exc:  # pydicom raises many kinds of error on damaged files
        raise MetatrackError(f"{path}: damaged DICOM file ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    rows, columns, bits = (_dicom_count(path, ds, k) for k in ("Rows", "Columns", "BitsAllocated"))
    samples = _dicom_count(path, ds, "SamplesPerPixel", 1)
    frames = _dicom_count(path, ds, "NumberOfFrames", 1)
    expected = (rows * columns * samples * frames * bits + 7) // 8
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if isinstance(pixels, RawDataElement):
        length = present = int(pixels.length)
        if isinstance(pixels.value, bytes):  # small values are read at once: what the file held of it
            present = len(pixels.value)
        elif pixels.value_tell is not None and not (syntax is not None and syntax.is_deflated):
            present = path.stat().st_size - pixels.value_tell
    elif isinstance(pixels, DataElement):
        undefined = pixels.is_undefined_length or not isinstance(pixels.value, bytes)
        length = present = _UNDEFINED_LENGTH if undefined else len(pixels.value)
    else:
        raise MetatrackError(f"{path}: has no pixel data")
    if length != _UNDEFINED_LENGTH:  # native pixel data (encapsulated data is checked when ITK decodes it)
        if present < length:
            raise MetatrackError(
                f"{path}: file is truncated: its pixel data holds {max(present, 0)} of the {length} bytes "
                "its header declares"
            )
        if length < expected:
            declared = f"{rows} x {columns} x {bits} bits" + (f" x {frames} frames" if frames > 1 else "")
            raise MetatrackError(
                f"{path}: pixel data is {length} bytes, Rows x Columns x BitsAllocated ({declared}) declare {expected}"
            )
    return _DicomSlice(
        path,
        rows,
        columns,
        frames,
        samples,
        bits,
        _dicom_numbers(path, ds, "ImageOrientationPatient", 6),
        _dicom_numbers(path, ds, "ImagePositionPatient", 3),
        _dicom_numbers(path, ds, "PixelSpacing", 2),
        _dicom_int(path, ds, "InstanceNumber"),
    )


@dataclass(frozen=True)
class _Stack:
    """The checked geometry of a series: slice spacing along the normal and the tolerance used."""

    spacing: float
    tolerance: float


def _stack_problem(slices: list[_DicomSlice]) -> str | _Stack | None:
    """Why the slices do not form one evenly spaced stack, or its spacing (None for a single file)."""
    first = slices[0]
    for sl in slices[1:]:
        if (sl.rows, sl.columns) != (first.rows, first.columns):
            return (
                f"{sl.path.name} is {sl.rows} x {sl.columns} pixels (Rows x Columns), "
                f"{first.path.name} {first.rows} x {first.columns}"
            )
        if (sl.bits, sl.samples, sl.frames) != (first.bits, first.samples, first.frames):
            return (
                f"{sl.path.name} stores {sl.samples} x {sl.bits}-bit samples in {sl.frames} frame(s), "
                f"{first.path.name} {first.samples} x {first.bits}-bit in {first.frames}"
            )
    if len(slices) > 1 and first.frames > 1:
        return f"holds {len(slices)} multi-frame files: only a single-frame series or one multi-frame file is read"
    shape = (first.columns, first.rows, first.frames * len(slices), *([first.samples] if first.samples > 1 else []))
    too_large = _size_problem(shape, first.bits / 8)
    if too_large:
        return too_large.replace("the header declares", "the series' headers declare")
    if len(slices) == 1:
        return None
    for sl in slices:
        for keyword, value in (("ImageOrientationPatient", sl.orientation), ("ImagePositionPatient", sl.position)):
            if value is None:
                return f"{sl.path.name} has no {keyword}: the position of its slice is unknown"
    assert first.orientation is not None
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    if max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(col) - 1), abs(row @ col)) > UNIT_VECTOR_TOL:
        return (
            f"{first.path.name}: ImageOrientationPatient {list(first.orientation)} is not two orthogonal unit vectors"
        )
    for sl in slices[1:]:
        assert sl.orientation is not None
        diff = float(np.max(np.abs(np.subtract(sl.orientation, first.orientation))))
        if diff > DIRECTION_TOL:
            return (
                f"{sl.path.name}: ImageOrientationPatient {list(sl.orientation)} differs from {first.path.name}'s "
                f"{list(first.orientation)} by up to {diff:.3g}"
            )
        if sl.pixel_spacing is not None and first.pixel_spacing is not None:
            diff = float(np.max(np.abs(np.subtract(sl.pixel_spacing, first.pixel_spacing))))
            if diff > SPACING_TOL_MM:
                return (
                    f"{sl.path.name}: PixelSpacing {list(sl.pixel_spacing)} differs from {first.path.name}'s "
                    f"{list(first.pixel_spacing)}"
                )
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    order = sorted(range(len(slices)), key=lambda i: float(np.dot(slices[i].position or (), normal)))
    positions = np.array([slices[i].position for i in order], dtype=float)
    z = positions @ normal
    steps = np.diff(z)
    spacing = float(np.median(steps))
    tol = max(SLICE_POSITION_TOL_MM, SLICE_POSITION_TOL_FRACTION * spacing)
    same = np.flatnonzero(steps <= tol)
    if same.size:
        i = int(same[0])
        group = [slices[order[j]].path.name for j in range(len(order)) if abs(z[j] - z[i]) <= tol]
        return f"{len(group)} slices at the same position z={_mm(z[i])} mm ({', '.join(group)})"
    # a step is the difference of two positions each allowed +-tol, around a median that can move as much: 4 tol;
    # this names a gap plainly, the fit below is the test proper (every position within tol of an even stack)
    irregular = np.flatnonzero(np.abs(steps - spacing) > 4 * tol)
    if irregular.size:
        i = int(irregular[0])
        found, k = float(steps[i]), round(float(steps[i]) / spacing)
        where = (
            f"between slice positions z={_mm(z[i])} and z={_mm(z[i + 1])} mm "
            f"(spacing {_mm(spacing)} mm expected, found {_mm(found)})"
        )
        more = f"; {irregular.size - 1} more irregular step(s)" if irregular.size > 1 else ""
        if k >= 2 and abs(found - k * spacing) <= k * tol:
            return f"{k - 1} slice{'s' if k > 2 else ''} missing {where}{more}"
        return f"uneven slice spacing {where}{more}"
    index = np.arange(len(z))
    slope, intercept = np.polyfit(index, z, 1)
    drift = np.abs(z - (intercept + slope * index))
    if float(drift.max()) > tol:
        j = int(drift.argmax())
        return (
            f"slice positions drift from an evenly spaced stack: the slice at z={_mm(z[j])} mm is "
            f"{drift[j]:.3g} mm off (tolerance {tol:.3g} mm)"
        )
    offsets = positions - positions[0]
    across = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if float(across.max()) > tol:
        j = int(across.argmax())
        return (
            f"slices are not stacked along their normal: the slice at z={_mm(z[j])} mm is {across[j]:.3g} mm "
            "off the normal through the first one (gantry tilt?); resample the series onto a regular grid first"
        )
    numbers = [sl.instance for sl in slices]
    if all(n is not None for n in numbers):
        known = sorted(n for n in numbers if n is not None)
        for a, b in itertools.pairwise(known):
            if a == b:
                names = [sl.path.name for sl in slices if sl.instance == a]
                return f"InstanceNumber {a} is used by {len(names)} files ({', '.join(names)})"
            if b > a + 1:
                return (
                    f"InstanceNumber jumps from {a} to {b} ({b - a - 1} numbers missing): files of this series are "
                    "missing"
                )
    return _Stack(float(slope), tol)


def _choose_series(folder: Path, series_uid: str | None, recursive: bool, beside: Sequence[Path]) -> ImageSeries:
    """The image series to read: the one asked for, else the only one; when there are several, or no mask was given
    and an RTSTRUCT/SEG lies beside the image (its lesions would be silently left out), what the folder holds is
    listed and the user asked."""
    from tracker.dicom.discovery import survey

    found = survey(folder, recursive)
    where = "this folder or its subfolders" if recursive else "this folder"
    if not found.series:
        held = f" (it holds {found.listing()})" if found.rtstructs or found.segs else ""
        more = "" if recursive else "; --recursive searches subfolders"
        raise MetatrackError(f"{folder}: no DICOM image series found in {where}{held}{more}")
    if series_uid is None:
        given = {p.resolve() for p in beside}
        unused = [p for p in [*found.rtstructs, *found.segs] if p.resolve() not in given]
        many, unasked = len(found.series) > 1, bool(unused) and not beside
        if many or unasked:
            what = f"{len(found.series)} DICOM series" + (f" and {len(unused)} RTSTRUCT/SEG" if unused else "")
            asks = ["choose the image series with --series UID"] if many else []
            if unasked:
                alone = "" if many else ", or name the series with --series UID to take the image alone"
                asks.append(f"give the lesions as --mask FILE (an RTSTRUCT with --roi, a SEG with --segment){alone}")
            raise MetatrackError(f"{folder}: holds {what}: {found.listing()}; {'; '.join(asks)}")
        series_uid = next(iter(found.series))
    if series_uid not in found.series:
        raise MetatrackError(f"{folder}: no DICOM series {series_uid!r} (found: {found.listing()})")
    return found.series[series_uid]


def _read_dicom(
    folder: Path, series_uid: str | None, recursive: bool = False, beside: Sequence[Path] = ()
) -> LoadedImage:
    """Read one series after checking what ITK would not: every file of it complete and readable, one pixel grid
    and orientation, evenly spaced slices along the normal with none missing, a declared size within the limit."""
    import SimpleITK as sitk

    from tracker.dicom.headers import series_headers

    chosen = _choose_series(folder, series_uid, recursive, beside)
    series_uid = chosen.series_uid
    # GDCM orders the files along the slice normal (file k is slice k) and silently skips damaged ones
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid, False, recursive))
    listed = {Path(f).resolve() for f in files}
    extra = [p for p in chosen.files if p.resolve() not in listed]
    slices = [_read_dicom_slice(p) for p in [*(Path(f) for f in files), *extra]]
    if extra:
        names = ", ".join(p.name for p in extra)
        raise MetatrackError(f"{folder}: the DICOM reader (GDCM) skips {names} of series {series_uid}")
    stack = _stack_problem(slices)
    if isinstance(stack, str):
        raise MetatrackError(f"{folder}: {stack}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    if stack is not None:  # checked above with our tolerance; ITK would warn on stderr above 1e-4 of the spacing
        reader.SetSpacingWarningRelThreshold(2 * stack.tolerance / stack.spacing)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise MetatrackError(f"{folder}: DICOM series {series_uid} cannot be read ({_itk_message(exc)})") from exc
    first = slices[0]
    expected_size = (first.columns, first.rows, first.frames * len(slices))
    if image.GetDimension() == 3 and tuple(image.GetSize()) != expected_size:
        raise MetatrackError(f"{folder}: ITK read the series as {image.GetSize()}, its headers declare {expected_size}")
    if stack is not None and abs(image.GetSpacing()[2] - stack.spacing) > stack.tolerance:
        raise MetatrackError(
            f"{folder}: ITK read the series with {_mm(image.GetSpacing()[2])} mm slices, the headers declare "
            f"{_mm(stack.spacing)}"
        )
    paths = [Path(f) for f in files]
    return LoadedImage(image, "dicom", paths, series_headers(paths))


def check_finite(image: sitk.Image, path: Path) -> None:
    """Reject an image with NaN or infinite voxels."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise MetatrackError(f"{path}: {bad} voxels are not finite (NaN or infinity)")


def read_image(
    path: Path, series_uid: str | None = None, *, recursive: bool = False, beside: Sequence[Path] = ()
) -> LoadedImage:
    """Read a scan: a NIfTI/NRRD/MHA file or a DICOM series folder (its subfolders too if `recursive`; `beside`:
    the mask files given with it, which may lie in the folder); checks it is 3D and finite."""
    path = Path(path)
    if not path.exists():
        raise MetatrackError(f"{path}: no such file or folder")
    if path.is_dir():
        loaded = _read_dicom(path, series_uid, recursive, beside)
    else:
        suffix = volume_suffix(path)
        if suffix is None:
            raise MetatrackError(
                f"{path}: unsupported image format (expected .nii, .nii.gz, .nrrd, .mha or a DICOM folder)"
            )
        if suffix in (".mhd", ".nhdr"):
            raise MetatrackError(f"{path}: detached-header formats are not supported; convert to .mha or .nrrd")
        loaded = LoadedImage(_read_volume(path), VOLUME_SUFFIXES[suffix], [path])
    img = loaded.image
    if img.GetDimension() != 3:
        raise MetatrackError(f"{path}: image has {img.GetDimension()} dimensions, expected a 3D volume")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise MetatrackError(f"{path}: image has {img.GetNumberOfComponentsPerPixel()} components, expected 1")
    check_finite(img, path)
    return loaded


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def geometry_mismatch(reference: sitk.Image, other: sitk.Image) -> str | None:
    """Describe how `other`'s grid differs from `reference`'s (size, spacing, origin, direction), or None."""
    if reference.GetSize() != other.GetSize():
        return f"size differs from the image (image {reference.GetSize()}, mask {other.GetSize()})"
    sp_r, sp_o = np.array(reference.GetSpacing()), np.array(other.GetSpacing())
    if np.max(np.abs(sp_r - sp_o)) > SPACING_TOL_MM:
        return (
            f"spacing differs from the image by {np.max(np.abs(sp_r - sp_o)):.4g} mm "
            f"(image {_fmt(sp_r)}, mask {_fmt(sp_o)})"
        )
    or_r, or_o = np.array(reference.GetOrigin()), np.array(other.GetOrigin())
    if np.linalg.norm(or_r - or_o) > ORIGIN_TOL_MM:
        return (
            f"origin differs from the image by {np.linalg.norm(or_r - or_o):.4g} mm "
            f"(image {_fmt(or_r)}, mask {_fmt(or_o)})"
        )
    d_r, d_o = np.array(reference.GetDirection()), np.array(other.GetDirection())
    if np.max(np.abs(d_r - d_o)) > DIRECTION_TOL:
        return f"direction differs from the image by up to {np.max(np.abs(d_r - d_o)):.4g} (cosine matrix entries)"
    return None


class MaskReader(Protocol):
    """Reads one kind of lesion mask onto a reference image's grid (``read`` returns the integer label image on
    ``reference``'s grid, 0 = background, and the source files whose bytes define the mask's content hash)."""

    source_format: str

    def accepts(self, path: Path) -> bool: ...

    def read(self, path: Path, reference: sitk.Image, context: MaskContext) -> MaskContent: ...


MAX_LABEL = 65535  # stored label images are uint16


class VolumeMaskReader:
    """NIfTI/NRRD/MHA binary or label masks, which must share the image's geometry."""

    source_format = "volume"

    def accepts(self, path: Path) -> bool:
        return path.is_file() and volume_suffix(path) is not None

    def read(self, path: Path, reference: sitk.Image, context: MaskContext) -> MaskContent:
        import SimpleITK as sitk

        mask = _read_volume(path)
        if mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
            raise MetatrackError(f"{path}: mask must be a 3D single-component volume")
        problem = geometry_mismatch(reference, mask)
        if problem:
            raise MetatrackError(f"{path}: mask does not fit its image: {problem}")
        arr = sitk.GetArrayViewFromImage(mask)
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)):
                raise MetatrackError(f"{path}: mask has non-finite values")
            if np.any(arr != np.round(arr)):
                raise MetatrackError(f"{path}: mask has non-integer values (a probability map?); threshold it first")
        if arr.size and arr.min() < 0:
            raise MetatrackError(f"{path}: mask has negative labels (minimum {arr.min()})")
        if arr.size and arr.max() > MAX_LABEL:  # the cast below would wrap it around (65536 -> 0: a lost lesion)
            raise MetatrackError(
                f"{path}: mask label {int(arr.max())} is above the largest supported label {MAX_LABEL} "
                "(labels are stored as 16-bit integers); renumber the labels"
            )
        return MaskContent(sitk.Cast(mask, sitk.sitkUInt16), [path])


def _sop_class(path: Path) -> str | None:
    """The SOP class UID of a DICOM file (one with the 'DICM' preamble), None for any other file."""
    import pydicom

    try:
        with open(path, "rb") as fh:
            if fh.read(132)[128:132] != b"DICM":
                return None
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "")).strip()
    except Exception:  # a damaged file: no reader accepts it, and read_mask says so
        return None


def _label_image(labels: np.ndarray, reference: sitk.Image) -> sitk.Image:
    import SimpleITK as sitk

    mask = sitk.GetImageFromArray(labels.astype(np.uint16))
    mask.CopyInformation(reference)
    return mask


class RtstructMaskReader:
    """RTSTRUCT contours of the chosen ROIs (`--roi`), rasterised onto the referenced series' grid, one label each."""

    source_format = "rtstruct"

    def accepts(self, path: Path) -> bool:
        from tracker.dicom.discovery import RTSTRUCT_SOP_CLASS

        return path.is_file() and _sop_class(path) == RTSTRUCT_SOP_CLASS

    def read(self, path: Path, reference: sitk.Image, context: MaskContext) -> MaskContent:
        from tracker.dicom.rtstruct import read_rtstruct

        if context.segments:
            raise MetatrackError(f"{path}: --segment chooses DICOM SEG segments; an RTSTRUCT's ROIs take --roi")
        image = context.dicom.metadata if context.dicom else None
        labels, names, notes = read_rtstruct(path, reference, image, context.rois)
        return MaskContent(_label_image(labels, reference), [path], names, tuple(notes))


class SegMaskReader:
    """DICOM SEG segments (`--segment`, binary or fractional thresholded at 0.5) on the image's grid, one label each."""

    source_format = "dicom-seg"

    def accepts(self, path: Path) -> bool:
        from tracker.dicom.discovery import SEG_SOP_CLASS

        return path.is_file() and _sop_class(path) == SEG_SOP_CLASS

    def read(self, path: Path, reference: sitk.Image, context: MaskContext) -> MaskContent:
        from tracker.dicom.seg import read_seg

        if context.rois:
            raise MetatrackError(f"{path}: --roi chooses RTSTRUCT ROIs; a DICOM SEG's segments take --segment")
        image = context.dicom.metadata if context.dicom else None
        labels, names, notes = read_seg(path, reference, image, context.segments)
        return MaskContent(_label_image(labels, reference), [path], names, tuple(notes))


MASK_READERS: list[MaskReader] = [VolumeMaskReader(), RtstructMaskReader(), SegMaskReader()]


def read_mask(path: Path, reference: sitk.Image, context: MaskContext | None = None) -> LoadedMask:
    """Read a lesion mask for `reference` with the first reader that accepts it; empty masks are allowed.

    `context` carries the image's DICOM headers and the ROI/segment choice (RTSTRUCT and SEG need them).
    """
    import SimpleITK as sitk

    path = Path(path)
    context = context or MaskContext()
    if not path.exists():
        raise MetatrackError(f"{path}: no such file or folder")
    for reader in MASK_READERS:
        if reader.accepts(path):
            if reader.source_format == "volume" and (context.rois or context.segments):
                raise MetatrackError(f"{path}: --roi and --segment choose in an RTSTRUCT or DICOM SEG, not a volume")
            content = reader.read(path, reference, context)
            arr = sitk.GetArrayViewFromImage(content.mask)
            labels = [int(v) for v in np.unique(arr) if v != 0]
            fmt = volume_suffix(path) if reader.source_format == "volume" else None
            source_format = VOLUME_SUFFIXES[fmt] if fmt else reader.source_format
            return LoadedMask(
                content.mask,
                source_format,
                content.content_files,
                labels,
                int(np.count_nonzero(arr)),
                content.label_names,
                content.notes,
            )
    raise MetatrackError(
        f"{path}: unsupported mask format (expected a NIfTI, NRRD or MHA label/binary mask, a DICOM RTSTRUCT or SEG)"
    )

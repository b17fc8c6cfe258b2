"""Reading and checking images and lesion masks (NIfTI, NRRD, MHA, DICOM series); no computation here.

Masks are read through `MaskReader`s chosen by `read_mask`: a volume reader (NIfTI/NRRD/MHA label or binary maps)
now. A reader returns the integer label image on the reference image's grid and the files that define the mask's
content; ingest stores that label image (as NIfTI, keyed by the hash of those files), so a reader for a new format
(DICOM SEG, RTSTRUCT) is one class added to `MASK_READERS` and nothing else changes.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tracker.errors import MetatrackError

if TYPE_CHECKING:
    import SimpleITK as sitk

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
    content_files: list[Path]  # the files whose bytes define the content hash, in a fixed order
    source_name: str


@dataclass(frozen=True)
class LoadedMask:
    mask: sitk.Image  # integer label image (0 = background) on the reference image's grid
    source_format: str
    content_files: list[Path]
    labels: list[int]
    voxel_count: int


def _itk_message(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in reversed(lines) if not ln.startswith(("File", "itk::", "Exception"))), "")
    return detail or (lines[-1] if lines else type(exc).__name__)


NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _nifti_payload_problem(path: Path) -> str | None:
    """Why a NIfTI file's voxels are unusable, or None.

    ITK reads truncated NIfTI files without complaint and turns NaN voxels into 0, so both are checked here on
    the raw bytes.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        return f"compressed data is damaged ({exc})"
    if len(data) < 348:
        return f"file is {len(data)} bytes, shorter than a NIfTI header"
    for endian in "<>":
        size = struct.unpack(f"{endian}i", data[:4])[0]
        if size == 348:
            dims = struct.unpack(f"{endian}8h", data[40:56])
            dtype_code, bitpix = struct.unpack(f"{endian}2h", data[70:74])
            offset = int(struct.unpack(f"{endian}f", data[108:112])[0])
            break
        if size == 540:
            dtype_code, bitpix = struct.unpack(f"{endian}2h", data[12:16])
            dims = struct.unpack(f"{endian}8q", data[16:80])
            offset = struct.unpack(f"{endian}q", data[168:176])[0]
            break
    else:
        return "not a NIfTI header (bad sizeof_hdr)"
    n_dims = max(0, min(int(dims[0]), 7))
    n_vox = int(np.prod([max(int(d), 1) for d in dims[1 : 1 + n_dims]]))
    needed = offset + n_vox * bitpix // 8
    if len(data) < needed:
        return f"file is truncated: {len(data)} bytes, the header declares {needed}"
    if dtype_code in NIFTI_FLOAT_TYPES:
        voxels = np.frombuffer(data, dtype=endian + NIFTI_FLOAT_TYPES[dtype_code], count=n_vox, offset=offset)
        bad = int(np.count_nonzero(~np.isfinite(voxels)))
        if bad:
            return f"{bad} voxels are not finite (NaN or infinity)"
    return None


def _read_volume(path: Path) -> sitk.Image:
    import SimpleITK as sitk

    if path.name.lower().endswith((".nii", ".nii.gz")):
        problem = _nifti_payload_problem(path)
        if problem:
            raise MetatrackError(f"{path}: {problem}")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise MetatrackError(f"{path}: cannot be read as an image ({_itk_message(exc)})") from exc


def dicom_series(folder: Path) -> dict[str, list[str]]:
    """The DICOM series in a folder: series instance UID -> sorted file names."""
    import SimpleITK as sitk

    uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    return {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in uids}


def _read_dicom(folder: Path, series_uid: str | None) -> LoadedImage:
    import SimpleITK as sitk

    series = dicom_series(folder)
    if not series:
        raise MetatrackError(f"{folder}: no DICOM series found in this folder")
    if series_uid is None:
        if len(series) > 1:
            listing = ", ".join(f"{uid} ({len(f)} files)" for uid, f in sorted(series.items()))
            raise MetatrackError(f"{folder}: holds {len(series)} DICOM series, pick one with --series: {listing}")
        series_uid = next(iter(series))
    if series_uid not in series:
        raise MetatrackError(f"{folder}: no DICOM series {series_uid!r} (found: {', '.join(sorted(series))})")
    files = series[series_uid]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise MetatrackError(f"{folder}: DICOM series {series_uid} cannot be read ({_itk_message(exc)})") from exc
    return LoadedImage(image, "dicom", [Path(f) for f in files], folder.name)


def check_finite(image: sitk.Image, path: Path) -> None:
    """Reject an image with NaN or infinite voxels."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise MetatrackError(f"{path}: {bad} voxels are not finite (NaN or infinity)")


def read_image(path: Path, series_uid: str | None = None) -> LoadedImage:
    """Read a scan: a NIfTI/NRRD/MHA file or a DICOM series folder; checks it is 3D and finite."""
    path = Path(path)
    if not path.exists():
        raise MetatrackError(f"{path}: no such file or folder")
    if path.is_dir():
        loaded = _read_dicom(path, series_uid)
    else:
        suffix = volume_suffix(path)
        if suffix is None:
            raise MetatrackError(
                f"{path}: unsupported image format (expected .nii, .nii.gz, .nrrd, .mha or a DICOM folder)"
            )
        if suffix in (".mhd", ".nhdr"):
            raise MetatrackError(f"{path}: detached-header formats are not supported; convert to .mha or .nrrd")
        loaded = LoadedImage(_read_volume(path), VOLUME_SUFFIXES[suffix], [path], path.name)
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
    """Reads one kind of lesion mask onto a reference image's grid.

    ``read`` returns (integer label image on ``reference``'s grid, 0 = background; the source files whose bytes
    define the mask's content hash, in a fixed order).
    """

    source_format: str

    def accepts(self, path: Path) -> bool: ...

    def read(self, path: Path, reference: sitk.Image) -> tuple[sitk.Image, list[Path]]: ...


class VolumeMaskReader:
    """NIfTI/NRRD/MHA binary or label masks, which must share the image's geometry."""

    source_format = "volume"

    def accepts(self, path: Path) -> bool:
        return path.is_file() and volume_suffix(path) is not None

    def read(self, path: Path, reference: sitk.Image) -> tuple[sitk.Image, list[Path]]:
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
        return sitk.Cast(mask, sitk.sitkUInt16), [path]


MASK_READERS: list[MaskReader] = [VolumeMaskReader()]


def read_mask(path: Path, reference: sitk.Image) -> LoadedMask:
    """Read a lesion mask for `reference` with the first reader that accepts it; empty masks are allowed."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise MetatrackError(f"{path}: no such file or folder")
    for reader in MASK_READERS:
        if reader.accepts(path):
            mask, files = reader.read(path, reference)
            arr = sitk.GetArrayViewFromImage(mask)
            labels = [int(v) for v in np.unique(arr) if v != 0]
            fmt = volume_suffix(path) if reader.source_format == "volume" else None
            source_format = VOLUME_SUFFIXES[fmt] if fmt else reader.source_format
            return LoadedMask(mask, source_format, files, labels, int(np.count_nonzero(arr)))
    raise MetatrackError(f"{path}: unsupported mask format (expected a NIfTI, NRRD or MHA label/binary mask)")

"""Reading, writing and composing transform files.

A transform list is applied to a point in list order: ``[T1, T2]`` maps p to T2(T1(p)). Files are either
ITK transform files (``.tfm``, ``.txt``, ``.mat``, ``.h5``: affine and other parametric transforms, ANTs
``.mat`` included) or displacement-field images (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``) whose voxels hold
the displacement d(p) in LPS mm, so that the transform maps p to p + d(p). Only the extension of a file name
is looked at, so stored copies may be renamed freely.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from tracker.errors import MetatrackError

FIELD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
PARAMETRIC_SUFFIXES = (".tfm", ".txt", ".mat", ".h5", ".hdf5")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_field_file(path: Path) -> bool:
    """True when ``path`` names a displacement-field image rather than a parametric transform."""
    return _suffix(Path(path)) in FIELD_SUFFIXES


def write_affine(transform: sitk.Transform, path: Path) -> Path:
    """Write a parametric transform (affine, Euler, ...) as an ITK transform file."""
    sitk.WriteTransform(transform, str(path))
    return Path(path)


def write_field(field: sitk.Image, path: Path) -> Path:
    """Write a displacement field (vector image, mm) as float32 to keep the file small (gzipped for .nii.gz)."""
    sitk.WriteImage(sitk.Cast(field, sitk.sitkVectorFloat32), str(path), useCompression=str(path).endswith(".gz"))
    return Path(path)


def read_field(path: Path) -> sitk.Image:
    """Read a displacement-field image as a float64 vector image."""
    image = sitk.ReadImage(str(path))
    if image.GetNumberOfComponentsPerPixel() != image.GetDimension():
        raise MetatrackError(
            f"{path}: displacement field must have {image.GetDimension()} components per voxel, "
            f"found {image.GetNumberOfComponentsPerPixel()}"
        )
    return sitk.Cast(image, sitk.sitkVectorFloat64)


def read_transform(path: Path) -> sitk.Transform:
    """Read one transform file (parametric or displacement field) by its extension."""
    path = Path(path)
    if not path.is_file():
        raise MetatrackError(f"{path}: transform file not found")
    suffix = _suffix(path)
    if suffix in FIELD_SUFFIXES:
        return sitk.DisplacementFieldTransform(read_field(path))
    if suffix in PARAMETRIC_SUFFIXES:
        try:
            return sitk.ReadTransform(str(path))
        except RuntimeError as exc:
            raise MetatrackError(f"{path}: not a readable ITK transform file ({exc})") from exc
    raise MetatrackError(
        f"{path}: unknown transform file extension {suffix!r}; expected one of "
        f"{', '.join(PARAMETRIC_SUFFIXES + FIELD_SUFFIXES)}"
    )


def compose(transforms: Sequence[sitk.Transform]) -> sitk.CompositeTransform:
    """One transform applying ``transforms`` to a point in list order (first element first)."""
    if not transforms:
        raise MetatrackError("transform list is empty: give at least one transform file")
    # A SimpleITK composite applies its last-added transform first.
    return sitk.CompositeTransform(list(reversed(list(transforms))))


def load(paths: Sequence[Path]) -> sitk.CompositeTransform:
    """Read a transform list from files and compose it (list order, first file first)."""
    return compose([read_transform(Path(p)) for p in paths])

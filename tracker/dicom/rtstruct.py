"""RTSTRUCT contours rasterised onto the referenced image's grid.

Each selected ROI becomes one label (1, 2, ... in the order chosen). A contour must be CLOSED_PLANAR, lie in one
image slice plane (within the series' slice-position tolerance; a contour between two slices is refused, not
snapped) and inside the grid. On each slice the ROI's contours are filled together by the even-odd rule: a voxel
whose centre is enclosed by an odd number of the slice's contours is inside, so a contour inside another is a hole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tracker.errors import MetatrackError

if TYPE_CHECKING:
    import SimpleITK as sitk

# as tracker.imageio's slice positions: max(0.01 mm, 1 % of the slice spacing)
SLICE_TOL_MM = 0.01
SLICE_TOL_FRACTION = 0.01


def _roi_names(ds: Any) -> dict[int, str]:
    return {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}


def select(names: Sequence[str], wanted: Sequence[str], path: Path, what: str, option: str) -> list[str]:
    """The names chosen by `wanted` (each an exact name, else a regular expression matched in full), in order.

    No `wanted` takes the only name there is; several names and no choice, or a choice matching nothing, are
    refused with the names listed.
    """
    listed = ", ".join(repr(n) for n in names)
    if not wanted:
        if len(names) == 1:
            return list(names)
        if not names:
            raise MetatrackError(f"{path}: holds no {what}s")
        raise MetatrackError(f"{path}: holds {len(names)} {what}s ({listed}); choose with {option} NAME (repeatable)")
    chosen: list[str] = []
    for pattern in wanted:
        if pattern in names:
            hits = [pattern]
        else:
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                msg = f"{path}: {option} {pattern!r} is no {what} name nor a regular expression ({exc})"
                raise MetatrackError(msg) from None
            hits = [n for n in names if regex.fullmatch(n)]
        if not hits:
            raise MetatrackError(f"{path}: no {what} {pattern!r} (it holds {listed})")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def paint(
    labels: np.ndarray, names: dict[int, str], inside: np.ndarray, name: str, path: Path, what: str, option: str
) -> None:
    """Give `inside` the next label (``len(names) + 1``) called `name`; a voxel another region holds is refused,
    as a voxel has one label."""
    overlap = inside & (labels > 0)
    if overlap.any():
        other = names[int(labels[overlap].max())]
        raise MetatrackError(
            f"{path}: {what}s {other!r} and {name!r} overlap in {int(overlap.sum())} voxels; a voxel has one label, "
            f"choose one of them with {option}"
        )
    label = len(names) + 1
    labels[inside] = label
    names[label] = name


def _check_reference(ds: Any, path: Path, image: dict[str, Any]) -> None:
    """The RTSTRUCT must reference the image's series (when it names one) and its frame of reference."""
    series: set[str] = set()
    frames: set[str] = set()
    for ref in ds.get("ReferencedFrameOfReferenceSequence", []):
        if ref.get("FrameOfReferenceUID"):
            frames.add(str(ref.FrameOfReferenceUID))
        for study in ref.get("RTReferencedStudySequence", []):
            for s in study.get("RTReferencedSeriesSequence", []):
                series.add(str(s.SeriesInstanceUID))
    if series and image["series_instance_uid"] not in series:
        raise MetatrackError(
            f"{path}: the RTSTRUCT references series {', '.join(sorted(series))}, not the image's series "
            f"{image['series_instance_uid']}"
        )
    for r in ds.get("StructureSetROISequence", []):
        if r.get("ReferencedFrameOfReferenceUID"):
            frames.add(str(r.ReferencedFrameOfReferenceUID))
    if frames and frames != {image["frame_of_reference_uid"]}:
        raise MetatrackError(
            f"{path}: the RTSTRUCT's frame of reference {', '.join(sorted(frames))} is not the image's "
            f"{image['frame_of_reference_uid']}"
        )


def _index_points(reference: sitk.Image, points_lps: np.ndarray) -> np.ndarray:
    """Continuous (x, y, z) voxel indices of LPS points (voxel centres at whole numbers)."""
    direction = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(reference.GetSpacing(), dtype=float)
    to_index = np.linalg.inv(direction * spacing)  # columns: the index axes in mm
    return (points_lps - np.asarray(reference.GetOrigin(), dtype=float)) @ to_index.T


def fill_even_odd(polygons: Sequence[np.ndarray], rows: int, columns: int) -> np.ndarray:
    """A (rows, columns) boolean image: pixel centres enclosed by an odd number of the polygons (x, y in pixels).

    A scanline fill with all polygons' edges pooled: along each row, a centre is inside when an odd number of edge
    crossings lie left of it (an edge counts on the rows from its lower end up to, not including, its upper end).
    """
    edges = np.concatenate([np.stack([p, np.roll(p, -1, axis=0)], axis=1) for p in polygons])  # (n, 2, xy)
    x0, y0, x1, y1 = edges[:, 0, 0], edges[:, 0, 1], edges[:, 1, 0], edges[:, 1, 1]
    keep = y0 != y1
    x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
    ys = np.arange(rows, dtype=float)[:, None]
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    crosses = (ys >= lo) & (ys < hi)  # (rows, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
    xs = np.where(crosses, xs, np.inf)
    xs.sort(axis=1)
    centres = np.arange(columns, dtype=float)
    out = np.zeros((rows, columns), dtype=bool)
    for r in np.flatnonzero(crosses.any(axis=1)):
        row = xs[r][np.isfinite(xs[r])]
        out[r] = np.searchsorted(row, centres, side="right") % 2 == 1
    return out


def _roi_mask(ds: Any, number: int, name: str, path: Path, reference: sitk.Image) -> tuple[np.ndarray, bool]:
    """One ROI's voxels (z, y, x) on the reference grid, and whether a contour reaches beyond the image in-plane
    (only the part inside is kept)."""
    size = reference.GetSize()
    spacing_z = float(reference.GetSpacing()[2])
    tol = max(SLICE_TOL_MM, SLICE_TOL_FRACTION * spacing_z) / spacing_z  # in slices
    roi_contours = ds.get("ROIContourSequence", [])
    contours: Any = next((rc.get("ContourSequence", []) for rc in roi_contours if rc.ReferencedROINumber == number), [])
    by_slice: dict[int, list[np.ndarray]] = {}
    for c in contours:
        kind = str(c.get("ContourGeometricType", "")).upper()
        if kind != "CLOSED_PLANAR":
            raise MetatrackError(f"{path}: ROI {name!r} has a {kind or 'untyped'} contour; only CLOSED_PLANAR is read")
        points = np.asarray([float(v) for v in c.ContourData], dtype=float).reshape(-1, 3)
        if len(points) < 3:
            continue
        idx = _index_points(reference, points)
        z = idx[:, 2]
        k = round(float(np.mean(z)))
        if float(np.max(np.abs(z - k))) > tol:
            if float(np.ptp(z)) > 2 * tol:
                raise MetatrackError(f"{path}: ROI {name!r} has a contour that is not in an image slice plane")
            at = points[0] @ np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
            raise MetatrackError(
                f"{path}: ROI {name!r} has a contour at {at:.2f} mm, between image slices ({spacing_z:g} mm apart); "
                "contours must lie on the image's slices"
            )
        if not 0 <= k < size[2]:
            raise MetatrackError(f"{path}: ROI {name!r} has a contour outside the image (slice {k} of {size[2]})")
        by_slice.setdefault(k, []).append(idx[:, :2])
    if not by_slice:
        raise MetatrackError(f"{path}: ROI {name!r} is empty (no contours)")
    out = np.zeros(size[::-1], dtype=bool)
    clipped = False
    for k, polygons in by_slice.items():
        out[k] = fill_even_odd(polygons, size[1], size[0])
        points = np.concatenate(polygons)
        clipped |= bool((points < -0.5).any() or (points[:, 0] > size[0] - 0.5).any())
        clipped |= bool((points[:, 1] > size[1] - 0.5).any())
    if not out.any():
        raise MetatrackError(f"{path}: ROI {name!r} encloses no voxel centre of the image")
    return out, clipped


def read_rtstruct(
    path: Path, reference: sitk.Image, image: dict[str, Any] | None, rois: Sequence[str]
) -> tuple[np.ndarray, dict[int, str], list[str]]:
    """The chosen ROIs of an RTSTRUCT as a (z, y, x) uint16 label array on `reference`'s grid, label -> name, and
    notes (an ROI cut at the image's edge).

    `image` is the reference series' kept headers (`Scan.dicom`); the RTSTRUCT must reference that series.
    """
    import pydicom

    if image is None:
        raise MetatrackError(f"{path}: an RTSTRUCT needs the DICOM series it references as the image, not a file")
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many kinds of error on damaged files
        raise MetatrackError(f"{path}: damaged DICOM file ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    _check_reference(ds, path, image)
    numbers = _roi_names(ds)
    chosen = select(list(numbers.values()), rois, path, "ROI", "--roi")
    number_of = {n: k for k, n in numbers.items()}
    labels = np.zeros(reference.GetSize()[::-1], dtype=np.uint16)
    names: dict[int, str] = {}
    notes = []
    for name in chosen:
        inside, clipped = _roi_mask(ds, number_of[name], name, path, reference)
        paint(labels, names, inside, name, path, "ROI", "--roi")
        if clipped:
            notes.append(
                f"RTSTRUCT ROI {name!r} reaches beyond the image's edge: only its part inside the image is kept"
            )
    return labels, names, notes

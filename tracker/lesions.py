"""Lesions of one scan: connected components of its mask and their measurements.

Pure computation on numpy arrays: the caller loads the mask (and optionally an organ map and the image) and
passes the image geometry as plain numbers.

Diameters are measured edge to edge, as a radiologist does: every voxel contributes the corner points of its
physical extent, so a single-voxel lesion is one voxel wide, and a run of ``n`` voxels is ``n`` voxels long.
The longest axial diameter is the longest segment between two boundary corner points of the same axial slice
(the diameter of their convex hull), maximised over slices; the short axis is the longest chord of that
slice's hull perpendicular to the long axis (RECIST 1.1). The max 3D diameter is the diameter of the 3D hull.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from tracker.errors import MetatrackError

DEFAULT_MIN_VOLUME_MM3 = 10.0
BINARY_LABEL = 1
# Full 26-neighbourhood: voxels touching by a face, an edge or a corner are one component.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
# Offsets of a pixel's / voxel's corners from its centre, in index units.
_CORNERS_2D = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
_CORNERS_3D = np.array([[dz, dy, dx] for dz in (-0.5, 0.5) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
# Points per block when searching the farthest pair, to bound memory at ~ block * n * 8 bytes.
_PAIR_BLOCK = 1024
_EPS = 1e-9


@dataclass(frozen=True)
class Geometry:
    """Where an image grid lies in physical (ITK/LPS) space.

    Attributes
    ----------
    origin
        Physical position (x, y, z) in mm of the centre of voxel index (0, 0, 0).
    spacing
        Voxel size (x, y, z) in mm, ITK order (the reverse of the array's (z, y, x) order).
    direction
        The 3x3 direction cosine matrix, row-major, as ``SimpleITK.Image.GetDirection()`` gives it.
    """

    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        origin = tuple(float(v) for v in np.asarray(self.origin, dtype=float).ravel())
        spacing = tuple(float(v) for v in np.asarray(self.spacing, dtype=float).ravel())
        direction = tuple(float(v) for v in np.asarray(self.direction, dtype=float).ravel())
        if len(origin) != 3:
            raise MetatrackError(f"Geometry.origin: expected 3 values (x, y, z), got {len(origin)}")
        if len(spacing) != 3 or min(spacing) <= 0 or not np.all(np.isfinite(spacing)):
            raise MetatrackError(f"Geometry.spacing: expected 3 positive values (x, y, z) in mm, got {spacing}")
        if len(direction) != 9:
            raise MetatrackError(f"Geometry.direction: expected 9 values (3x3 row-major), got {len(direction)}")
        if abs(np.linalg.det(np.reshape(direction, (3, 3)))) < 1e-6:
            raise MetatrackError(f"Geometry.direction: matrix is singular: {direction}")
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "direction", direction)

    @classmethod
    def from_image(cls, image: object) -> Geometry:
        """Geometry of a SimpleITK-like image (anything with GetOrigin/GetSpacing/GetDirection)."""
        return cls(image.GetOrigin(), image.GetSpacing(), image.GetDirection())  # type: ignore[attr-defined]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Voxel size in the numpy array's (z, y, x) order, mm."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def matrix(self) -> np.ndarray:
        """The direction matrix as a 3x3 array."""
        return np.reshape(np.asarray(self.direction), (3, 3))

    def index_to_physical(self, index_zyx: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map continuous array indices (z, y, x), shape (n, 3) or (3,), to LPS points (x, y, z), (n, 3)."""
        idx = np.asarray(index_zyx, dtype=float).reshape(-1, 3)
        scaled_xyz = idx[:, ::-1] * np.asarray(self.spacing)
        return np.asarray(self.origin) + scaled_xyz @ self.matrix.T

    def physical_to_index(self, points_lps: np.ndarray | Sequence[float]) -> np.ndarray:
        """Map LPS points (x, y, z), shape (n, 3) or (3,), to continuous array indices (z, y, x), (n, 3)."""
        pts = np.asarray(points_lps, dtype=float).reshape(-1, 3)
        xyz = np.linalg.solve(self.matrix, (pts - np.asarray(self.origin)).T).T / np.asarray(self.spacing)
        return xyz[:, ::-1]


@dataclass(frozen=True)
class MeasuredLesion:
    """One lesion of one scan and its measurements (lengths in mm, volume in mm³).

    ``bbox`` is the half-open index box (z0, y0, x0, z1, y1, x1); ``long_axis_slice`` is the axial slice index
    where the longest axial diameter was found. ``mean_hu``/``sd_hu`` are set only when an image was given.
    """

    label: int
    voxels: int
    volume_mm3: float
    centroid_lps: tuple[float, float, float]
    long_axis_mm: float
    short_axis_mm: float
    max_3d_diameter_mm: float
    organ: str | None
    bbox: tuple[int, int, int, int, int, int]
    long_axis_slice: int
    mean_hu: float | None = None
    sd_hu: float | None = None


def _as_label_array(mask: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 3:
        raise MetatrackError(f"{name}: expected a 3D (z, y, x) array, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int32)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise MetatrackError(f"{name}: label values must be whole numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise MetatrackError(f"{name}: label values must be >= 0, found {arr.min()}")
    return arr


def label_lesions(
    mask: np.ndarray,
    geometry: Geometry,
    *,
    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
    split_components: bool | None = None,
) -> np.ndarray:
    """The lesion label map of a mask: one positive label per lesion, specks below the minimum removed.

    Parameters
    ----------
    mask
        Binary or multi-label mask, (z, y, x).
    geometry
        The mask's grid geometry (only the spacing is used here).
    min_volume_mm3
        Lesions smaller than this are dropped.
    split_components
        True: every 26-connected component is a lesion. False: every non-zero label value is one lesion, even
        when its voxels form several components. None (default): split only binary masks (labels 0/1); a
        multi-label map keeps its labels.

    Returns
    -------
    np.ndarray
        int32 label map. Split components are numbered 1..n in raster order of their first voxel; kept labels
        keep their values.
    """
    labels = _as_label_array(mask, "mask")
    if min_volume_mm3 < 0:
        raise MetatrackError(f"min_volume_mm3: must be >= 0, got {min_volume_mm3}")
    if split_components is None:
        split_components = labels.size == 0 or int(labels.max()) <= BINARY_LABEL
    if split_components:
        labels, _ = ndimage.label(labels > 0, structure=CONNECTIVITY_26)
    labels = labels.astype(np.int32, copy=False)
    counts = np.bincount(labels.ravel())
    voxel_mm3 = float(np.prod(geometry.spacing))
    too_small = np.flatnonzero(counts * voxel_mm3 < min_volume_mm3)
    too_small = too_small[too_small > 0]
    if too_small.size:
        labels = np.where(np.isin(labels, too_small), 0, labels).astype(np.int32)
    if split_components:
        # Renumber the survivors 1..n, keeping raster order.
        present = np.unique(labels)
        present = present[present > 0]
        lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
        lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
        labels = lut[labels]
    return labels


def _farthest_pair(points: np.ndarray) -> tuple[float, int, int]:
    """Largest distance between two of ``points`` (n, d) and the indices of that pair."""
    best, bi, bj = 0.0, 0, 0
    for start in range(0, len(points), _PAIR_BLOCK):
        block = points[start : start + _PAIR_BLOCK]
        d2 = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
        flat = int(np.argmax(d2))
        i, j = divmod(flat, d2.shape[1])
        if d2[i, j] > best:
            best, bi, bj = float(d2[i, j]), start + i, j
    return float(np.sqrt(best)), bi, bj


def _hull_points(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of ``points`` (all of them when too few or degenerate)."""
    if len(points) <= points.shape[1] + 1:
        return points
    try:
        hull = ConvexHull(points)
    except QhullError:  # flat input; the full set is then small enough anyway
        return points
    return points[hull.vertices]


def _perpendicular_chord(polygon: np.ndarray, direction: np.ndarray) -> float:
    """Longest chord of a convex polygon (vertices in order) perpendicular to unit vector ``direction``.

    Chord length is a concave piecewise-linear function of the offset along ``direction`` with breaks at
    the vertices, so the maximum is attained at a vertex offset.
    """
    normal = np.array([-direction[1], direction[0]])
    a = polygon @ direction
    b = polygon @ normal
    a0, a1 = a, np.roll(a, -1)
    b0, b1 = b, np.roll(b, -1)
    t = a[:, None]  # queries (k, 1) against edges (1, k)
    lo, hi = np.minimum(a0, a1)[None, :], np.maximum(a0, a1)[None, :]
    span = (a1 - a0)[None, :]
    crosses = (t >= lo - _EPS) & (t <= hi + _EPS) & (np.abs(span) > _EPS)
    frac = np.where(crosses, (t - a0[None, :]) / np.where(np.abs(span) > _EPS, span, 1.0), 0.0)
    hit = b0[None, :] + frac * (b1 - b0)[None, :]
    # Edges parallel to the query line contribute both end points.
    on_vertex = np.abs(t - a[None, :]) <= _EPS
    top = np.maximum(np.where(crosses, hit, -np.inf).max(axis=1), np.where(on_vertex, b[None, :], -np.inf).max(1))
    bot = np.minimum(np.where(crosses, hit, np.inf).min(axis=1), np.where(on_vertex, b[None, :], np.inf).min(1))
    return float(np.max(top - bot))


def axial_diameters(slice_mask: np.ndarray, spacing_yx: tuple[float, float]) -> tuple[float, float]:
    """Longest in-plane diameter and its perpendicular short axis of one 2D mask, edge to edge, in mm.

    Parameters
    ----------
    slice_mask
        Boolean (y, x) array.
    spacing_yx
        Pixel size (y, x) in mm.
    """
    if not slice_mask.any():
        return 0.0, 0.0
    interior = ndimage.binary_erosion(slice_mask, border_value=0)
    centres = np.argwhere(slice_mask & ~interior).astype(float)
    corners = (centres[:, None, :] + _CORNERS_2D[None, :, :]).reshape(-1, 2) * np.asarray(spacing_yx)
    corners = np.unique(corners, axis=0)
    if len(corners) < 3:
        return 0.0, 0.0
    hull = ConvexHull(corners)
    polygon = corners[hull.vertices]  # counter-clockwise order
    long_mm, i, j = _farthest_pair(polygon)
    axis = (polygon[j] - polygon[i]) / long_mm
    return long_mm, _perpendicular_chord(polygon, axis)


def max_3d_diameter(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Largest edge-to-edge distance in mm between two voxels of a boolean (z, y, x) mask."""
    if not mask.any():
        return 0.0
    interior = ndimage.binary_erosion(mask, border_value=0)
    centres = np.argwhere(mask & ~interior).astype(float)
    corners = (centres[:, None, :] + _CORNERS_3D[None, :, :]).reshape(-1, 3) * np.asarray(spacing)
    corners = np.unique(corners, axis=0)
    return _farthest_pair(_hull_points(corners))[0]


def _majority_organ(organ_values: np.ndarray, organ_names: Mapping[int, str] | None) -> str | None:
    values = organ_values[organ_values > 0].astype(np.int64)
    if values.size == 0:
        return None
    counts = np.bincount(values)
    organ_label = int(np.argmax(counts))  # ties go to the smaller label
    if organ_names is None:
        return str(organ_label)
    return organ_names.get(organ_label)


def measure_lesions(
    labels: np.ndarray,
    geometry: Geometry,
    *,
    organ_map: np.ndarray | None = None,
    organ_names: Mapping[int, str] | None = None,
    image: np.ndarray | None = None,
) -> list[MeasuredLesion]:
    """Measure every labelled lesion of a label map (as returned by :func:`label_lesions`).

    Parameters
    ----------
    labels
        Lesion label map (z, y, x); every non-zero value is one lesion.
    geometry
        Grid geometry, for volumes, lengths and the physical centroid.
    organ_map, organ_names
        Optional organ label map on the same grid, and names for its labels. A lesion's organ is the most
        frequent non-zero organ label under it (None on background only, or when its label has no name).
        Without ``organ_names`` the organ is the label number as a string.
    image
        Optional intensity image (HU) on the same grid, for mean/sd per lesion.

    Returns
    -------
    list[MeasuredLesion]
        Sorted by label.
    """
    labels = _as_label_array(labels, "labels")
    for name, other in (("organ_map", organ_map), ("image", image)):
        if other is not None and np.shape(other) != labels.shape:
            raise MetatrackError(f"{name}: shape {np.shape(other)} differs from the mask's {labels.shape}")
    spacing = geometry.spacing_zyx
    voxel_mm3 = float(np.prod(spacing))
    lesions: list[MeasuredLesion] = []
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        label = index + 1
        crop = labels[box] == label
        idx = np.argwhere(crop)
        offset = np.array([s.start for s in box])
        centroid = geometry.index_to_physical(idx.mean(axis=0) + offset)[0]
        long_mm, short_mm, long_slice = 0.0, 0.0, box[0].start
        for z in np.unique(idx[:, 0]):
            lo, sh = axial_diameters(crop[z], (spacing[1], spacing[2]))
            if lo > long_mm + _EPS:
                long_mm, short_mm, long_slice = lo, sh, int(z + offset[0])
        organ = None
        if organ_map is not None:
            organ = _majority_organ(np.asarray(organ_map)[box][crop], organ_names)
        mean_hu = sd_hu = None
        if image is not None:
            values = np.asarray(image, dtype=float)[box][crop]
            mean_hu, sd_hu = float(values.mean()), float(values.std())
        lesions.append(
            MeasuredLesion(
                label=label,
                voxels=len(idx),
                volume_mm3=len(idx) * voxel_mm3,
                centroid_lps=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
                long_axis_mm=long_mm,
                short_axis_mm=short_mm,
                max_3d_diameter_mm=max_3d_diameter(crop, spacing),
                organ=organ,
                bbox=(*(int(s.start) for s in box), *(int(s.stop) for s in box)),  # type: ignore[arg-type]
                long_axis_slice=long_slice,
                mean_hu=mean_hu,
                sd_hu=sd_hu,
            )
        )
    return lesions


def extract_lesions(
    mask: np.ndarray,
    geometry: Geometry,
    *,
    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3,
    organ_map: np.ndarray | None = None,
    organ_names: Mapping[int, str] | None = None,
    image: np.ndarray | None = None,
    split_components: bool | None = None,
) -> list[MeasuredLesion]:
    """Lesions of a scan's mask with their measurements: :func:`label_lesions` then :func:`measure_lesions`.

    Callers that also need the lesion label map (e.g. for matching) call those two functions themselves.
    """
    labels = label_lesions(mask, geometry, min_volume_mm3=min_volume_mm3, split_components=split_components)
    return measure_lesions(labels, geometry, organ_map=organ_map, organ_names=organ_names, image=image)

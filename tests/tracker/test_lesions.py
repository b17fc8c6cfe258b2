"""Lesion extraction and measurements against hand-built masks with known geometry."""

import numpy as np
import pytest

from tracker.errors import MetatrackError
from tracker.lesions import Geometry, axial_diameters, extract_lesions, label_lesions, measure_lesions


def test_geometry_round_trip_with_rotation() -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    geometry = Geometry(origin=(10.0, -5.0, 2.0), spacing=(0.7, 0.9, 2.5), direction=(c, -s, 0, s, c, 0, 0, 0, 1))
    idx = np.array([[3.0, 4.0, 5.0], [0.0, 0.0, 0.0]])
    back = geometry.physical_to_index(geometry.index_to_physical(idx))
    np.testing.assert_allclose(back, idx, atol=1e-12)
    np.testing.assert_allclose(geometry.index_to_physical([0, 0, 0])[0], [10.0, -5.0, 2.0])


def test_centroid_lps_with_non_identity_direction() -> None:
    # Direction: x axis of the grid points along -y, y along +x, z along -z (a proper rotation).
    direction = (0, 1, 0, -1, 0, 0, 0, 0, -1)
    geometry = Geometry(origin=(100.0, 50.0, -20.0), spacing=(0.5, 2.0, 3.0), direction=direction)
    mask = np.zeros((6, 8, 10), dtype=np.uint8)
    mask[2:5, 3:6, 4:8] = 1  # centre index (z, y, x) = (3, 4, 5.5)
    (lesion,) = extract_lesions(mask, geometry, min_volume_mm3=0)
    i, j, k = 5.5 * 0.5, 4 * 2.0, 3 * 3.0  # index (x, y, z) scaled by spacing
    expected = (100.0 + j, 50.0 - i, -20.0 - k)
    np.testing.assert_allclose(lesion.centroid_lps, expected, atol=1e-9)
    assert lesion.voxels == 36
    assert lesion.volume_mm3 == pytest.approx(36 * 0.5 * 2.0 * 3.0)
    assert lesion.bbox == (2, 3, 4, 5, 6, 8)


def test_rectangle_diameters_edge_to_edge() -> None:
    spacing_yx = (0.8, 0.6)
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:9, 3:13] = True  # 4 x 10 pixels: 3.2 mm x 6.0 mm
    long_mm, short_mm = axial_diameters(mask, spacing_yx)
    a, b = 6.0, 3.2
    diagonal = np.hypot(a, b)
    assert long_mm == pytest.approx(diagonal)
    # Longest chord perpendicular to the diagonal passes through the centre: b * diagonal / a.
    assert short_mm == pytest.approx(b * diagonal / a)


def test_single_pixel_is_one_pixel_wide() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[2, 2] = True
    long_mm, short_mm = axial_diameters(mask, (1.0, 1.0))
    assert long_mm == pytest.approx(np.sqrt(2))  # corner to corner of one pixel
    assert short_mm == pytest.approx(np.sqrt(2))


def test_ellipse_diameters_within_half_a_voxel() -> None:
    spacing = (3.0, 0.7, 0.9)  # (z, y, x)
    semi_x, semi_y = 20.0, 9.0  # mm, long axis along x
    shape = (5, 40, 60)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    y_mm, x_mm = (yy - 20) * spacing[1], (xx - 30) * spacing[2]
    disc = (x_mm / semi_x) ** 2 + (y_mm / semi_y) ** 2 <= 1.0
    mask = np.zeros(shape, dtype=np.uint8)
    mask[1:4] = disc
    geometry = Geometry(spacing=spacing[::-1])
    (lesion,) = extract_lesions(mask, geometry)
    # Pixels whose centre lies inside the ellipse, measured edge to edge: the rasterised extent per axis.
    long_true = (2 * np.floor(semi_x / spacing[2]) + 1) * spacing[2]
    short_true = (2 * np.floor(semi_y / spacing[1]) + 1) * spacing[1]
    assert abs(lesion.long_axis_mm - long_true) <= spacing[2] / 2
    assert abs(lesion.short_axis_mm - short_true) <= spacing[1] / 2
    expected_3d = np.hypot(long_true, 3 * spacing[0])
    assert abs(lesion.max_3d_diameter_mm - expected_3d) <= spacing[2] / 2
    assert 1 <= lesion.long_axis_slice <= 3


def test_binary_mask_split_into_26_connected_components_and_specks_dropped() -> None:
    mask = np.zeros((10, 10, 10), dtype=np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[3, 3, 3] = 1  # touches the first block only by a corner: same lesion (26-connectivity)
    mask[6:9, 6:9, 6:9] = 1  # 27 voxels
    mask[0, 9, 0] = 1  # 1-voxel speck
    geometry = Geometry(spacing=(1.0, 1.0, 1.0))
    labels = label_lesions(mask, geometry, min_volume_mm3=5.0)
    lesions = measure_lesions(labels, geometry)
    assert [les.label for les in lesions] == [1, 2]
    assert [les.voxels for les in lesions] == [9, 27]
    assert labels[0, 9, 0] == 0


def test_multilabel_map_keeps_labels_even_when_disconnected() -> None:
    mask = np.zeros((6, 12, 12), dtype=np.int16)
    mask[1:3, 1:3, 1:3] = 4
    mask[1:3, 8:10, 8:10] = 4  # second component, same label: one lesion
    mask[4, 5:7, 5:7] = 7
    lesions = extract_lesions(mask, Geometry(), min_volume_mm3=1.0)
    assert [(les.label, les.voxels) for les in lesions] == [(4, 16), (7, 4)]


def test_organ_by_majority_and_hu_statistics() -> None:
    mask = np.zeros((4, 10, 10), dtype=np.uint8)
    mask[1:3, 2:6, 2:6] = 1  # 32 voxels
    organs = np.zeros_like(mask)
    organs[:, :, :5] = 2  # 24 of the lesion's voxels
    organs[:, :, 5:] = 3  # 8 voxels
    image = np.where(organs == 2, 40.0, 100.0)
    (lesion,) = extract_lesions(
        mask, Geometry(), min_volume_mm3=0, organ_map=organs, organ_names={2: "liver", 3: "lung"}, image=image
    )
    assert lesion.organ == "liver"
    assert lesion.mean_hu == pytest.approx((24 * 40 + 8 * 100) / 32)
    assert lesion.sd_hu == pytest.approx(np.std([40.0] * 24 + [100.0] * 8))


def test_bad_inputs_raise_project_error() -> None:
    with pytest.raises(MetatrackError, match="spacing"):
        Geometry(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(MetatrackError, match="3D"):
        extract_lesions(np.zeros((4, 4), dtype=np.uint8), Geometry())
    with pytest.raises(MetatrackError, match="organ_map"):
        extract_lesions(np.ones((2, 2, 2), np.uint8), Geometry(), organ_map=np.zeros((3, 3, 3), np.uint8))

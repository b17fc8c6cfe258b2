"""Point conventions of transform files and of a registration result (known rigid motion)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from registration import map_points, register, warp_image, warp_labels
from registration.phantom import make_pair
from registration.quality import ncc
from registration.transforms import write_affine, write_field
from tracker.errors import MetatrackError

VOXEL_MM = 3.0


def test_transform_list_applies_in_list_order(tmp_path):
    shift = sitk.TranslationTransform(3, (10.0, 0.0, 0.0))
    scale = sitk.ScaleTransform(3, (2.0, 2.0, 2.0))
    a = write_affine(shift, tmp_path / "a.tfm")
    b = write_affine(scale, tmp_path / "b.txt")
    p = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(map_points(p, [a, b]), [[22.0, 4.0, 6.0]])
    np.testing.assert_allclose(map_points(p, [b, a]), [[12.0, 4.0, 6.0]])


def test_displacement_field_file_adds_its_vector(tmp_path):
    ref = sitk.Image([8, 8, 8], sitk.sitkVectorFloat64, 3)
    ref.SetSpacing((2.0, 2.0, 2.0))
    arr = np.zeros((8, 8, 8, 3))
    arr[..., 1] = -3.5  # y displacement everywhere
    field = sitk.GetImageFromArray(arr, isVector=True)
    field.CopyInformation(ref)
    path = write_field(field, tmp_path / "renamed-blob.nii.gz")
    out = map_points(np.array([[5.0, 5.0, 5.0]]), [path])
    np.testing.assert_allclose(out, [[5.0, 1.5, 5.0]], atol=1e-5)


def test_map_points_rejects_bad_input(tmp_path):
    with pytest.raises(MetatrackError, match="shape"):
        map_points(np.zeros((4, 2)), [tmp_path / "x.tfm"])
    with pytest.raises(MetatrackError, match="not found"):
        map_points(np.zeros((1, 3)), [tmp_path / "missing.tfm"])
    (tmp_path / "t.xyz").write_text("x")
    with pytest.raises(MetatrackError, match="extension"):
        map_points(np.zeros((1, 3)), [tmp_path / "t.xyz"])


@pytest.fixture(scope="module")
def rigid_case(tmp_path_factory):
    pair = make_pair(
        (48, 64, 64),
        (VOXEL_MM, VOXEL_MM, VOXEL_MM),
        seed=11,
        rotation_deg=6.0,
        translation_mm=9.0,
        deformation_mm=0.0,
        hu_offset=40.0,
    )
    workdir = tmp_path_factory.mktemp("rigid")
    return pair, register(pair.baseline, pair.followup, preset="affine", seed=0, workdir=workdir)


def test_rigid_motion_recovered_both_ways(rigid_case):
    pair, res = rigid_case
    initial = np.linalg.norm(pair.landmarks_baseline - pair.landmarks_scan, axis=1).mean()
    assert initial > 5.0
    fwd = np.linalg.norm(map_points(pair.landmarks_baseline, res.forward) - pair.landmarks_scan, axis=1)
    inv = np.linalg.norm(map_points(pair.landmarks_scan, res.inverse) - pair.landmarks_baseline, axis=1)
    assert fwd.mean() < 0.5 * VOXEL_MM
    assert inv.mean() < 0.5 * VOXEL_MM
    assert not res.needs_review, res.review_reasons


def test_forward_then_inverse_round_trips(rigid_case):
    pair, res = rigid_case
    back = map_points(map_points(pair.landmarks_baseline, res.forward), res.inverse)
    np.testing.assert_allclose(back, pair.landmarks_baseline, atol=1e-4)


def test_warp_image_and_labels_follow_forward_convention(rigid_case):
    pair, res = rigid_case
    # A label cube around one follow-up landmark must land around the matching baseline landmark.
    q, p = pair.landmarks_scan[0], pair.landmarks_baseline[0]
    labels = sitk.Image(pair.followup.GetSize(), sitk.sitkUInt8)
    labels.CopyInformation(pair.followup)
    centre = np.asarray(pair.followup.TransformPhysicalPointToIndex(tuple(q)))
    arr = sitk.GetArrayFromImage(labels)
    lo, hi = centre - 3, centre + 4
    arr[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]] = 7
    labels_img = sitk.GetImageFromArray(arr)
    labels_img.CopyInformation(pair.followup)
    warped = warp_labels(labels_img, pair.baseline, res.forward)
    out = sitk.GetArrayFromImage(warped)
    assert set(np.unique(out)) <= {0, 7}
    idx = np.argwhere(out == 7)[:, ::-1]
    centroid = np.mean([pair.baseline.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in idx], axis=0)
    assert np.linalg.norm(centroid - p) < VOXEL_MM
    body = sitk.GetArrayFromImage(pair.baseline_body) > 0
    base = sitk.GetArrayFromImage(pair.baseline)
    unwarped = sitk.GetArrayFromImage(sitk.Resample(pair.followup, pair.baseline, sitk.Transform(), sitk.sitkLinear))
    warped_img = sitk.GetArrayFromImage(warp_image(pair.followup, pair.baseline, res.forward))
    assert ncc(base, warped_img, body) > 0.8
    assert ncc(base, warped_img, body) > ncc(base, unwarped, body) + 0.2

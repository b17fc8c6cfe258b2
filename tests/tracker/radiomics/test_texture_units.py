"""Texture families on tiny hand-computed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from tracker.errors import MetatrackError
from tracker.radiomics.texture import texture_feature_names, texture_features
from tracker.radiomics.texture.glcm import glcm_features_from_matrix, glcm_matrices
from tracker.radiomics.texture.glrlm import glrlm_matrices
from tracker.radiomics.texture.neighbourhood import build_neighbourhood
from tracker.radiomics.texture.ngldm import ngldm_matrices
from tracker.radiomics.texture.ngtdm import ngtdm_features_from_matrix, ngtdm_matrices


def _hood(levels: np.ndarray, n_levels: int, mode: str, roi: np.ndarray | None = None):
    roi = levels > 0 if roi is None else roi
    return build_neighbourhood(levels, roi, n_levels, mode, roi)


def _checkerboard(size: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy + xx) % 2 + 1)[None].astype(np.int64)


def test_glcm_checkerboard_horizontal_and_diagonal() -> None:
    hood = _hood(_checkerboard(), 2, "2D")
    m = glcm_matrices(hood)  # directions (0,0,1), (0,1,-1), (0,1,0), (0,1,1); one slice
    # 4 rows x 3 horizontal pairs, all unequal, counted both ways.
    np.testing.assert_array_equal(m[0, 0], [[0, 12], [12, 0]])
    # 3 x 3 diagonal pairs, all equal: 5 pairs of level 1 and 4 of level 2 (or vice versa), doubled.
    assert m[1, 0].trace() == 18 and m[1, 0][0, 1] == 0
    feats = glcm_features_from_matrix(m[0, 0])
    assert feats["contrast"] == pytest.approx(1.0)
    assert feats["corr"] == pytest.approx(-1.0)
    assert feats["joint_avg"] == pytest.approx(1.5)
    assert feats["energy"] == pytest.approx(0.5)
    assert feats["joint_entr"] == pytest.approx(1.0)
    assert feats["inv_diff_norm"] == pytest.approx(1.0 / (1.0 + 1.0 / 2))
    out = texture_features(_checkerboard(), np.ones((1, 4, 4), bool), 2, mode="2D", families=("cm",))
    assert out["cm_contrast_2D_avg"] == pytest.approx(0.5)
    # Horizontal and vertical pairs (12 + 12) are unequal, diagonal pairs (9 + 9) equal.
    assert out["cm_contrast_2_5D_comb"] == pytest.approx(24 / 42)


def test_glcm_normalised_features_use_n_levels() -> None:
    roi = np.ones((1, 4, 4), bool)
    a = texture_features(_checkerboard(), roi, 2, mode="3D", families=("cm",))
    b = texture_features(_checkerboard(), roi, 4, mode="3D", families=("cm",))
    # Only in-plane directions have pairs; horizontal/vertical differ by 1, diagonals by 0.
    unequal = 24 / 42
    assert a["cm_inv_diff_norm_3D_comb"] == pytest.approx(unequal / (1 + 1 / 2) + (1 - unequal))
    assert b["cm_inv_diff_norm_3D_comb"] == pytest.approx(unequal / (1 + 1 / 4) + (1 - unequal))
    assert a["cm_contrast_3D_comb"] == b["cm_contrast_3D_comb"]


def test_glrlm_runs_along_a_line() -> None:
    levels = np.array([[[1, 1, 2, 2, 2]]])
    m = glrlm_matrices(_hood(levels, 2, "3D"))
    np.testing.assert_array_equal(m[0, 0], [[0, 1, 0], [0, 0, 1]])  # along x; width = longest run
    for d in range(1, 13):  # every other direction: five runs of length 1
        assert m[d, 0, :, 0].sum() == 5 and m[d, 0, :, 1:].sum() == 0
    out = texture_features(levels, levels > 0, 2, mode="3D", families=("rlm",))
    assert out["rlm_r_perc_3D_comb"] == pytest.approx((2 + 12 * 5) / (13 * 5))


def test_zone_connectivity_3d_vs_2d() -> None:
    levels = np.zeros((2, 2, 2), np.int64)
    levels[0, 0, 0] = levels[1, 1, 1] = 1  # corner-touching only: one 26-connected zone, two 2D zones
    roi = levels > 0
    out3 = texture_features(levels, roi, 1, mode="3D", families=("szm",))
    assert out3["szm_sze_3D"] == pytest.approx(1 / 4)
    assert out3["szm_z_perc_3D"] == pytest.approx(1 / 2)
    out2 = texture_features(levels, roi, 1, mode="2D", families=("szm",))
    assert out2["szm_sze_2D"] == pytest.approx(1.0)
    assert out2["szm_z_perc_2_5D"] == pytest.approx(1.0)


def test_gldzm_distance_of_inner_zone() -> None:
    levels = np.ones((5, 5, 5), np.int64)
    levels[2, 2, 2] = 2  # centre voxel: city-block distance 3 to the border; outer shell zone: 1
    out = texture_features(levels, levels > 0, 2, mode="3D", families=("dzm",))
    assert out["dzm_lde_3D"] == pytest.approx((1 + 9) / 2)
    assert out["dzm_sde_3D"] == pytest.approx((1 + 1 / 9) / 2)
    # Distances come from the morphological ROI: one more voxel of it all round adds 1 to every distance.
    padded = np.pad(levels, 1)
    out_m = texture_features(padded, padded > 0, 2, mode="3D", morph_roi=np.ones(padded.shape, bool))
    assert out_m["dzm_lde_3D"] == pytest.approx((4 + 16) / 2)
    assert out_m["dzm_sde_3D"] == pytest.approx((1 / 4 + 1 / 16) / 2)


def test_ngtdm_three_voxel_line() -> None:
    levels = np.array([[[1, 2, 3]]])
    s, n = ngtdm_matrices(_hood(levels, 3, "3D"))
    np.testing.assert_allclose(s[0], [1, 0, 1])
    np.testing.assert_allclose(n[0], [1, 1, 1])
    feats = ngtdm_features_from_matrix(s[0], n[0])
    assert feats["coarseness"] == pytest.approx(1.5)
    assert feats["contrast"] == pytest.approx(4 / 27)
    assert feats["busyness"] == pytest.approx(0.25)
    assert feats["complexity"] == pytest.approx(2.0)
    assert feats["strength"] == pytest.approx(4.0)


def test_ngldm_dependence_in_plane() -> None:
    levels = np.ones((1, 3, 3), np.int64)
    m = ngldm_matrices(_hood(levels, 1, "2D"))
    # Corners see 3 equal neighbours, edges 5, the centre 8 (dependence = 1 + count).
    assert m[0, 0, 3] == 4 and m[0, 0, 5] == 4 and m[0, 0, 8] == 1 and m.sum() == 9


def test_key_set_fixed_and_nan_for_degenerate_rois() -> None:
    levels = np.zeros((3, 3, 3), np.int64)
    for mode in ("2D", "3D"):
        empty = texture_features(levels, levels > 0, 4, mode=mode)
        assert list(empty) == texture_feature_names(mode)
        assert all(np.isnan(v) for v in empty.values())
    levels[1, 1, 1] = 2
    single = texture_features(levels, levels > 0, 4, mode="3D")
    assert list(single) == texture_feature_names("3D")
    assert np.isnan(single["cm_contrast_3D_avg"])  # no voxel pairs
    assert single["rlm_sre_3D_avg"] == 1.0
    assert single["szm_sze_3D"] == 1.0 and single["ngl_dc_perc_3D"] == 1.0
    assert len(texture_feature_names("3D")) == 136 and len(texture_feature_names("2D")) == 272


def test_invalid_inputs_raise() -> None:
    levels = np.full((2, 2, 2), 5)
    with pytest.raises(MetatrackError, match=r"1\.\.4"):
        texture_features(levels, levels > 0, 4, mode="3D")
    with pytest.raises(MetatrackError, match="mode"):
        texture_features(levels, levels > 0, 5, mode="4D")
    with pytest.raises(MetatrackError, match="families"):
        texture_features(levels, levels > 0, 5, mode="3D", families=("glcm",))
    nan_levels = np.full((2, 2, 2), np.nan)
    with pytest.raises(MetatrackError, match="NaN"):
        texture_features(nan_levels, np.ones((2, 2, 2), bool), 5, mode="3D")
    # Values outside the ROI are ignored, NaN included.
    outside = np.where(np.arange(8).reshape(2, 2, 2) < 4, 1.0, np.nan)
    out = texture_features(outside, np.isfinite(outside), 1, mode="3D", families=("szm",))
    assert out["szm_sze_3D"] == pytest.approx(1 / 16)

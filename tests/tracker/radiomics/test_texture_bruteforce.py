"""Texture matrices of the vectorised engine against plain-loop references on small random ROIs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tracker.radiomics.texture.directions import directions_for
from tracker.radiomics.texture.glcm import glcm_matrices
from tracker.radiomics.texture.gldzm import gldzm_matrices
from tracker.radiomics.texture.glrlm import glrlm_matrices
from tracker.radiomics.texture.glszm import glszm_matrices
from tracker.radiomics.texture.neighbourhood import build_neighbourhood
from tracker.radiomics.texture.ngldm import ngldm_matrices
from tracker.radiomics.texture.ngtdm import ngtdm_matrices

N_LEVELS = 3


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random levels 1..3 in a random ROI (with holes and several pieces) inside a larger morphological ROI."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 8, size=3))
    levels = rng.integers(1, N_LEVELS + 1, size=shape)
    roi = rng.random(shape) < 0.7
    morph = roi | (rng.random(shape) < 0.5)
    return np.where(roi, levels, 0), roi, morph


def _inside(p: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return all(0 <= c < n for c, n in zip(p, shape, strict=True))


def _neighbours(mode: str) -> list[tuple[int, int, int]]:
    half = list(directions_for(mode))
    return half + [(-a, -b, -c) for a, b, c in half]


def _group(p: tuple[int, ...], mode: str) -> int:
    return p[0] if mode == "2D" else 0


def _ref_glrlm(levels, roi, mode):
    n_s = roi.shape[0] if mode == "2D" else 1
    out = []
    for o in directions_for(mode):
        m = np.zeros((n_s, N_LEVELS, max(roi.shape) + 1))
        for p in zip(*np.nonzero(roi), strict=True):
            prev = tuple(c - d for c, d in zip(p, o, strict=True))
            if _inside(prev, roi.shape) and roi[prev] and levels[prev] == levels[p]:
                continue  # not a run start
            length, q = 1, tuple(c + d for c, d in zip(p, o, strict=True))
            while _inside(q, roi.shape) and roi[q] and levels[q] == levels[p]:
                length += 1
                q = tuple(c + d for c, d in zip(q, o, strict=True))
            m[_group(p, mode), levels[p] - 1, length - 1] += 1
        out.append(m)
    return np.stack(out)


def _ref_zones(levels, roi, mode):
    zone = -np.ones(roi.shape, dtype=int)
    sizes, lev, grp, members = [], [], [], []
    for p in zip(*np.nonzero(roi), strict=True):
        if zone[p] >= 0:
            continue
        k = len(sizes)
        zone[p], stack, pts = k, [p], []
        while stack:
            q = stack.pop()
            pts.append(q)
            for o in _neighbours(mode):
                r = tuple(c + d for c, d in zip(q, o, strict=True))
                if _inside(r, roi.shape) and roi[r] and zone[r] < 0 and levels[r] == levels[p]:
                    zone[r] = k
                    stack.append(r)
        sizes.append(len(pts))
        lev.append(levels[p])
        grp.append(_group(p, mode))
        members.append(pts)
    return sizes, lev, grp, members


def _ref_distance(morph, p, mode):
    """Smallest city-block distance from ``p`` to a voxel outside ``morph`` (outside the array included)."""
    padded = np.pad(morph, 1)
    best = np.inf
    for q in zip(*np.nonzero(~padded), strict=True):
        d = [abs(a - (b + 1)) for a, b in zip(q, p, strict=True)]
        if mode == "2D" and d[0] != 0:
            continue
        best = min(best, sum(d))
    return int(best)


@pytest.mark.parametrize(("seed", "mode"), list(itertools.product(range(6), ("2D", "3D"))))
def test_matrices_equal_loop_references(seed: int, mode: str) -> None:
    levels, roi, morph = _case(seed)
    hood = build_neighbourhood(levels, roi, N_LEVELS, mode, morph)
    # the neighbourhood crops to the bounding box of roi | morph: compare on that box
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(roi | morph))
    levels, roi, morph = levels[box], roi[box], morph[box]
    n_s = roi.shape[0] if mode == "2D" else 1

    rlm = glrlm_matrices(hood)
    ref = _ref_glrlm(levels, roi, mode)
    width = rlm.shape[-1]
    assert ref[..., width:].sum() == 0
    np.testing.assert_array_equal(rlm, ref[..., :width])

    cm = np.zeros((len(directions_for(mode)), n_s, N_LEVELS, N_LEVELS))
    dep = np.zeros((n_s, N_LEVELS, 1 + len(_neighbours(mode))))
    s_ref = np.zeros((n_s, N_LEVELS))
    n_ref = np.zeros((n_s, N_LEVELS))
    for p in zip(*np.nonzero(roi), strict=True):
        g, lp = _group(p, mode), levels[p]
        for d, o in enumerate(directions_for(mode)):
            q = tuple(c + e for c, e in zip(p, o, strict=True))
            if _inside(q, roi.shape) and roi[q]:
                cm[d, g, lp - 1, levels[q] - 1] += 1
                cm[d, g, levels[q] - 1, lp - 1] += 1
        nb = [
            levels[q]
            for q in (tuple(c + e for c, e in zip(p, o, strict=True)) for o in _neighbours(mode))
            if _inside(q, roi.shape) and roi[q]
        ]
        dep[g, lp - 1, sum(v == lp for v in nb)] += 1
        if nb:
            s_ref[g, lp - 1] += abs(lp - np.mean(nb))
            n_ref[g, lp - 1] += 1
    np.testing.assert_array_equal(glcm_matrices(hood), cm)
    np.testing.assert_array_equal(ngldm_matrices(hood), dep)
    s, n = ngtdm_matrices(hood)
    np.testing.assert_allclose(s, s_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(n, n_ref)

    sizes, lev, grp, members = _ref_zones(levels, roi, mode)
    szm = np.zeros((n_s, N_LEVELS, max(sizes)))
    dzm = np.zeros((n_s, N_LEVELS, 64))
    for size, lv, g, pts in zip(sizes, lev, grp, members, strict=True):
        szm[g, lv - 1, size - 1] += 1
        dist = min(max(_ref_distance(morph, p, mode), 1) for p in pts)
        dzm[g, lv - 1, dist - 1] += 1
    np.testing.assert_array_equal(glszm_matrices(hood), szm)
    got = gldzm_matrices(hood)
    assert dzm[..., got.shape[-1] :].sum() == 0
    np.testing.assert_array_equal(got, dzm[..., : got.shape[-1]])


def test_compressed_matrices_give_the_full_features() -> None:
    from tracker.radiomics.texture.aggregate import compress, zone_matrix_features
    from tracker.radiomics.texture.glcm import glcm_features_from_matrix
    from tracker.radiomics.texture.ngtdm import ngtdm_features_from_matrix

    rng = np.random.default_rng(3)
    zone = rng.integers(0, 4, size=(3, 9, 12))
    zone[0] = np.maximum(zone[0], 1)  # every row and column holds counts ...
    zone[1, 2, 3] = 0  # ... and some cells are empty
    zone[:, 4, :] = 0  # ... but one level without zones
    zone[:, :, 7:] = 0  # sizes that do not occur
    small, rows, cols = compress(zone)
    assert small.shape[-2:] == (8, 7) and list(rows) == [1, 2, 3, 4, 6, 7, 8, 9]
    full = zone_matrix_features(zone, 100.0)
    part = zone_matrix_features(small, 100.0, rows, cols)
    for key, value in full.items():
        np.testing.assert_allclose(part[key], value, rtol=1e-13, err_msg=key)

    cm = rng.integers(0, 3, size=(2, 10, 10)).astype(float)
    cm[:, [2, 5], :] = 0
    cm[:, :, [2, 5]] = 0
    cm = cm + cm.transpose(0, 2, 1)
    small, levels, _ = compress(cm, symmetric=True)
    assert small.shape[-1] == 8
    full = glcm_features_from_matrix(cm)
    part = glcm_features_from_matrix(small, levels, 10)
    for key, value in full.items():
        np.testing.assert_allclose(part[key], value, rtol=1e-12, err_msg=key)

    n = rng.integers(0, 5, size=10).astype(float)
    n[[1, 6]] = 0
    s = rng.random(10) * n
    keep = np.flatnonzero(n)
    full = ngtdm_features_from_matrix(s, n)
    part = ngtdm_features_from_matrix(s[keep], n[keep], keep + 1)
    for key, value in full.items():
        np.testing.assert_allclose(part[key], value, rtol=1e-12, err_msg=key)

"""Peritumoral shell: distance in mm, body-mask clipping, other lesions excluded."""

from __future__ import annotations

import numpy as np

from tracker.radiomics import peritumoral_shell


def test_shell_of_one_voxel_counts_neighbours_by_distance() -> None:
    lesion = np.zeros((9, 9, 9), bool)
    lesion[4, 4, 4] = True
    sp = (1.0, 1.0, 1.0)
    assert peritumoral_shell(lesion, sp, 1.0).sum() == 6  # face neighbours at 1 mm
    assert peritumoral_shell(lesion, sp, 1.5).sum() == 18  # + edge neighbours at sqrt(2) mm
    assert peritumoral_shell(lesion, sp, 1.8).sum() == 26  # + corners at sqrt(3) mm
    # anisotropic: 3 mm slices put z neighbours out of a 2 mm shell
    # 4 face (1 mm) + 4 diagonal (sqrt(2) mm) + 4 at 2 mm, all in-plane
    assert peritumoral_shell(lesion, (3.0, 1.0, 1.0), 2.0).sum() == 12


def test_shell_clipped_to_body_and_excludes_other_lesions() -> None:
    lesion = np.zeros((9, 9, 9), bool)
    lesion[4, 4, 4] = True
    body = np.ones(lesion.shape, bool)
    body[:, :, 5:] = False  # everything at x >= 5 is outside the body
    other = np.zeros(lesion.shape, bool)
    other[3, 4, 4] = True
    shell = peritumoral_shell(lesion, (1.0, 1.0, 1.0), 1.0, body_mask=body, other_lesions=other)
    assert shell.sum() == 4
    assert not shell[4, 4, 5] and not shell[3, 4, 4] and shell[5, 4, 4] and not shell[4, 4, 4]


def test_shell_of_sphere_matches_brute_force_distances() -> None:
    from scipy.spatial import cKDTree

    spacing = np.array([0.8, 0.5, 0.5])
    idx = np.indices((30, 41, 41)).reshape(3, -1).T
    pos = idx * spacing
    r = np.linalg.norm(pos - pos.mean(axis=0), axis=1)
    lesion = (r <= 5.0).reshape(30, 41, 41)
    dist, _ = cKDTree(pos[lesion.ravel()]).query(pos)
    expected = ((dist > 0) & (dist <= 2.0)).reshape(lesion.shape)
    shell = peritumoral_shell(lesion, tuple(spacing), 2.0)
    assert shell.sum() == expected.sum() > 0
    assert np.array_equal(shell, expected)


def test_features_on_the_shell_use_only_shell_voxels() -> None:
    from tracker.radiomics import extract

    lesion = np.zeros((24, 24, 24), bool)
    lesion[9:15, 9:15, 9:15] = True
    image = np.where(lesion, 100.0, 0.0)
    image[:, :, :12] += 20.0  # left half of the surroundings is brighter
    shell = peritumoral_shell(lesion, (1.0, 1.0, 1.0), 3.0)
    values = extract(image, shell, (1.0, 1.0, 1.0), "ct_default").values
    assert values["stat_mean"] == float(image[shell].mean())
    assert values["stat_max"] == 20.0  # no lesion voxel leaks into the shell
    assert values["morph_vol_approx"] == float(shell.sum())

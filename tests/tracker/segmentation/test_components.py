"""Lesion components of a probability map: 26-connected regions, volumes in mm3, minimum volume, confidence."""

from __future__ import annotations

import numpy as np
import pytest

from tracker.segmentation.components import equivalent_diameter_mm, lesion_components


def test_components_volumes_order_and_confidence() -> None:
    prob = np.zeros((10, 10, 10), np.float32)
    prob[1:4, 1:4, 1:4] = 0.9  # 27 voxels
    prob[6:8, 6:8, 6:8] = 0.6  # 8 voxels
    prob[6, 1, 1] = 0.8  # 1 voxel
    prob[9, 9, 9] = 0.4  # below the threshold
    labels, comps = lesion_components(prob, (2.0, 1.0, 1.0), threshold=0.5, min_volume_mm3=4.0)
    assert [(c.label, c.volume_mm3) for c in comps] == [(1, 54.0), (2, 16.0)]  # the 2 mm3 one is dropped
    assert [c.confidence for c in comps] == pytest.approx([0.9, 0.6])
    assert labels.dtype == np.int32
    assert (labels == 1).sum() == 27 and (labels == 2).sum() == 8 and labels[6, 1, 1] == 0 and labels[9, 9, 9] == 0


def test_diagonal_neighbours_are_one_component() -> None:
    prob = np.zeros((3, 3, 3), np.float32)
    prob[0, 0, 0] = prob[1, 1, 1] = prob[2, 2, 2] = 1.0  # corner-touching: 26-connected
    labels, comps = lesion_components(prob, (1.0, 1.0, 1.0), threshold=0.5, min_volume_mm3=0.0)
    assert len(comps) == 1 and comps[0].volume_mm3 == 3.0 and labels.max() == 1


def test_empty_map_has_no_components() -> None:
    labels, comps = lesion_components(np.zeros((4, 4, 4)), (1.0, 1.0, 1.0), threshold=0.5, min_volume_mm3=0.0)
    assert comps == [] and not labels.any()


def test_equivalent_diameter() -> None:
    assert equivalent_diameter_mm(np.pi / 6 * 10.0**3) == pytest.approx(10.0)

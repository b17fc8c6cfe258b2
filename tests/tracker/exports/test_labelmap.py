"""A scan's label map relabelled with track numbers."""

from __future__ import annotations

import numpy as np
import pytest

from tracker.errors import MetatrackError
from tracker.exports.labelmap import lesion_labels, track_label_map
from tracker.exports.records import ExportLesion
from tracker.lesions import Geometry


def _lesion(label: int, track: int | None) -> ExportLesion:
    return ExportLesion(label, track, "new", None, None, 8.0, 2.0, 2.0)


def test_labels_become_track_numbers() -> None:
    mask = np.zeros((4, 6, 6), np.uint8)
    mask[0:2, 0:2, 0:2] = 1
    mask[2:4, 3:5, 3:5] = 1
    mask[0, 5, 5] = 1  # a 1 mm3 speck: below the stored minimum volume, not a lesion
    labels = lesion_labels(mask, Geometry(), {"min_lesion_mm3": 4.0})
    assert sorted(np.unique(labels)) == [0, 1, 2]
    tracks = track_label_map(labels, [_lesion(1, 7), _lesion(2, 300)])
    assert tracks.dtype == np.uint16
    assert (tracks == 7).sum() == 8 and (tracks == 300).sum() == 8 and tracks[0, 5, 5] == 0


def test_a_label_without_a_lesion_record_is_refused() -> None:
    labels = np.array([[[0, 1, 2]]], np.int32)
    with pytest.raises(MetatrackError, match=r"labels \[2\] of the scan's label map have no lesion record"):
        track_label_map(labels, [_lesion(1, 1)])

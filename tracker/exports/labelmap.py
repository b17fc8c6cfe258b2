"""A processed scan's final lesion label map with track numbers as labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tracker.errors import MetatrackError
from tracker.exports.records import ExportLesion
from tracker.lesions import DEFAULT_MIN_VOLUME_MM3, Geometry, label_lesions

MAX_TRACK_LABEL = np.iinfo(np.uint16).max


def lesion_labels(mask: np.ndarray, geometry: Geometry, settings: dict[str, object]) -> np.ndarray:
    """The lesion label map the pipeline measured (its `label_lesions` with the scan's stored minimum volume)."""
    min_volume = settings.get("min_lesion_mm3", DEFAULT_MIN_VOLUME_MM3)
    return label_lesions(mask, geometry, min_volume_mm3=float(min_volume))  # type: ignore[arg-type]


def track_label_map(labels: np.ndarray, lesions: Sequence[ExportLesion]) -> np.ndarray:
    """`labels` (the scan's lesion labels) relabelled to track numbers (uint16); lesions without a track become 0.

    A label in the map that no lesion record names is refused: the stored results do not belong to this mask.
    """
    lut_size = int(labels.max()) + 1 if labels.size else 1
    lut = np.zeros(lut_size, dtype=np.uint16)
    for les in lesions:
        if les.label >= lut_size:
            raise MetatrackError(f"lesion label {les.label} is not in the scan's label map (max {lut_size - 1})")
        if les.track is not None:
            if not 0 < les.track <= MAX_TRACK_LABEL:
                raise MetatrackError(f"track number {les.track} does not fit a 16-bit label map")
            lut[les.label] = les.track
    known = {les.label for les in lesions}
    unknown = sorted(set(np.unique(labels).tolist()) - known - {0})
    if unknown:
        raise MetatrackError(f"labels {unknown[:5]} of the scan's label map have no lesion record: reprocess the scan")
    return lut[labels]

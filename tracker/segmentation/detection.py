"""Which of a segmentation model's components on a follow-up are new lesions: the evidence a reader uses.

A component is a new lesion only when it is new and stands out. New: not part of a lesion already followed
(touching or within ``adjacent_mm`` of a propagated lesion), and not something the model would have reported on the
previous scan too (a component there of the same threshold and minimum volume, carried through the registration)
where that scan has no lesion: anatomy the model mistakes for a lesion is there at every scan. Stands out: its
median intensity differs from its surround's median by at least ``min_contrast`` times the surround's robust spread
(a reader sees a lesion against its surround; the model also fires on faint dips of soft-tissue texture).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from tracker.segmentation.components import CONNECTIVITY, Component

PRIOR_REGION_FRACTION = 0.5  # of the threshold: where the previous scan's output around one of its lesions ends
MAD_TO_SD = 1.4826  # a normal distribution's standard deviation per median absolute deviation


class Dropped(StrEnum):
    """Why a component is not a new lesion."""

    ADJACENT = "part of a lesion already followed"
    PERSISTENT = "reported by the model on the previous scan too, where that scan has no lesion"
    FAINT = "does not stand out from its surround"


@dataclass(frozen=True)
class DetectionConfig:
    """Settings of :func:`new_lesions`."""

    adjacent_mm: float = 3.0  # a component this close to a followed lesion is part of it
    # the registration's error: a component of the previous scan's output this close counts for one here
    registration_tolerance_mm: float = 6.0
    # |median inside - median of the surround| / (robust spread of the surround); simulated lesions >= 8 mm at
    # 3 mm: 1st percentile 0.94, 5th 1.13; the model's false positives on soft tissue: 8 of 9 below 0.95
    min_contrast: float = 1.0
    surround_mm: float = 6.0  # the surround: voxels this close to the component, other lesions left out


def local_contrast(
    image: np.ndarray, region: np.ndarray, spacing_zyx: Sequence[float], surround_mm: float, others: np.ndarray
) -> float:
    """(median of ``image`` in ``region`` - median of its surround) / the surround's robust spread (1.4826 MAD);
    the surround is the voxels within ``surround_mm`` of the region, ``others`` left out. inf for a uniform one."""
    from scipy import ndimage

    box = ndimage.find_objects(region.astype(np.int8))[0]
    pad = [int(np.ceil(surround_mm / s)) + 1 for s in spacing_zyx]
    box = tuple(slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(box, pad, region.shape, strict=True))
    inside = region[box]
    distance = ndimage.distance_transform_edt(~inside, sampling=spacing_zyx)
    surround = np.asarray(image[box])[(distance > 0) & (distance <= surround_mm) & ~others[box]]
    if surround.size == 0:
        return float("inf")
    centre = float(np.median(surround))
    spread = MAD_TO_SD * float(np.median(np.abs(surround - centre)))
    diff = float(np.median(np.asarray(image[box])[inside])) - centre
    return abs(diff) / spread if spread > 0 else (float("inf") if diff else 0.0)


def new_lesions(
    components: np.ndarray,
    found: Sequence[Component],
    spacing_zyx: Sequence[float],
    *,
    threshold: float,
    min_volume_mm3: float,
    image: np.ndarray | None = None,
    followed: np.ndarray | None = None,
    prior_probability: np.ndarray | None = None,
    prior_lesions: np.ndarray | None = None,
    cfg: DetectionConfig = DetectionConfig(),
) -> tuple[list[Component], dict[int, Dropped]]:
    """The components (``components``: their label map, ``found``: theirs from
    :func:`tracker.segmentation.components.lesion_components` at ``threshold`` and ``min_volume_mm3``) that are new
    lesions, and why each other one is not.

    ``image``: this scan's intensities (None: contrast not checked). ``followed``: the lesions already followed on
    this scan (propagated; nonzero = lesion). ``prior_probability``: the model's probability on the previous scan,
    resampled onto this scan's grid (None: nothing known of it); ``prior_lesions``: that scan's lesion mask on this
    grid (the model's output there, and around it down to half the threshold, is a lesion, not a mistake).
    """
    from scipy import ndimage

    before = None
    if prior_probability is not None:
        before = _reported(np.asarray(prior_probability), prior_lesions, spacing_zyx, threshold, min_volume_mm3)
    near = np.asarray(followed) > 0 if followed is not None else None
    others = components > 0
    if near is not None:
        others |= near
    objects = ndimage.find_objects(components)
    kept: list[Component] = []
    dropped: dict[int, Dropped] = {}
    for comp in found:
        box = objects[comp.label - 1]
        if box is None:
            continue
        if near is not None and _reaches(components, comp.label, box, near, cfg.adjacent_mm, spacing_zyx):
            dropped[comp.label] = Dropped.ADJACENT
        elif before is not None and _reaches(
            components, comp.label, box, before, cfg.registration_tolerance_mm, spacing_zyx
        ):
            dropped[comp.label] = Dropped.PERSISTENT
        elif (
            image is not None
            and local_contrast(np.asarray(image), components == comp.label, spacing_zyx, cfg.surround_mm, others)
            < cfg.min_contrast
        ):
            dropped[comp.label] = Dropped.FAINT
        else:
            kept.append(comp)
    return kept, dropped


def _reported(
    probability: np.ndarray,
    lesions: np.ndarray | None,
    spacing_zyx: Sequence[float],
    threshold: float,
    min_volume_mm3: float,
) -> np.ndarray:
    """Where the model's components (``threshold``, ``min_volume_mm3``) lie on a scan outside its ``lesions``
    (every region above half the threshold that touches a lesion is that lesion, halo included)."""
    from scipy import ndimage

    from tracker.segmentation.components import lesion_components

    out = lesion_components(probability, spacing_zyx, threshold=threshold, min_volume_mm3=min_volume_mm3)[0] > 0
    if lesions is not None and (np.asarray(lesions) > 0).any():
        lesion = np.asarray(lesions) > 0
        regions, _ = ndimage.label(probability >= PRIOR_REGION_FRACTION * threshold, structure=CONNECTIVITY)
        out &= ~(np.isin(regions, np.unique(regions[lesion & (regions > 0)])) | lesion)
    return out


def _reaches(
    components: np.ndarray,
    label: int,
    box: tuple[slice, ...],
    mask: np.ndarray,
    distance_mm: float,
    spacing_zyx: Sequence[float],
) -> bool:
    """Whether ``mask`` has a voxel within ``distance_mm`` of component ``label`` (``box``: its bounding box); the
    distances are computed in the box grown by that distance only."""
    from scipy import ndimage

    pad = [max(0, int(np.floor(distance_mm / s))) for s in spacing_zyx]
    grown = tuple(
        slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(box, pad, components.shape, strict=True)
    )
    near = mask[grown]
    if not near.any():
        return False
    region = components[grown] == label
    if distance_mm <= 0:
        return bool((near & region).any())
    return bool((near & (ndimage.distance_transform_edt(~region, sampling=spacing_zyx) <= distance_mm)).any())

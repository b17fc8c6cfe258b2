"""Lesion propagation: a track's lesion carried into a follow-up that has no mask, refined on its intensities.

Pure computation on numpy arrays (z, y, x). The caller warps each open track's mask from the latest scan where it
was seen onto the follow-up's grid (the registration) and measures its :class:`IntensityPrior` on that scan; this
module finds the lesion again on the follow-up. The prior's surround is measured beyond the lesion's partial-volume
rim: at 4 mm the rim of a small lesion is a third lesion, and a contrast measured against it halves, which drew the
threshold into the surround and doubled small lesions' volumes.

1. A bounded search region: the voxels within ``search_mm + search_fraction * r`` of the warped lesion (``r`` the
   radius of the sphere of its volume), so that growth, shrinkage and a few mm of misregistration are reachable.
2. A two-class intensity model on the lightly smoothed follow-up (a fifth of the lesion's radius, from half a voxel
   to ``smooth_mm``: a wider smoothing moves a small lesion's edge inwards), seeded by the last sighting
   (two-means steps on the search region): the surround's level and noise are re-measured on the follow-up (its
   calibration may differ; nothing is assumed of CT), the lesion's contrast is the prior's, re-estimated within
   [0.9, 1.5] x.
   Tissue far beyond the lesion's level (lung beside a hypodense liver lesion, bone) is another tissue: never
   lesion, and given the surround's level before smoothing so that its blurred rim does not look like one.
3. Per voxel, the two-Gaussian log-likelihood ratio about the lesion's edge level (``IntensityPrior.edge_level``,
   measured at its last sighting: half its contrast for a large lesion, more for one of a few voxels, all of them
   partial volume), plus the logit of the model's probability when given, minus a spatial prior (neutral on the
   warped lesion, one log-odds per ``decay_mm`` outside it): lesion where > 0. The components touching the warped
   lesion (within ``attach_mm``), opened against thin bridges, holes filled; other tracks' warped lesions are
   theirs (an adjacent lesion of the same density is not leakage).
   A lesion of a few voxels (radius under ``min_smooth_radius_vox`` voxels along every axis) is scaled to its size:
   unsmoothed, its contrast the prior's (not re-estimated among the noise of the search region), its spatial prior
   one log-odds per ``decay_radius_fraction`` of its radius, and its threshold ``edge_hysteresis`` of the contrast
   (at most a noise sd) lower on the warped lesion and higher off it. Before, such lesions were found at up to 3x
   their volume (smoothed over their neighbours, and thresholded at half a partial-volume level).
4. Leakage (a region lying on the search boundary): the threshold is raised towards the lesion's level; a region
   that still leaks (a neighbour of the lesion's density) is cut at ``leak_clip_mm`` and loses confidence.
5. Voxels claimed by two tracks go to the nearer warped lesion.
6. A confidence in [0, 1]: evidence x consistency x leakage. Evidence: the region's contrast on the follow-up's raw
   intensities (median against the median of its surround) as a fraction of the last sighting's, and as a
   contrast-to-noise at the smoothing scale (shrunk towards the two-class model's contrast: a faint lesion's region
   cut from noise shows the noise it selected; for a lesion of a few voxels, that of the warped lesion's voxels
   together, which no threshold selected); with a probability map, ``1 - (1 - e)(1 - mean p)``. Consistency: the
   volume ratio to the prior (a Gaussian in log ratio; a speck where a large lesion was counts little).
   Below ``min_confidence`` or ``min_volume_mm3`` a track is not found, with the reason.

A lesion that vanished leaves nothing lesion-like at its place: no region, or a speck of noise or texture with
little contrast and a small volume, so it is reported in ``not_found``; the prior's shape is never returned by
itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from tracker.errors import MetatrackError
from tracker.lesions import CONNECTIVITY_26, DEFAULT_MIN_VOLUME_MM3

# Probabilities are clipped before the logit so that a map of exact 0/1 cannot overrule every intensity.
_P_CLIP = 1e-3
# Threshold levels tried against leakage, as fractions of the way from the surround's level to the lesion's.
_LEAK_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9)
# Bounds of the EM step's change of the contrast (a lesion may fade or brighten, not reverse). Not below 0.9: the
# lesion-side voxels of a vanished lesion (noise past the midpoint) have a median of about 0.8 of the contrast, and a
# contrast lowered to it lowers the threshold into the surround's texture.
_EM_RATIO = (0.9, 1.5)
# Bounds of a lesion's edge level (a fraction of its contrast): a noisy measure of a lesion of few voxels must not
# put the threshold into the surround or above the lesion.
_EDGE_LEVELS = (0.4, 0.85)
# The measured edge level counts in full from this contrast-to-noise of the lesion (per voxel), not at all below.
_EDGE_CNR = (1.5, 5.0)
# Two-means steps of the intensity model.
_TWO_CLASS_STEPS = 3
# The surround's noise is measured within this many contrasts of its level.
_NOISE_WINDOW = 2.0
# Evidence: the found region's contrast as a fraction of the last sighting's (none at or below _RATIO_NONE, full
# from _RATIO_FULL) and its contrast-to-noise at the smoothing scale (none at _CNR_NONE, full from _CNR_FULL).
_RATIO_NONE, _RATIO_FULL = 0.55, 0.85
_RATIO_FEW = (0.4, 0.7)  # the same for a lesion of a few voxels
_CNR_NONE, _CNR_FULL = 1.0, 3.0
# For a lesion of a few voxels, that of its warped voxels together, which is about a standard normal where it vanished.
_CNR_FEW = (2.0, 4.0)
# Consistency of the found volume with the prior's: a Gaussian in log volume ratio, of sd log(spread).
_SHRINK_SPREAD, _GROW_SPREAD = 5.0, 8.0
# A lesion's texture (sd beyond the noise) is judged from this many voxels on: the sd of fewer is mostly noise.
_TEXTURE_MIN_VOXELS = 8
# Voxels more than this many times the lesion's contrast beyond the surround are another tissue.
_BEYOND = 2.5
# A lesion's core: its voxels within this many sds (its own or the noise, the larger) of its level. Voxels between
# the surround's level and the lesion's farther than _PV_RIM_MM (at least one voxel) from the core are a third tissue,
# not the lesion's partial volume (fat beside a lung nodule); only where the core's band is under half the contrast.
_CORE_SDS = 3.0
_PV_RIM_MM = 2.0
# Confidence factor of a region that leaked and was cut near the warped lesion.
_CLIPPED_FACTOR = 0.7
# Robust sd from the median absolute deviation of a Gaussian.
_MAD_TO_SD = 1.4826
_EPS = 1e-9


@dataclass(frozen=True)
class IntensityPrior:
    """The lesion as it looked at its last sighting: its level and sd inside, level and sd of a shell around it
    (levels are medians, sds MAD-based: a shell often crosses into a neighbouring organ, lung next to liver, and a
    lesion's voxels into a rib or vessel it abuts), its volume (mm3), and ``edge_level``: where its edge lies, as a
    fraction of the contrast from the surround (about 0.5 for a large lesion; higher for one of a few voxels, all
    partial volume, whose level understates its contrast: a threshold at half of it took in its neighbours)."""

    lesion_mean: float
    lesion_sd: float
    surround_mean: float
    surround_sd: float
    volume_mm3: float
    edge_level: float = 0.5

    @property
    def contrast(self) -> float:
        """Lesion level minus surround level (negative for a hypodense lesion)."""
        return self.lesion_mean - self.surround_mean


@dataclass(frozen=True)
class Prior:
    """One open track to find on the follow-up.

    Attributes
    ----------
    track_number
        The track's number (returned in :attr:`Propagation.track_of_label` and ``not_found``).
    mask
        Bool array on the follow-up grid: the track's lesion at its last sighting, warped.
    intensity
        The lesion's intensities at its last sighting (:func:`intensity_prior` on that scan).
    """

    track_number: int
    mask: np.ndarray
    intensity: IntensityPrior


@dataclass(frozen=True)
class PropagationConfig:
    """Settings of :func:`propagate`; lengths in mm.

    Attributes
    ----------
    search_mm
        How far beyond the warped lesion the search region reaches (growth plus misregistration) ...
    search_fraction
        ... plus this fraction of the lesion's equivalent-sphere radius (large lesions grow by more mm).
    attach_mm
        A lesion-like component is the track's when it comes within this distance of the warped lesion.
    decay_mm
        Outside the warped lesion, a voxel's log prior odds of being lesion fall by one per ``decay_mm``: growth
        needs clear intensity evidence, a look-alike surround does not leak in (0: no spatial prior).
    shell_mm
        Width of the shell around the found region where its surround is measured for the confidence.
    smooth_mm
        Sigma of the Gaussian smoothing against noise before the voxels are classified, at most; a small lesion's
        is ``smooth_radius_fraction`` of its radius (from its last volume), but not under half a voxel per axis:
        a smoothing wide against the lesion moves its edge inwards (at 2 mm spacing, 8-12 mm lesions were found at
        0.78 of their volume with a 2 mm sigma; ``benchmarks/propagation.py``).
    smooth_radius_fraction
        See ``smooth_mm``.
    min_smooth_radius_vox
        A lesion whose radius is under this many voxels along an axis is not smoothed along it; under it along
        every axis, it is a lesion of a few voxels (``edge_hysteresis``, ``decay_radius_fraction``).
    open_mm
        Radius of the morphological opening that cuts thin bridges from the lesion into look-alike surround.
    min_volume_mm3
        A found region smaller than this is not a lesion.
    min_confidence
        Below this a track's lesion is not found (vanished, or too uncertain to propose).
    max_leak_fraction
        Share of a region's surface on the search boundary above which the threshold is raised (leakage).
    leak_clip_mm
        A region that still leaks is cut at this distance from the warped lesion (and its confidence lowered).
    max_texture_unsmoothed
        A lesion whose voxels vary beyond the noise (MAD-based sd: a rib's partial volume in a few of them is no
        texture) by more than this share of its contrast is smoothed whatever its size (a textured liver lesion
        of 10 voxels at 4 mm that doubled was found at 0.6 of its volume unsmoothed).
    edge_hysteresis
        For a lesion of a few voxels: the threshold is this share of the contrast (at most one noise sd) below its
        edge level on the warped lesion and above it off it (an unchanged lesion of 3 voxels, 80 HU in 15 HU
        noise, was found at 2-5 voxels without it, at 3-4 with it).
    decay_radius_fraction
        For a lesion of a few voxels: its spatial prior falls by one log-odds per this fraction of its radius
        when that is shorter than ``decay_mm`` (noise next to it is no growth).
    """

    search_mm: float = 10.0
    search_fraction: float = 0.5
    attach_mm: float = 3.0
    decay_mm: float = 3.0
    shell_mm: float = 5.0
    smooth_mm: float = 2.0
    smooth_radius_fraction: float = 0.2
    min_smooth_radius_vox: float = 2.0
    open_mm: float = 3.0
    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3
    min_confidence: float = 0.45
    max_leak_fraction: float = 0.2
    leak_clip_mm: float = 3.0
    max_texture_unsmoothed: float = 0.5
    edge_hysteresis: float = 0.15
    decay_radius_fraction: float = 1.0 / 3.0


@dataclass
class Propagation:
    """What :func:`propagate` found.

    Attributes
    ----------
    labels
        int32 on the follow-up grid: one label per found track (1..n, in the order of the priors), 0 elsewhere.
    track_of_label
        Label -> track number.
    confidence
        Label -> confidence in [0, 1].
    not_found
        Track number -> why it was not found (one short phrase).
    """

    labels: np.ndarray
    track_of_label: dict[int, int] = field(default_factory=dict)
    confidence: dict[int, float] = field(default_factory=dict)
    not_found: dict[int, str] = field(default_factory=dict)


def _voxel_volume(spacing_zyx: Sequence[float]) -> float:
    return float(np.prod(np.asarray(spacing_zyx, dtype=float)))


def _box(mask: np.ndarray, margin_vox: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin_vox`` per axis, clipped to the array."""
    idx = np.nonzero(mask)
    return tuple(
        slice(max(int(i.min()) - int(m), 0), min(int(i.max()) + int(m) + 1, n))
        for i, m, n in zip(idx, margin_vox, mask.shape, strict=True)
    )


def _margin(mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    return np.ceil(mm / np.asarray(spacing_zyx, dtype=float)).astype(int) + 1


def _distance_mm(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Distance (mm) of every voxel to ``mask`` (0 inside)."""
    return np.asarray(ndimage.distance_transform_edt(~mask, sampling=spacing_zyx), dtype=float)


def _robust(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based sd."""
    med = float(np.median(values))
    return med, _MAD_TO_SD * float(np.median(np.abs(values - med)))


def _filled_slices(body: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """``body`` in ``box`` with the holes of each axial (z) slice filled: a body mask thresholded above air leaves
    the lungs out, and a lung nodule's surround would be only its own partial-volume rim and the chest wall."""
    filled = np.stack([ndimage.binary_fill_holes(s) for s in np.asarray(body[box[0]], dtype=bool)])
    return np.asarray(filled[:, box[1], box[2]], dtype=bool)


def intensity_prior(
    image: np.ndarray,
    labels: np.ndarray,
    label: int,
    spacing_zyx: Sequence[float],
    *,
    shell_mm: float = 5.0,
    body: np.ndarray | None = None,
) -> IntensityPrior:
    """The intensities of lesion ``label`` of ``labels`` on ``image``, and of a ``shell_mm`` shell around it that
    starts beyond the voxels touching the lesion (its partial-volume rim); other lesions and, when ``body`` is
    given, voxels outside the body (its axial slices' holes filled: the lungs are inside) are left out.

    Raises
    ------
    MetatrackError
        When ``label`` has no voxel, or the arrays' shapes differ.
    """
    if image.shape != labels.shape or (body is not None and body.shape != image.shape):
        raise MetatrackError(f"intensity prior: image shape {image.shape} differs from the mask's {labels.shape}")
    lesion = labels == label
    if not lesion.any():
        raise MetatrackError(f"intensity prior: label {label} has no voxel in the mask")
    box = _box(lesion, _margin(shell_mm, spacing_zyx) + 1)
    img, les = np.asarray(image[box], dtype=float), lesion[box]
    # the voxels touching the lesion hold part of it (partial volume: at 4 mm a small lesion's first outer layer
    # is about a third lesion), so the surround's shell starts beyond them
    touching = ndimage.binary_dilation(les, structure=CONNECTIVITY_26)
    shell = (_distance_mm(touching, spacing_zyx) <= shell_mm) & ~touching & (labels[box] == 0)
    if body is not None:
        shell &= _filled_slices(body, box)
    inside = img[les]
    around = img[shell] if shell.any() else img[~les]
    if around.size == 0:
        around = inside
    surround, surround_sd = _robust(around)
    lesion_mean = float(np.median(inside))
    # the lesion's edge: the level that parts its outer voxels (partly lesion: more than half) from the voxels
    # touching it from outside (less than half) with as many of the two sets above it as the lesion has outer
    # voxels, so that a threshold there keeps the lesion's volume
    contrast = lesion_mean - surround
    outer = les & ~ndimage.binary_erosion(les)
    rim = touching & ~les & (labels[box] == 0)
    edge_level = 0.5
    if rim.any() and abs(contrast) > _EPS:
        k = int(outer.sum())
        offset = np.sign(contrast) * (img - surround)
        # a rim voxel past the highest edge level is a neighbour of the lesion's density (chest wall beside a
        # nodule, lung beside a hypodense liver lesion), not its edge
        rim &= offset < _EDGE_LEVELS[1] * abs(contrast)
        ranked = np.sort(np.concatenate([offset[outer], offset[rim]]))[::-1]
        edge = 0.5 * (ranked[k - 1] + ranked[min(k, ranked.size - 1)]) / abs(contrast)
        # through noise the rim's brightest voxels outrank the outer ones: the level is trusted by contrast-to-noise
        weight = float(
            np.clip((abs(contrast) / max(surround_sd, _EPS) - _EDGE_CNR[0]) / (_EDGE_CNR[1] - _EDGE_CNR[0]), 0.0, 1.0)
        )
        edge_level = float(np.clip(0.5 + weight * (edge - 0.5), _EDGE_LEVELS[0], _EDGE_LEVELS[1]))
    return IntensityPrior(
        lesion_mean=lesion_mean,
        lesion_sd=_robust(inside)[1],
        surround_mean=surround,
        surround_sd=surround_sd,
        volume_mm3=float(les.sum()) * _voxel_volume(spacing_zyx),
        edge_level=edge_level,
    )


@dataclass
class _Candidate:
    """One track's region in its search box, before the tracks' overlaps are resolved."""

    box: tuple[slice, ...]
    region: np.ndarray  # bool, in the box
    distance: np.ndarray  # mm to the warped lesion, in the box
    search: np.ndarray  # bool, the search region in the box
    noise: float  # sd of the smoothed follow-up's surround
    contrast: float  # the lesion's contrast on the smoothed follow-up (the two-class model's)
    clipped: bool  # leaked, and cut at leak_clip_mm from the warped lesion
    unsmoothed: bool  # a lesion of a few voxels, classified on the raw intensities


def _ball(radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """A ball of ``radius_mm`` as a structuring element on the grid (at least the 6-neighbourhood)."""
    r = np.maximum(np.floor(radius_mm / np.asarray(spacing_zyx, dtype=float)), 1).astype(int)
    grid = np.indices(tuple(2 * r + 1), dtype=float) - r[:, None, None, None]
    d = sum((grid[i] * spacing_zyx[i] / max(radius_mm, _EPS)) ** 2 for i in range(3))
    ball = np.asarray(d <= 1.0)
    for axis in range(3):  # the 6-neighbourhood, whatever the spacing
        ball[tuple(r[k] + (np.array([-1, 1]) if k == axis else 0) for k in range(3))] = True
    return ball


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _P_CLIP, 1.0 - _P_CLIP)
    return np.asarray(np.log(q / (1.0 - q)), dtype=float)


def _leak_fraction(region: np.ndarray, search: np.ndarray) -> float:
    """Share of ``region``'s surface voxels that lie on the search region's boundary."""
    if not region.any():
        return 0.0
    surface = region & ~ndimage.binary_erosion(region)
    rim = search & ~ndimage.binary_erosion(search, border_value=0)
    return float((surface & rim).sum()) / max(float(surface.sum()), 1.0)


def _attached(lesion_like: np.ndarray, distance: np.ndarray, attach_mm: float) -> np.ndarray:
    """The components of ``lesion_like`` that come within ``attach_mm`` of the warped lesion, holes filled."""
    comp, n = ndimage.label(lesion_like, structure=CONNECTIVITY_26)
    if n == 0:
        return np.zeros_like(lesion_like)
    keep = np.unique(comp[(distance <= attach_mm) & (comp > 0)])
    region = np.isin(comp, keep[keep > 0])
    return np.asarray(ndimage.binary_fill_holes(region), dtype=bool)


def _smooth(image: np.ndarray, spacing_zyx: Sequence[float], sigma_mm: float | np.ndarray) -> np.ndarray:
    """Gaussian smoothing of sigma ``sigma_mm`` (per axis when an array) against noise (a median filter keeps edges
    better but loses small and thin lesions: measured worse on the simulator)."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    sigma = np.broadcast_to(np.asarray(sigma_mm, dtype=float), spacing.shape) / spacing
    if not (sigma > 0).any():
        return np.asarray(image, dtype=float)
    return np.asarray(ndimage.gaussian_filter(np.asarray(image, dtype=float), sigma=sigma, mode="nearest"))


def _two_class(
    values: np.ndarray, intensity: IntensityPrior, min_voxels: float, *, measure_contrast: bool = True
) -> tuple[float, float, float]:
    """Surround level, lesion contrast and noise sd on the follow-up's (smoothed) search region: two-means steps
    seeded by the last sighting's levels. The contrast stays within ``_EM_RATIO`` x the prior's; with too few
    lesion-like voxels to measure it (a vanished lesion), or unless ``measure_contrast`` (a lesion of a few voxels:
    the noise past its threshold in the search region outnumbers it), it is the prior's."""
    prior_contrast = intensity.contrast
    sign = 1.0 if prior_contrast >= 0 else -1.0
    surround, contrast = intensity.surround_mean, prior_contrast
    for _ in range(_TWO_CLASS_STEPS):
        offset = sign * (values - surround)
        lesion_side = (offset > 0.5 * abs(contrast)) & (offset <= _BEYOND * abs(prior_contrast))
        if lesion_side.all():
            break
        surround = float(np.median(values[~lesion_side]))
        if measure_contrast and lesion_side.sum() >= max(min_voxels, 1.0) and prior_contrast != 0.0:
            ratio = (float(np.median(values[lesion_side])) - surround) / prior_contrast
            contrast = prior_contrast * float(np.clip(ratio, _EM_RATIO[0], _EM_RATIO[1]))
    # the noise from the half of the surround away from the lesion's side, which the lesion cannot contaminate,
    # within two contrasts of its level (bone or fat further away is another tissue, not noise)
    offset = sign * (values - surround)
    away = values[(offset <= 0) & (offset >= -_NOISE_WINDOW * abs(contrast))]
    noise = _MAD_TO_SD * float(np.median(np.abs((away if away.size >= 10 else values) - surround)))
    return surround, contrast, max(noise, 0.05 * abs(contrast), _EPS)


def _near_core(
    raw: np.ndarray, warped: np.ndarray, surround: float, intensity: IntensityPrior, spacing_zyx: Sequence[float]
) -> np.ndarray | None:
    """The voxels within _PV_RIM_MM (at least one voxel) of the lesion's core on the unsmoothed follow-up: where the
    lesion stands far above its own spread, a voxel between the surround's level and the lesion's that lies farther
    from the core is a third tissue (fat between a lung nodule and the chest wall), not the lesion's partial volume.
    The core is the voxels within _CORE_SDS of the lesion's level that connect to the warped lesion (a grown lesion's
    new part does; a fat voxel that noise lifted into the band mostly does not).

    The lesion's level and spread (the larger of the last sighting's and this one's) are measured on the warped
    lesion's voxels past half the last sighting's contrast (the search region's would count the third tissue in).
    None where the core's band reaches half the contrast (a faint or textured lesion: noise, not tissue, decides) or
    too few warped voxels are lesion-like to measure."""
    contrast = intensity.contrast
    sign = 1.0 if contrast >= 0 else -1.0
    offset = sign * (raw - surround)
    inside = warped & (offset > 0.5 * abs(contrast)) & (offset <= _BEYOND * abs(contrast))
    if inside.sum() < _TEXTURE_MIN_VOXELS:
        return None
    level, spread = _robust(offset[inside])
    band = _CORE_SDS * max(intensity.lesion_sd, spread)
    if band >= 0.5 * abs(contrast):
        return None
    comp, _ = ndimage.label(offset >= level - band)
    keep = np.unique(comp[warped & (comp > 0)])
    core = np.isin(comp, keep[keep > 0])
    steps = max(1, math.ceil(_PV_RIM_MM / min(float(s) for s in spacing_zyx)))
    return np.asarray(ndimage.binary_dilation(core, structure=CONNECTIVITY_26, iterations=steps), dtype=bool)


def _candidate(
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    prior: Prior,
    others: np.ndarray,
    probability: np.ndarray | None,
    config: PropagationConfig,
) -> _Candidate | str:
    """The track's lesion-like region near its warped lesion, or why there is none."""
    voxel = _voxel_volume(spacing_zyx)
    radius = (3.0 * prior.intensity.volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)
    reach = config.search_mm + config.search_fraction * radius
    box = _box(prior.mask, _margin(reach + config.smooth_mm, spacing_zyx))
    mask = prior.mask[box]
    raw = np.asarray(image[box], dtype=float)
    distance = _distance_mm(mask, spacing_zyx)
    search = distance <= reach
    if (search & ~others[box]).sum() < 10:
        return "no surround in the follow-up's field of view"
    # far beyond the lesion's level is another tissue (lung next to a hypodense liver lesion, bone), not lesion;
    # it takes the surround's level before smoothing, so that its blurred rim does not look like the lesion
    prior_c = prior.intensity.contrast
    sign = 1.0 if prior_c >= 0 else -1.0
    level0, _, noise0 = _two_class(raw[search & ~others[box]], prior.intensity, config.min_volume_mm3 / voxel)
    # three noise sds past the far level: the follow-up's noise, or the shell's sd when smaller (a shell across the
    # liver's edge has the sd of liver and fat together, which let fat beside a liver lesion pass for it)
    beyond = _BEYOND * abs(prior_c) + 3.0 * min(prior.intensity.surround_sd, noise0)
    other = sign * (raw - level0) > beyond
    spacing = np.asarray(spacing_zyx, dtype=float)
    # a lesion under about two voxels in radius is left unsmoothed along that axis: smoothing would spread it over
    # its neighbours, and its edge level was measured on the unsmoothed scan
    # ... unless its voxels vary by more than a share of its contrast beyond the noise (a textured lesion: its
    # texture, not its edge, decides voxel by voxel, and smoothing averages it)
    texture = math.sqrt(max(prior.intensity.lesion_sd**2 - noise0**2, 0.0))
    textured = texture > config.max_texture_unsmoothed * abs(prior_c) and mask.sum() >= _TEXTURE_MIN_VOXELS
    small = (radius < config.min_smooth_radius_vox * spacing) & (not textured)
    few_voxels = bool(small.all())
    sigma = np.where(small, 0.0, np.clip(config.smooth_radius_fraction * radius, 0.5 * spacing, config.smooth_mm))
    img = _smooth(np.where(other, level0, raw), spacing_zyx, sigma)
    near_core = _near_core(raw, mask, level0, prior.intensity, spacing_zyx) if not few_voxels else None
    surround, contrast, noise = _two_class(
        img[search & ~others[box] & ~other],
        prior.intensity,
        config.min_volume_mm3 / voxel,
        measure_contrast=not few_voxels,
    )
    logit_p = _logit(probability[box]) if probability is not None else None
    # a lesion of a few voxels is classified unsmoothed, voxel by voxel at the noise of one voxel, and most of its
    # voxels lie near its edge level, where noise decides their side: its spatial prior falls off by the lesion's
    # size (one log-odds per decay_radius_fraction of its radius, when that is shorter than decay_mm: a voxel's
    # worth of noise is no growth), and its threshold is lowered on the warped lesion and raised off it by a share
    # of the contrast (at most one noise sd: a nodule in lung has partial-volume voxels at every level, and noise
    # does not move them), so that a voxel near the edge level keeps its side (an unchanged lesion keeps its
    # volume) and one clearly past it changes side (growth, shrinkage); a larger lesion's edge is a thin share of
    # it, smoothed against noise
    decay = min(config.decay_mm, config.decay_radius_fraction * radius) if few_voxels else config.decay_mm
    # log prior odds of lesion: neutral on the warped lesion, falling off outside it (growth costs evidence)
    spatial = distance / decay if decay > 0 else np.zeros_like(distance)
    ball = _ball(config.open_mm, spacing_zyx)
    step = min(config.edge_hysteresis, noise / max(abs(contrast), _EPS)) if few_voxels else 0.0
    hysteresis = np.where(mask, -step, step)

    def region_at(level: float, c: float) -> np.ndarray:
        # two Gaussians of equal sd at surround and surround + c: the log-likelihood ratio is linear in intensity
        llr = c / noise**2 * (img - (surround + (level + hysteresis) * c)) - spatial
        if logit_p is not None:
            llr = llr + logit_p
        # another track's warped lesion is that track's (each voxel goes to the nearest warped lesion): left out
        # here, a lesion of the same density next to this one is no leak into a look-alike surround
        lesion_like = (llr > 0) & search & ~other & ~others[box]
        if near_core is not None:
            lesion_like &= near_core
        opened = _attached(ndimage.binary_opening(lesion_like, structure=ball), distance, config.attach_mm)
        if opened.sum() * voxel >= config.min_volume_mm3:
            # the opening cut the bridges; give back the rims it shaved off the lesion itself
            return np.asarray(opened | (lesion_like & ndimage.binary_dilation(opened, structure=ball)))
        return _attached(lesion_like, distance, config.attach_mm)

    # the edge level was measured unsmoothed: a smoothed lesion's edge is at half its contrast
    edge = prior.intensity.edge_level if few_voxels else 0.5
    region = region_at(edge, contrast)
    leak = _leak_fraction(region, search)
    for level in (lv for lv in _LEAK_LEVELS if lv > edge):
        if leak <= config.max_leak_fraction:
            break
        tighter = region_at(level, contrast)
        tighter_leak = _leak_fraction(tighter, search)
        if tighter.any() and tighter_leak < leak:
            region, leak = tighter, tighter_leak
    clipped = leak > config.max_leak_fraction
    if clipped:
        # a look-alike neighbour (an organ of the lesion's density) joined it: intensities cannot part them, so
        # the region is kept near the warped lesion, and the confidence says so
        region = _attached(region & (distance <= config.leak_clip_mm), distance, config.attach_mm)
    if not region.any():
        return "no lesion-like voxels"
    return _Candidate(box, region, distance, search, noise, contrast, clipped, few_voxels)


def _confidence(
    image: np.ndarray,
    region: np.ndarray,
    cand: _Candidate,
    prior: Prior,
    probability: np.ndarray | None,
    spacing_zyx: Sequence[float],
    config: PropagationConfig,
) -> tuple[float, str]:
    """The confidence of a found region and, when low, why."""
    img = np.asarray(image[cand.box], dtype=float)
    around = (cand.search | (cand.distance <= config.attach_mm + config.shell_mm)) & ~ndimage.binary_dilation(
        region, iterations=2
    )
    if around.sum() < 10:
        return 0.0, "no surround left around the region"
    level = float(np.median(img[around]))
    contrast = prior.intensity.contrast
    # the evidence: the region's contrast on the follow-up against the last sighting's (a look-alike of the
    # surround reaches only about half of it: the threshold) and against the surround's noise at the smoothing scale
    observed = float(np.median(img[region])) - level
    ratio = observed / contrast if contrast != 0.0 else 0.0
    # the contrast-to-noise of the region's and the lesion's contrast (the two-class model's, within [0.9, 1.5] x
    # the last sighting's; their geometric mean when the region's is larger): a faint lesion's region, cut from
    # noise at the threshold, shows the contrast of the noise it selected, and its edge is as uncertain as the
    # lesion is faint
    shown = min(abs(observed), math.sqrt(abs(observed * cand.contrast)))
    cnr = shown / cand.noise if ratio > 0 else 0.0
    if cand.unsmoothed and ratio > 0:
        # a lesion of a few voxels, unsmoothed: a region cut from noise shows about the contrast of a faint lesion,
        # so the contrast-to-noise is that of the warped lesion's voxels together (or of them and their neighbours,
        # against a misregistration of a voxel), which the threshold did not select
        # (each voxel counted at most 1.5 contrasts: lung beside a liver lesion is not the lesion's evidence)
        warped = prior.mask[cand.box]
        sign = 1.0 if contrast >= 0 else -1.0
        offsets = np.clip(sign * (img - level), -1.5 * abs(contrast), 1.5 * abs(contrast))
        cnr = max(
            float(offsets[w].mean()) / (cand.noise / math.sqrt(float(w.sum())))
            for w in (warped, ndimage.binary_dilation(warped, structure=CONNECTIVITY_26))
        )
    # a lesion of a few voxels that shrank keeps mostly partial-volume voxels: their median contrast is well under
    # the last sighting's (whose presence the warped lesion's contrast-to-noise above checks)
    none, full = _RATIO_FEW if cand.unsmoothed else (_RATIO_NONE, _RATIO_FULL)
    evidence = float(np.clip((ratio - none) / (full - none), 0.0, 1.0))
    none, full = _CNR_FEW if cand.unsmoothed else (_CNR_NONE, _CNR_FULL)
    evidence *= float(np.clip((cnr - none) / (full - none), 0.0, 1.0))
    if probability is not None:
        p = float(np.mean(probability[cand.box][region]))
        evidence = 1.0 - (1.0 - evidence) * (1.0 - p)
    size = float(region.sum()) * _voxel_volume(spacing_zyx) / max(prior.intensity.volume_mm3, _EPS)
    # consistency with the prior: lesions grow and shrink, but a speck where a large lesion was is more often
    # noise or texture than the lesion (shrinking is penalised more than growing)
    spread = _SHRINK_SPREAD if size < 1.0 else _GROW_SPREAD
    consistency = math.exp(-(math.log(size) ** 2) / (2.0 * math.log(spread) ** 2))
    leak = _CLIPPED_FACTOR if cand.clipped else 1.0
    conf = evidence * consistency * leak
    why = "leaks into a look-alike surround" if cand.clipped else "too little contrast with its surround"
    return float(np.clip(conf, 0.0, 1.0)), why


def propagate(
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    priors: Sequence[Prior],
    *,
    probability: np.ndarray | None = None,
    config: PropagationConfig = PropagationConfig(),
) -> Propagation:
    """Find every prior's lesion on the follow-up ``image`` (z, y, x) of voxel size ``spacing_zyx`` (mm).

    ``probability`` is an optional lesion probability map on the same grid (a segmentation model's output); it is
    combined with the intensity evidence voxel by voxel. Deterministic.

    Raises
    ------
    MetatrackError
        When a prior's mask or the probability map is not on the image's grid.
    """
    image = np.asarray(image, dtype=float)
    for prior in priors:
        if prior.mask.shape != image.shape:
            raise MetatrackError(
                f"propagation: track {prior.track_number}'s mask shape {prior.mask.shape} differs from the "
                f"follow-up's {image.shape}"
            )
    if probability is not None and probability.shape != image.shape:
        raise MetatrackError(f"propagation: probability shape {probability.shape} differs from {image.shape}")
    masks = [np.asarray(p.mask, dtype=bool) for p in priors]
    union = np.zeros(image.shape, dtype=bool)
    for m in masks:
        union |= m
    result = Propagation(labels=np.zeros(image.shape, dtype=np.int32))
    candidates: dict[int, _Candidate] = {}
    for i, prior in enumerate(priors):
        if not masks[i].any():
            result.not_found[prior.track_number] = "outside the follow-up's field of view"
            continue
        others = union & ~masks[i]
        found = _candidate(
            image, spacing_zyx, Prior(prior.track_number, masks[i], prior.intensity), others, probability, config
        )
        if isinstance(found, str):
            result.not_found[prior.track_number] = found
        else:
            candidates[i] = found
    # overlapping candidates: each voxel goes to the nearest warped lesion (ties to the earlier prior)
    owner = np.full(image.shape, -1, dtype=np.int64)
    best = np.full(image.shape, np.inf)
    for i, cand in candidates.items():
        b_owner, b_best = owner[cand.box], best[cand.box]
        take = cand.region & (cand.distance < b_best)
        b_owner[take], b_best[take] = i, cand.distance[take]
    label = 0
    voxel = _voxel_volume(spacing_zyx)
    for i, cand in candidates.items():
        prior = priors[i]
        region = cand.region & (owner[cand.box] == i)
        region = _attached(region, cand.distance, config.attach_mm)
        if region.sum() * voxel < config.min_volume_mm3:
            result.not_found[prior.track_number] = "no lesion-like region of the minimum volume"
            continue
        conf, why = _confidence(image, region, cand, prior, probability, spacing_zyx, config)
        if conf < config.min_confidence:
            result.not_found[prior.track_number] = f"{why} (confidence {conf:.2f})"
            continue
        label += 1
        result.labels[cand.box][region] = label
        result.track_of_label[label] = prior.track_number
        result.confidence[label] = round(conf, 4)
    return result

"""Matching the lesions of a new follow-up scan against all of a patient's open tracks.

Pure computation. The caller brings everything into one common grid first: each track's most recent lesion
mask (warped onto the grid) and centroid (mapped into the same frame), and the new scan's lesion label map and
lesions. Matching against every open track, not only the previous scan's, lets a lesion missed at one visit be
re-linked when it is seen again.

Algorithm
---------
1. Candidates: a track and a lesion are candidates when the track's mask, dilated by ``dilation_mm``, overlaps
   the lesion (overlap counted relative to the smaller of the two), or when their centroids lie closer than
   ``max_distance_factor`` times the larger equivalent-sphere radius plus ``distance_slack_mm``.
2. One-to-one assignment (``scipy.optimize.linear_sum_assignment``) on ``1 - score``, where either side may stay
   unmatched at ``unmatched_cost``. The score blends the dilated overlap over the geometric mean of the two
   sizes (so a small new lesion inside a large lesion's old region does not take that lesion's track) and the
   normalised closeness (``overlap_weight``), minus ``gap_penalty`` per visit a track was missed.
3. Merges: an unassigned track whose own (undilated) mask lies mostly (``merge_min_overlap``) inside an assigned
   lesion ends there ("merged"); of the tracks that meet in one lesion the largest (by last volume) continues.
4. Splits: an unassigned lesion lying mostly (``split_min_overlap``) inside the undilated mask of a continuing
   track, or largely (``split_min_band_overlap``) inside its dilated mask when it is not tiny beside the parent
   and completes the parent's continuation (the pieces together are centred nearer the parent's centroid),
   starts a new track ("split", parent in ``related_track_id``); the largest of the pieces continues.
5. Left-over tracks are "vanished" (they stay open and may be re-linked later); left-over lesions are "new".
6. When tracks or lesions are left over, a second pass moves every track by the misalignment seen at nearby
   confidently matched lesions (``refine_sigma_mm``) and is kept if it leaves fewer over.

Known limit: a small lesion that vanishes where a neighbour grows over its old place is reported as merged.

Inputs are sorted by track id and lesion label and ties break on those, so re-processing the same scan gives
the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from tracker.errors import MetatrackError
from tracker.lesions import Geometry, MeasuredLesion
from tracker.records import ChangeClass

# Cost of a pair that is not a candidate: high enough that the assignment never prefers it.
_NOT_CANDIDATE_COST = 1e3


@dataclass(frozen=True)
class MatchConfig:
    """Matching parameters (lengths in mm, overlaps and weights in [0, 1])."""

    dilation_mm: float = 2.0
    max_distance_factor: float = 1.5
    distance_slack_mm: float = 5.0
    overlap_weight: float = 0.7
    min_overlap: float = 0.1
    merge_min_overlap: float = 0.5
    split_min_overlap: float = 0.5
    split_min_band_overlap: float = 0.35
    split_min_volume_fraction: float = 0.1
    split_centroid_gain_mm: float = 1.0
    unmatched_cost: float = 0.5
    gap_penalty: float = 0.02
    refine_sigma_mm: float = 30.0
    refine_max_mm: float = 10.0
    anchor_volume_ratio: float = 2.0

    def __post_init__(self) -> None:
        nonnegative = ("dilation_mm", "max_distance_factor", "distance_slack_mm", "gap_penalty", "unmatched_cost")
        for name in (*nonnegative, "refine_sigma_mm", "refine_max_mm", "split_centroid_gain_mm"):
            if getattr(self, name) < 0:
                raise MetatrackError(f"MatchConfig.{name}: must be >= 0, got {getattr(self, name)}")
        names = ("overlap_weight", "min_overlap", "merge_min_overlap", "split_min_overlap", "split_min_band_overlap")
        for name in (*names, "split_min_volume_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise MetatrackError(f"MatchConfig.{name}: must be in [0, 1], got {getattr(self, name)}")


@dataclass
class TrackState:
    """What matching needs to know of one open track, in the common frame.

    ``last_label_mask`` is the boolean mask of the track's most recent lesion on the common grid (None when
    only the centroid is known); ``last_seen_index`` is the visit index where the track was last seen.
    """

    track_id: int
    last_label_mask: np.ndarray | None
    centroid_lps: Sequence[float]
    volume_mm3: float
    last_seen_index: int


@dataclass(frozen=True)
class Link:
    """One outcome of matching.

    ``track_id`` is None for a new track the caller still has to number. ``related_track_id`` is the parent
    track for "split" and the continuing track for "merged". ``score`` is the assignment score for
    "persistent", the overlap for "merged"/"split", and 0 for "new"/"vanished".
    """

    track_id: int | None
    lesion_label: int | None
    change: ChangeClass
    score: float
    related_track_id: int | None = None


@dataclass
class MatchResult:
    """Links of one visit; every lesion appears in exactly one link with a lesion label.

    ``label_to_track`` maps each lesion label to its track id (None for new tracks when no ``next_track_id``
    was given). ``merges`` holds (track ids, continuing one first; lesion label); ``splits`` holds
    (parent track id; lesion labels, continuing one first).
    """

    links: list[Link]
    label_to_track: dict[int, int | None]
    merges: list[tuple[tuple[int, ...], int]] = field(default_factory=list)
    splits: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)

    def by_change(self, change: ChangeClass) -> list[Link]:
        """Links of one change class."""
        return [link for link in self.links if link.change == change]


def _structuring_element(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Ellipsoidal structuring element of physical radius ``radius_mm`` on a grid of ``spacing`` (z, y, x)."""
    radii = [int(np.floor(radius_mm / s)) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    dist2 = sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True))
    return np.asarray(dist2 <= radius_mm**2 + 1e-9)


@dataclass
class _Overlap:
    """Voxel counts shared by every track (rows) and lesion (columns).

    ``dilated``: lesion voxels inside the track mask dilated by ``dilation_mm``; ``raw``: inside the mask itself.
    """

    dilated: np.ndarray
    raw: np.ndarray
    track_voxels: np.ndarray
    lesion_voxels: np.ndarray

    def of_smaller(self, counts: np.ndarray) -> np.ndarray:
        """Shared voxels relative to the smaller of track and lesion, clipped to 1."""
        smaller = np.maximum(np.minimum(self.track_voxels[:, None], self.lesion_voxels[None, :]), 1)
        return np.minimum(counts / smaller, 1.0)

    def of_track(self, counts: np.ndarray) -> np.ndarray:
        """Shared voxels relative to the track's voxels, clipped to 1."""
        return np.minimum(counts / np.maximum(self.track_voxels[:, None], 1), 1.0)

    def of_lesion(self, counts: np.ndarray) -> np.ndarray:
        """Shared voxels relative to the lesion's voxels, clipped to 1."""
        return np.minimum(counts / np.maximum(self.lesion_voxels[None, :], 1), 1.0)

    def cosine(self) -> np.ndarray:
        """Dilated overlap over the geometric mean of the two sizes: near 1 only for alike, coinciding pairs."""
        norm = np.sqrt(np.maximum(self.track_voxels[:, None] * self.lesion_voxels[None, :], 1))
        return np.minimum(self.dilated / norm, 1.0)


def _overlaps(
    tracks: Sequence[TrackState],
    new_labels: np.ndarray,
    lesion_labels: np.ndarray,
    spacing: Sequence[float],
    cfg: MatchConfig,
    geometry: Geometry | None,
) -> _Overlap:
    """Shared voxel counts of each (dilated) track mask with each lesion."""
    max_label = int(max(new_labels.max(initial=0), lesion_labels.max(initial=0)))
    lesion_voxels = np.bincount(new_labels.ravel(), minlength=max_label + 1)[lesion_labels].astype(float)
    struct = _structuring_element(cfg.dilation_mm, spacing)
    pad = np.array(struct.shape) // 2
    shape = (len(tracks), len(lesion_labels))
    out = _Overlap(np.zeros(shape), np.zeros(shape), np.zeros(len(tracks)), lesion_voxels)
    for row, track in enumerate(tracks):
        if track.last_label_mask is None:
            # Only a centroid: it counts as a one-voxel track where it falls.
            out.track_voxels[row] = 1.0
            if geometry is None:
                continue
            index = np.round(geometry.physical_to_index(track.centroid_lps)[0]).astype(int)
            if np.all(index >= 0) and np.all(index < new_labels.shape):
                hit = lesion_labels == new_labels[tuple(index)]
                out.dilated[row, hit] = out.raw[row, hit] = 1.0
            continue
        mask = np.asarray(track.last_label_mask, dtype=bool)
        if mask.shape != new_labels.shape:
            raise MetatrackError(
                f"track {track.track_id}: mask shape {mask.shape} differs from new_labels {new_labels.shape}"
            )
        boxes = ndimage.find_objects(mask.astype(np.uint8))
        if not boxes or boxes[0] is None:
            continue
        box = tuple(
            slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(boxes[0], pad, mask.shape, strict=True)
        )
        crop, labels_crop = mask[box], new_labels[box]
        dilated = ndimage.binary_dilation(crop, structure=struct)
        out.track_voxels[row] = float(crop.sum())
        out.dilated[row] = np.bincount(labels_crop[dilated].ravel(), minlength=max_label + 1)[lesion_labels]
        out.raw[row] = np.bincount(labels_crop[crop].ravel(), minlength=max_label + 1)[lesion_labels]
    return out


def _assign(cost: np.ndarray, unmatched_cost: float) -> dict[int, int]:
    """Minimum-cost one-to-one matching where any track or lesion may stay unmatched at ``unmatched_cost``.

    Returns lesion column -> track row. Pairs at ``_NOT_CANDIDATE_COST`` are never returned.
    """
    n_t, n_l = cost.shape
    if n_t == 0 or n_l == 0:
        return {}
    big = np.full((n_t + n_l, n_l + n_t), _NOT_CANDIDATE_COST)
    big[:n_t, :n_l] = cost
    big[np.arange(n_t), n_l + np.arange(n_t)] = unmatched_cost  # track r left unmatched
    big[n_t + np.arange(n_l), np.arange(n_l)] = unmatched_cost  # lesion c left unmatched
    big[n_t:, n_l:] = 0.0
    rows, cols = linear_sum_assignment(big)
    return {
        int(c): int(r)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
        if r < n_t and c < n_l and cost[r, c] < _NOT_CANDIDATE_COST
    }


def _mask_centroid(mask: np.ndarray) -> np.ndarray | None:
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return None
    offset = np.array([b.start for b in boxes[0]], dtype=float)
    return np.argwhere(mask[boxes[0]]).mean(axis=0) + offset


def _shifted(mask: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``mask`` moved by a whole number of voxels (z, y, x); what leaves the grid is dropped."""
    out = np.zeros_like(mask)
    src = tuple(slice(max(0, -d), n - max(0, d)) for d, n in zip(shift, mask.shape, strict=True))
    dst = tuple(slice(max(0, d), n - max(0, -d)) for d, n in zip(shift, mask.shape, strict=True))
    out[dst] = mask[src]
    return out


def _locally_corrected(
    tracks: list[TrackState],
    lesions: list[MeasuredLesion],
    new_labels: np.ndarray,
    first: MatchResult,
    cfg: MatchConfig,
) -> list[TrackState] | None:
    """Tracks moved by the residual misalignment seen at confidently matched lesions, or None if none is seen.

    Anchors are first-pass persistent pairs of alike volume (ratio within ``anchor_volume_ratio``) outside any
    merge or split; an anchor's misalignment is the shift between its track mask's and its lesion's centroids.
    Every track moves by the Gaussian-weighted (``refine_sigma_mm``) mean misalignment of the anchors, weights
    relative to the nearest anchor, rounded to whole voxels, when that is at most ``refine_max_mm``.
    """
    by_id = {t.track_id: t for t in tracks}
    by_label = {les.label: les for les in lesions}
    in_events = {label for _, label in first.merges} | {label for _, labels in first.splits for label in labels}
    anchor_pos, shift_idx, shift_mm = [], [], []
    for link in first.links:
        if link.change != ChangeClass.PERSISTENT or link.lesion_label is None or link.lesion_label in in_events:
            continue
        assert link.track_id is not None  # persistent links always carry an existing track's id
        track, lesion = by_id[link.track_id], by_label[link.lesion_label]
        ratio = lesion.volume_mm3 / max(track.volume_mm3, 1e-9)
        if track.last_label_mask is None or not 1 / cfg.anchor_volume_ratio <= ratio <= cfg.anchor_volume_ratio:
            continue
        t_idx = _mask_centroid(np.asarray(track.last_label_mask, dtype=bool))
        l_idx = _mask_centroid(new_labels == lesion.label)
        if t_idx is None or l_idx is None:
            continue
        anchor_pos.append(np.asarray(track.centroid_lps, dtype=float))
        shift_idx.append(l_idx - t_idx)
        shift_mm.append(np.asarray(lesion.centroid_lps, dtype=float) - anchor_pos[-1])
    if not anchor_pos:
        return None
    pos, d_idx, d_mm = np.array(anchor_pos), np.array(shift_idx), np.array(shift_mm)
    corrected, moved = [], False
    for track in tracks:
        d2 = ((pos - np.asarray(track.centroid_lps, dtype=float)) ** 2).sum(axis=1)
        w = np.exp(-(d2 - d2.min()) / (2.0 * cfg.refine_sigma_mm**2))
        w /= w.sum()
        step_mm = w @ d_mm
        step = np.rint(w @ d_idx).astype(int)
        if track.last_label_mask is None or not np.any(step) or np.linalg.norm(step_mm) > cfg.refine_max_mm:
            corrected.append(track)
            continue
        moved = True
        corrected.append(
            TrackState(
                track.track_id,
                _shifted(np.asarray(track.last_label_mask, dtype=bool), step),
                tuple(np.asarray(track.centroid_lps, dtype=float) + step_mm),
                track.volume_mm3,
                track.last_seen_index,
            )
        )
    return corrected if moved else None


def _completes_parent(parent: TrackState, piece: MeasuredLesion, other: MeasuredLesion, cfg: MatchConfig) -> bool:
    """Whether ``other`` is the rest of ``parent`` next to its continuation ``piece``: not tiny beside it, and
    the two together centred at least ``split_centroid_gain_mm`` closer to the parent's last centroid."""
    if other.volume_mm3 < cfg.split_min_volume_fraction * parent.volume_mm3:
        return False
    centre = np.asarray(parent.centroid_lps, dtype=float)
    a, b = np.asarray(piece.centroid_lps), np.asarray(other.centroid_lps)
    both = (piece.volume_mm3 * a + other.volume_mm3 * b) / max(piece.volume_mm3 + other.volume_mm3, 1e-9)
    return bool(np.linalg.norm(centre - both) + cfg.split_centroid_gain_mm <= np.linalg.norm(centre - a))


def _equivalent_radius(volume_mm3: np.ndarray) -> np.ndarray:
    return np.cbrt(3.0 * np.maximum(volume_mm3, 0.0) / (4.0 * np.pi))


def match_lesions(
    tracks: Sequence[TrackState],
    new_labels: np.ndarray,
    new_lesions: Sequence[MeasuredLesion],
    spacing: Sequence[float],
    cfg: MatchConfig | None = None,
    *,
    visit_index: int | None = None,
    next_track_id: int | None = None,
    geometry: Geometry | None = None,
) -> MatchResult:
    """Link the lesions of a new scan to the patient's open tracks.

    Parameters
    ----------
    tracks
        Every open track of the patient (including ones missed at recent visits), in the common frame.
    new_labels
        Lesion label map of the new scan on the common grid (z, y, x).
    new_lesions
        The new scan's lesions; their ``centroid_lps`` must be in the common frame.
    spacing
        Voxel size (z, y, x) of the common grid, mm.
    cfg
        Matching parameters; defaults when None.
    visit_index
        Index of the new visit; with it, tracks missed at earlier visits score ``gap_penalty`` less per visit.
    next_track_id
        When given, new tracks (new and split lesions) are numbered from it in lesion-label order; otherwise
        their ``track_id`` is None for the caller to allocate.
    geometry
        Geometry of the common grid; needed only to place tracks that have a centroid but no mask.
    """
    cfg = cfg or MatchConfig()
    new_labels = np.asarray(new_labels)
    if new_labels.ndim != 3:
        raise MetatrackError(f"new_labels: expected a 3D (z, y, x) array, got shape {new_labels.shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise MetatrackError(f"spacing: expected 3 positive values (z, y, x) in mm, got {tuple(spacing)}")
    tracks = sorted(tracks, key=lambda t: t.track_id)
    lesions = sorted(new_lesions, key=lambda les: les.label)
    track_ids = [t.track_id for t in tracks]
    labels = np.array([les.label for les in lesions], dtype=np.int64)
    if len(set(track_ids)) != len(track_ids):
        raise MetatrackError(f"tracks: duplicate track ids in {track_ids}")
    if len(set(labels.tolist())) != len(labels):
        raise MetatrackError(f"new_lesions: duplicate lesion labels in {labels.tolist()}")
    result = _match_once(tracks, lesions, labels, new_labels, spacing, cfg, visit_index, next_track_id, geometry)
    unexplained = len(result.by_change(ChangeClass.VANISHED)) + len(result.by_change(ChangeClass.NEW))
    if cfg.refine_sigma_mm > 0 and unexplained:
        # Left-over tracks and lesions may be residual misalignment: retry with tracks moved by the local
        # misalignment of confidently matched lesions, and keep the retry only if it explains more.
        corrected = _locally_corrected(tracks, lesions, new_labels, result, cfg)
        if corrected is not None:
            retry = _match_once(
                corrected, lesions, labels, new_labels, spacing, cfg, visit_index, next_track_id, geometry
            )
            if len(retry.by_change(ChangeClass.VANISHED)) + len(retry.by_change(ChangeClass.NEW)) < unexplained:
                result = retry
    return result


def _match_once(
    tracks: list[TrackState],
    lesions: list[MeasuredLesion],
    labels: np.ndarray,
    new_labels: np.ndarray,
    spacing: Sequence[float],
    cfg: MatchConfig,
    visit_index: int | None,
    next_track_id: int | None,
    geometry: Geometry | None,
) -> MatchResult:
    """One matching pass on sorted, validated inputs (see :func:`match_lesions`)."""
    track_ids = [t.track_id for t in tracks]
    n_t, n_l = len(tracks), len(lesions)

    overlap = _overlaps(tracks, new_labels, labels, spacing, cfg, geometry)
    score = np.zeros((n_t, n_l))
    candidate = np.zeros((n_t, n_l), dtype=bool)
    if n_t and n_l:
        t_cent = np.array([np.asarray(t.centroid_lps, dtype=float) for t in tracks])
        l_cent = np.array([les.centroid_lps for les in lesions], dtype=float)
        t_rad = _equivalent_radius(np.array([t.volume_mm3 for t in tracks], dtype=float))
        l_rad = _equivalent_radius(np.array([les.volume_mm3 for les in lesions], dtype=float))
        limit = cfg.max_distance_factor * np.maximum(t_rad[:, None], l_rad[None, :]) + cfg.distance_slack_mm
        closeness = 1.0 - cdist(t_cent, l_cent) / np.maximum(limit, 1e-9)
        candidate = (overlap.of_smaller(overlap.dilated) >= cfg.min_overlap) | (closeness >= 0.0)
        score = cfg.overlap_weight * overlap.cosine() + (1.0 - cfg.overlap_weight) * np.clip(closeness, 0.0, 1.0)
        if visit_index is not None:
            missed = np.array([max(0, visit_index - t.last_seen_index - 1) for t in tracks], dtype=float)
            score = score - cfg.gap_penalty * missed[:, None]
    track_of_lesion = _assign(np.where(candidate, 1.0 - score, _NOT_CANDIDATE_COST), cfg.unmatched_cost)
    assigned_tracks = set(track_of_lesion.values())

    # Merges: unassigned tracks whose own (undilated) mask lies mostly in an assigned lesion.
    in_lesion = overlap.of_track(overlap.raw)
    merge_groups: dict[int, list[int]] = {}
    for r in range(n_t):
        if r in assigned_tracks or n_l == 0:
            continue
        c = int(np.argmax(in_lesion[r]))
        if in_lesion[r, c] >= cfg.merge_min_overlap and c in track_of_lesion:
            merge_groups.setdefault(c, [track_of_lesion[c]]).append(r)
    merged: dict[int, tuple[int, int]] = {}  # track row -> (lesion column, continuing track row)
    merges: list[tuple[tuple[int, ...], int]] = []
    for c, rows_in in sorted(merge_groups.items()):
        keep = min(rows_in, key=lambda r: (-tracks[r].volume_mm3, tracks[r].track_id))
        track_of_lesion[c] = keep
        others = sorted((r for r in rows_in if r != keep), key=lambda r: tracks[r].track_id)
        for r in others:
            merged[r] = (c, keep)
        merges.append(((track_ids[keep], *(track_ids[r] for r in others)), int(labels[c])))
    lesion_of_track = {r: c for c, r in track_of_lesion.items()}

    # Splits: unassigned lesions lying mostly inside a continuing track's (undilated) mask, or (tolerating some
    # misalignment) largely inside its dilated mask when adding them moves the track's continuation towards
    # the track's last centroid.
    in_track = overlap.of_lesion(overlap.raw)
    in_band = overlap.of_lesion(overlap.dilated)
    split_groups: dict[int, list[int]] = {}
    for c in range(n_l):
        if c in track_of_lesion or n_t == 0:
            continue
        r = int(np.argmax(in_track[:, c]))
        if not (in_track[r, c] >= cfg.split_min_overlap and r in lesion_of_track):
            r = int(np.argmax(in_band[:, c]))
            if not (
                in_band[r, c] >= cfg.split_min_band_overlap
                and r in lesion_of_track
                and _completes_parent(tracks[r], lesions[lesion_of_track[r]], lesions[c], cfg)
            ):
                continue
        split_groups.setdefault(r, [lesion_of_track[r]]).append(c)
    split_from: dict[int, int] = {}  # lesion column -> parent track row
    splits: list[tuple[int, tuple[int, ...]]] = []
    for r, cols_in in sorted(split_groups.items(), key=lambda item: track_ids[item[0]]):
        keep = min(cols_in, key=lambda c: (-lesions[c].volume_mm3, lesions[c].label))
        del track_of_lesion[lesion_of_track[r]]
        track_of_lesion[keep] = r
        lesion_of_track[r] = keep
        others = sorted(c for c in cols_in if c != keep)
        for c in others:
            split_from[c] = r
        splits.append((track_ids[r], (int(labels[keep]), *(int(labels[c]) for c in others))))

    links: list[Link] = []
    label_to_track: dict[int, int | None] = {}
    next_id = next_track_id
    for c in range(n_l):
        label = int(labels[c])
        if c in track_of_lesion:
            r = track_of_lesion[c]
            label_to_track[label] = track_ids[r]
            links.append(Link(track_ids[r], label, ChangeClass.PERSISTENT, float(score[r, c])))
            continue
        new_id = next_id
        if next_id is not None:
            next_id += 1
        label_to_track[label] = new_id
        if c in split_from:
            r = split_from[c]
            links.append(Link(new_id, label, ChangeClass.SPLIT, float(in_track[r, c]), related_track_id=track_ids[r]))
        else:
            links.append(Link(new_id, label, ChangeClass.NEW, 0.0))
    for r in range(n_t):
        if r in merged:
            c, keep = merged[r]
            links.append(
                Link(
                    track_ids[r],
                    int(labels[c]),
                    ChangeClass.MERGED,
                    float(in_lesion[r, c]),
                    related_track_id=track_ids[keep],
                )
            )
        elif r not in lesion_of_track:
            links.append(Link(track_ids[r], None, ChangeClass.VANISHED, 0.0))
    return MatchResult(links=links, label_to_track=label_to_track, merges=merges, splits=splits)

"""Matching lesions to tracks on hand-built label maps with known lesion identities."""

import numpy as np
import pytest

from tracker.lesions import Geometry, MeasuredLesion, label_lesions, measure_lesions
from tracker.matching import MatchConfig, TrackState, match_lesions
from tracker.records import ChangeClass

SHAPE = (24, 64, 64)
GEOMETRY = Geometry(origin=(-30.0, 12.0, 5.0), spacing=(1.0, 1.0, 2.0))
SPACING = GEOMETRY.spacing_zyx


def _ball(centre_zyx: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    zz, yy, xx = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    cz, cy, cx = centre_zyx
    d2 = ((zz - cz) * SPACING[0]) ** 2 + ((yy - cy) * SPACING[1]) ** 2 + ((xx - cx) * SPACING[2]) ** 2
    return d2 <= radius_mm**2


def _label_map(objects: dict[int, np.ndarray]) -> np.ndarray:
    labels = np.zeros(SHAPE, dtype=np.int32)
    for label, region in objects.items():
        labels[region] = label
    return labels


def _lesions(labels: np.ndarray) -> list[MeasuredLesion]:
    return measure_lesions(labels, GEOMETRY)


def _tracks(labels: np.ndarray, label_to_track: dict[int, int], seen: int) -> list[TrackState]:
    return [
        TrackState(label_to_track[les.label], labels == les.label, les.centroid_lps, les.volume_mm3, seen)
        for les in _lesions(labels)
    ]


# Baseline: six lesions, tracks 1..6.
BASE = {
    1: _ball((5, 10, 10), 4.0),  # A: persists (moves one voxel)
    2: _ball((5, 50, 10), 4.0),  # B: vanishes
    3: _ball((12, 30, 27), 3.5),  # C: merges with D
    4: _ball((12, 30, 37), 5.0),  # D (larger): continues the merged lesion
    5: _ball((18, 50, 45), 7.0),  # E: splits in two
    6: _ball((18, 12, 48), 4.0),  # F: persists
}
FOLLOW = {
    1: _ball((5, 11, 10), 4.0),  # A
    2: _ball((12, 30, 32), 9.0) | BASE[3] | BASE[4],  # C+D merged
    3: _ball((18, 45, 45), 4.5) & (np.arange(SHAPE[1])[None, :, None] < 48),  # E, smaller piece
    4: _ball((18, 55, 45), 5.0) & (np.arange(SHAPE[1])[None, :, None] > 49),  # E, larger piece
    5: _ball((18, 12, 48), 4.0),  # F
    6: _ball((3, 40, 55), 3.5),  # G: new
}


def _run(**kwargs):  # type: ignore[no-untyped-def]
    base = _label_map(BASE)
    follow = _label_map(FOLLOW)
    tracks = _tracks(base, {k: k for k in BASE}, seen=0)
    return match_lesions(tracks, follow, _lesions(follow), SPACING, MatchConfig(), visit_index=1, **kwargs)


def test_change_classes_of_a_known_scenario() -> None:
    result = _run(next_track_id=7)
    changes = {(link.track_id, link.lesion_label): link.change for link in result.links}
    assert changes == {
        (1, 1): "persistent",
        (4, 2): "persistent",
        (3, 2): "merged",
        (5, 4): "persistent",
        (7, 3): "split",
        (6, 5): "persistent",
        (8, 6): "new",
        (2, None): "vanished",
    }
    # the classes are ChangeClass members (str values: they compare and serialise as the strings above)
    assert all(type(link.change) is ChangeClass for link in result.links)
    assert ChangeClass(result.links[0].change) is result.links[0].change
    assert result.merges == [((4, 3), 2)]
    assert result.splits == [(5, (4, 3))]
    assert result.label_to_track == {1: 1, 2: 4, 3: 7, 4: 5, 5: 6, 6: 8}
    related = {link.change: link.related_track_id for link in result.links if link.change in ("merged", "split")}
    assert related == {"merged": 4, "split": 5}


def test_new_track_ids_left_to_caller_by_default() -> None:
    result = _run()
    assert result.label_to_track[6] is None and result.label_to_track[3] is None
    assert [link.change for link in result.links if link.track_id is None] == ["split", "new"]


def test_deterministic_and_independent_of_input_order() -> None:
    base = _label_map(BASE)
    follow = _label_map(FOLLOW)
    tracks = _tracks(base, {k: k for k in BASE}, seen=0)
    lesions = _lesions(follow)
    first = match_lesions(tracks, follow, lesions, SPACING, visit_index=1, next_track_id=7)
    again = match_lesions(tracks[::-1], follow, lesions[::-1], SPACING, visit_index=1, next_track_id=7)
    assert first == again


def test_lesion_missed_at_visit_2_relinks_at_visit_3() -> None:
    v1 = _label_map({1: _ball((8, 20, 20), 5.0), 2: _ball((16, 45, 40), 5.0)})
    v2 = _label_map({1: _ball((8, 21, 20), 5.0)})  # lesion of track 2 not seen
    v3 = _label_map({1: _ball((8, 21, 21), 5.0), 2: _ball((16, 46, 40), 5.5)})
    tracks = _tracks(v1, {1: 1, 2: 2}, seen=0)
    r2 = match_lesions(tracks, v2, _lesions(v2), SPACING, visit_index=1, next_track_id=3)
    assert r2.label_to_track == {1: 1}
    assert [(link.track_id, link.change) for link in r2.by_change("vanished")] == [(2, "vanished")]
    # The caller keeps track 2 open with its visit-1 mask and updates track 1 from visit 2.
    track1 = _tracks(v2, {1: 1}, seen=1)
    track2 = [t for t in tracks if t.track_id == 2]
    r3 = match_lesions(track1 + track2, v3, _lesions(v3), SPACING, visit_index=2, next_track_id=3)
    assert r3.label_to_track == {1: 1, 2: 2}
    assert {link.change for link in r3.links} == {"persistent"}


def test_centroid_only_track_and_distance_candidates() -> None:
    v0 = _label_map({1: _ball((10, 30, 30), 5.0)})
    (lesion0,) = _lesions(v0)
    # Shift by 6 mm in x (3 voxels of 2 mm): no mask given, so only the centroid can link it.
    v1 = _label_map({1: _ball((10, 30, 33), 5.0), 2: _ball((10, 30, 55), 3.0)})
    track = TrackState(9, None, lesion0.centroid_lps, lesion0.volume_mm3, 0)
    result = match_lesions([track], v1, _lesions(v1), SPACING, geometry=GEOMETRY)
    assert result.label_to_track == {1: 9, 2: None}
    link = next(link for link in result.links if link.track_id == 9)
    assert link.change == "persistent" and 0 < link.score < 1


def test_far_lesion_is_new_not_matched() -> None:
    v0 = _label_map({1: _ball((10, 10, 10), 3.0)})
    v1 = _label_map({1: _ball((10, 50, 50), 3.0)})
    result = match_lesions(_tracks(v0, {1: 1}, 0), v1, _lesions(v1), SPACING)
    assert sorted((link.track_id, link.lesion_label, link.change) for link in result.links if link.track_id) == [
        (1, None, "vanished")
    ]
    assert result.by_change("new")[0].lesion_label == 1


def test_binary_mask_path_end_to_end() -> None:
    mask = (BASE[1] | BASE[6]).astype(np.uint8)
    labels = label_lesions(mask, GEOMETRY)
    tracks = _tracks(labels, {1: 1, 2: 2}, 0)
    result = match_lesions(tracks, labels, _lesions(labels), SPACING)
    assert result.label_to_track == {1: 1, 2: 2}
    assert all(link.score == pytest.approx(1.0) for link in result.links)


def test_tiny_new_lesion_beside_a_merge_does_not_take_the_large_track() -> None:
    # A large and a small lesion merge; a tiny new lesion appears in the large lesion's dilation band. Counting
    # only candidate pairs would give the large track to the tiny lesion and the merged lesion to the small one.
    v0 = _label_map({1: _ball((12, 32, 20), 10.0), 2: _ball((12, 32, 35), 3.0)})
    merged = _ball((12, 32, 20), 10.5) | _ball((12, 32, 35), 4.0) | _ball((12, 32, 29), 4.0)
    tiny = np.zeros(SHAPE, dtype=bool)
    tiny[11:13, 19:21, 18:23] = True
    v1 = _label_map({1: merged & ~tiny, 2: tiny})
    result = match_lesions(_tracks(v0, {1: 1, 2: 2}, 0), v1, _lesions(v1), SPACING, next_track_id=3)
    assert result.label_to_track == {1: 1, 2: 3}
    assert result.merges == [((1, 2), 1)]
    assert [link.change for link in result.links if link.lesion_label == 2] == ["new"]


def test_known_scenario_survives_a_3_mm_misalignment() -> None:
    # The follow-up is off by 3 voxels in y (3 mm), as after an imperfect registration.
    base = _label_map(BASE)
    follow = np.roll(_label_map(FOLLOW), 3, axis=1)
    tracks = _tracks(base, {k: k for k in BASE}, seen=0)
    result = match_lesions(tracks, follow, _lesions(follow), SPACING, visit_index=1, next_track_id=7)
    assert result.label_to_track == {1: 1, 2: 4, 3: 7, 4: 5, 5: 6, 6: 8}
    assert result.merges == [((4, 3), 2)]
    assert result.splits == [(5, (4, 3))]
    assert [link.track_id for link in result.by_change("vanished")] == [2]

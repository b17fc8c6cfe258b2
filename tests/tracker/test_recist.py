"""RECIST 1.1 rules and their edge cases, against hand-computed responses: one test per rule and per response
category (Eisenhauer 2009; Schwartz 2016)."""

import numpy as np
import pytest

from tracker.errors import MetatrackError
from tracker.recist import (
    NON_CR_NON_PD,
    Measurement,
    NonTargetRule,
    RecistLesion,
    RecistRole,
    Response,
    TargetSelection,
    VisitMeasurements,
    assess,
    inherited_role,
    overall_response,
    recist_timeline,
    select_targets,
    uncounted_new_lesions,
    uncounted_reason,
)


def _lesion(
    track_id: int, long_mm: float, organ: str = "liver", short_mm: float | None = None, volume_mm3: float = 0.0
) -> RecistLesion:
    return RecistLesion(track_id, organ, long_mm, long_mm / 2 if short_mm is None else short_mm, volume_mm3)


def _m(long_mm: float, volume_mm3: float = 0.0) -> Measurement:
    return Measurement(long_mm, long_mm / 2, volume_mm3)


def _visit(diameters: dict[int, float | None], new_lesion: bool = False) -> VisitMeasurements:
    return VisitMeasurements.by_track({k: None if v is None else _m(v) for k, v in diameters.items()}, new_lesion)


def test_selection_limits_two_per_organ_five_total_largest_first() -> None:
    lesions = [
        _lesion(1, 50, "liver"),
        _lesion(2, 40, "liver"),
        _lesion(3, 45, "liver"),  # third liver lesion: non-target
        _lesion(4, 30, "lung"),
        _lesion(5, 35, "lung"),
        _lesion(6, 25, "bone"),
        _lesion(7, 20, "adrenal"),
        _lesion(8, 60, "lymph_node", short_mm=16),  # node: ranked by short axis 16
        _lesion(9, 9.9, "brain"),  # < 10 mm: not measurable
    ]
    selection = select_targets(lesions)
    assert selection.target_ids == (1, 3, 5, 4, 6)
    assert selection.baseline_sum_mm == pytest.approx(50 + 45 + 35 + 30 + 25)
    assert {les.track_id for les in selection.non_targets} == {2, 7, 8, 9}


def test_measurability_thresholds() -> None:
    assert _lesion(1, 10.0).is_measurable
    assert not _lesion(1, 9.99).is_measurable
    assert _lesion(2, 30, "lymph_node", short_mm=15.0).is_measurable
    assert not _lesion(2, 30, "lymph_node", short_mm=14.9).is_measurable
    selection = select_targets([_lesion(1, 8.0), _lesion(2, 40, "lymph_node", short_mm=12)])
    assert selection.targets == () and selection.baseline_sum_mm == 0.0


def test_override_selection_and_its_errors() -> None:
    lesions = [_lesion(1, 50), _lesion(2, 40), _lesion(3, 30), _lesion(4, 20, "lung"), _lesion(5, 5, "lung")]
    selection = select_targets(lesions, override=[3, 4])
    assert selection.target_ids == (3, 4) and selection.baseline_sum_mm == pytest.approx(50)
    with pytest.raises(MetatrackError, match="not baseline"):
        select_targets(lesions, override=[99])
    with pytest.raises(MetatrackError, match="more than 2"):
        select_targets(lesions, override=[1, 2, 3])
    with pytest.raises(MetatrackError, match="not measurable"):
        select_targets(lesions, override=[5])


def test_exactly_20_percent_and_5_mm_is_pd() -> None:
    selection = select_targets([_lesion(1, 25.0)])
    (a,) = recist_timeline(selection, [_visit({1: 30.0})])
    assert a.change_from_nadir_pct == pytest.approx(20.0)
    assert a.response == "PD"


def test_20_percent_but_only_4_mm_is_not_pd() -> None:
    selection = select_targets([_lesion(1, 20.0)])
    (a,) = recist_timeline(selection, [_visit({1: 24.0})])
    assert a.change_from_nadir_pct == pytest.approx(20.0)
    assert a.response == "SD"


def test_5_mm_but_under_20_percent_is_not_pd() -> None:
    selection = select_targets([_lesion(1, 50.0)])
    (a,) = recist_timeline(selection, [_visit({1: 59.0})])
    assert a.response == "SD"


def test_exactly_30_percent_decrease_is_pr() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 20.0, "lung")])
    a, b = recist_timeline(selection, [_visit({1: 21.0, 2: 14.0}), _visit({1: 21.1, 2: 14.0})])
    assert a.change_from_baseline_pct == pytest.approx(-30.0)
    assert a.response == "PR"
    assert b.response == "SD"  # -29.8 %


def test_pd_is_judged_from_nadir_after_a_pr() -> None:
    selection = select_targets([_lesion(1, 50.0)])
    visits = [_visit({1: 30.0}), _visit({1: 36.0}), _visit({1: 35.5})]
    a, b, c = recist_timeline(selection, visits)
    assert (a.response, a.nadir_mm) == ("PR", 50.0)
    # 36 mm is still 28 % below baseline, but 20 % (6 mm) above the nadir of 30 mm.
    assert (b.response, b.nadir_mm, b.change_from_nadir_pct) == ("PD", 30.0, pytest.approx(20.0))
    assert c.nadir_mm == 30.0 and c.response == "SD"  # 35.5 mm: +18 % from nadir, -29 % from baseline


def test_new_lesion_with_shrinking_targets_is_pd() -> None:
    selection = select_targets([_lesion(1, 50.0)])
    (a,) = recist_timeline(selection, [_visit({1: 20.0}, new_lesion=True)])
    assert a.change_from_baseline_pct == pytest.approx(-60.0)
    assert a.response == "PD"


def test_a_found_new_lesion_counts_only_from_the_stated_confidence() -> None:
    """Drawn new lesions (confidence None) always count; the model's candidates from the stated confidence on."""
    candidates = {7: 0.42, 8: 0.5, 9: None, 10: 0.93}
    assert uncounted_new_lesions(candidates, 0.5) == {7: 0.42}
    assert uncounted_new_lesions(candidates, 0.95) == {7: 0.42, 8: 0.5, 10: 0.93}
    assert uncounted_reason({7: 0.42}, 0.5) == (
        "new lesion candidate(s) T7 (0.42) below confidence 0.50: not counted as new lesions"
    )


def test_cr_with_small_nodes_although_sum_is_not_zero() -> None:
    node = RecistLesion(2, "lymph_node", 30.0, 18.0)
    selection = select_targets([_lesion(1, 40.0), node])
    assert selection.baseline_sum_mm == pytest.approx(58.0)
    visit = VisitMeasurements.by_track({1: None, 2: Measurement(12.0, 8.0)})
    (a,) = recist_timeline(selection, [visit])
    assert a.sum_mm == pytest.approx(8.0)
    assert a.response == "CR"
    node_too_big = VisitMeasurements.by_track({1: None, 2: Measurement(15.0, 10.0)})
    assert assess(selection, node_too_big, 58.0).response == "PR"


def test_vanished_counts_zero_and_too_small_counts_5_mm() -> None:
    selection = select_targets([_lesion(1, 40.0), _lesion(2, 20.0, "lung")])
    (a,) = recist_timeline(selection, [_visit({1: None, 2: 3.0})])
    assert a.sum_mm == pytest.approx(5.0)
    assert a.response == "PR"  # a present non-nodal target blocks CR
    (b,) = recist_timeline(selection, [_visit({1: None, 2: None})])
    assert (b.sum_mm, b.response) == (0.0, "CR")


def test_reappearance_after_cr_is_pd_from_zero_nadir() -> None:
    selection = select_targets([_lesion(1, 20.0)])
    a, b = recist_timeline(selection, [_visit({1: None}), _visit({1: 6.0})])
    assert a.response == "CR" and a.sum_mm == 0.0
    assert b.nadir_mm == 0.0 and b.change_from_nadir_pct is None and b.response == "PD"


def test_from_measured_lesions() -> None:
    from tracker.lesions import Geometry, extract_lesions

    mask = np.zeros((3, 20, 40), dtype=np.uint8)
    mask[1, 5:9, 3:33] = 1  # 4 x 30 pixels of 1 mm: long axis = diagonal
    (lesion,) = extract_lesions(mask, Geometry())
    selection = select_targets([RecistLesion.from_lesion(7, lesion)])
    assert selection.target_ids == (7,)
    assert selection.baseline_sum_mm == pytest.approx(np.hypot(30, 4))
    (a,) = recist_timeline(selection, [VisitMeasurements.by_track({7: Measurement.from_lesion(lesion)})])
    assert a.response == "SD" and a.change_from_baseline_pct == pytest.approx(0.0)


# --- baseline roles ---------------------------------------------------------------------------------------------


def test_nodes_under_10_mm_are_normal_and_not_followed() -> None:
    lesions = [_lesion(1, 30.0), _lesion(2, 20, "lymph_node", short_mm=9.9), _lesion(3, 20, "lymph_node", short_mm=12)]
    selection = select_targets(lesions)
    assert selection.roles() == {1: RecistRole.TARGET, 2: RecistRole.NORMAL_NODE, 3: RecistRole.NON_TARGET}
    # the normal node is not asked for at follow-up: its absence makes nothing "not evaluable"
    visit = VisitMeasurements.by_track({1: _m(30.0), 3: Measurement(20, 12)})
    assert assess(selection, visit, 30.0).response == "SD"


def test_node_targets_are_summed_by_short_axis() -> None:
    selection = select_targets([RecistLesion(1, "lymph_node", 40.0, 20.0), _lesion(2, 30.0, "lung")])
    assert selection.baseline_sum_mm == pytest.approx(20.0 + 30.0)
    (a,) = recist_timeline(selection, [VisitMeasurements.by_track({1: Measurement(60.0, 26.0), 2: _m(30.0)})])
    assert a.sum_mm == pytest.approx(56.0) and a.target_diameters_mm == {1: 26.0, 2: 30.0}


# --- split and merged targets (Schwartz 2016) -------------------------------------------------------------------


def test_split_target_fragments_are_summed() -> None:
    selection = select_targets([_lesion(1, 40.0)])
    (a,) = recist_timeline(selection, [VisitMeasurements.by_track({1: [_m(22.0), _m(20.0), _m(3.0)]})])
    assert a.target_diameters_mm == {1: pytest.approx(22.0 + 20.0 + 5.0)}  # a tiny fragment counts 5 mm
    assert a.sum_mm == pytest.approx(47.0) and a.response == "SD"


def test_merged_targets_count_the_coalesced_lesion_once() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 20.0)])
    visit = VisitMeasurements(lesions={7: _m(45.0)}, tracks={1: (7,), 2: (7,)})
    (a,) = recist_timeline(selection, [visit])
    assert a.target_diameters_mm == {1: 45.0, 2: 0.0}
    assert a.sum_mm == pytest.approx(45.0) and a.response == "SD"  # not 90 mm (+80 %, PD)


def test_non_target_coalesced_with_a_target_is_measured_with_the_target() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 8.0, volume_mm3=200.0)])
    visit = VisitMeasurements(lesions={4: _m(34.0, volume_mm3=9000.0)}, tracks={1: (4,), 2: (4,)})
    (a,) = recist_timeline(selection, [visit])
    assert a.sum_mm == pytest.approx(34.0) and a.target_response == "SD"
    assert a.non_target_volume_mm3 == 0.0 and a.non_target_response == "CR"  # its volume went to the target


# --- not evaluable -------------------------------------------------------------------------------------------------


def test_ne_when_a_target_cannot_be_measured() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 20.0, "lung")])
    a, b = recist_timeline(selection, [VisitMeasurements.by_track({1: _m(10.0)}), _visit({1: 10.0, 2: 8.0})])
    assert (a.target_response, a.response) == ("NE", "NE")
    assert any("could not be measured" in r for r in a.reasons)
    assert b.nadir_mm == 50.0  # a partial sum never becomes the nadir
    assert b.response == "PR"


def test_pd_even_with_an_unmeasured_target_when_the_measured_ones_already_progress() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 20.0, "lung")])
    (a,) = recist_timeline(selection, [VisitMeasurements.by_track({1: _m(61.0)})])  # 61 >= 1.2 x 50 without T2
    assert a.response == "PD"


def test_ne_when_no_lesion_at_baseline() -> None:
    (a,) = recist_timeline(select_targets([]), [_visit({})])
    assert (a.target_response, a.non_target_response, a.response) == (None, None, "NE")


# --- non-targets ---------------------------------------------------------------------------------------------------


def test_cr_needs_every_non_target_gone() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 8.0, volume_mm3=200.0)])
    a, b = recist_timeline(selection, [_visit({1: None, 2: 6.0}), _visit({1: None, 2: None})])
    assert (a.target_response, a.non_target_response, a.response) == ("CR", NON_CR_NON_PD, "PR")
    assert (b.target_response, b.non_target_response, b.response) == ("CR", "CR", "CR")


def test_cr_needs_non_target_nodes_under_10_mm() -> None:
    node = RecistLesion(2, "lymph_node", 18.0, 12.0, 900.0)
    selection = select_targets([_lesion(1, 30.0), node])
    assert selection.non_targets == (node,)
    small = VisitMeasurements.by_track({1: None, 2: Measurement(12.0, 9.0, 400.0)})
    still = VisitMeasurements.by_track({1: None, 2: Measurement(14.0, 10.0, 500.0)})
    assert assess(selection, small, 30.0).response == "CR"
    assert assess(selection, still, 30.0).response == "PR"


def test_non_target_unequivocal_progression_by_the_volume_rule() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 9.0, volume_mm3=400.0)])
    visits = [
        VisitMeasurements.by_track({1: _m(30.0), 2: _m(8.0, 300.0)}),  # nadir 300 mm3
        VisitMeasurements.by_track({1: _m(30.0), 2: _m(10.0, 799.0)}),  # x2.66 but +499 mm3
        VisitMeasurements.by_track({1: _m(30.0), 2: _m(11.0, 800.0)}),  # x2.67 and +500 mm3
    ]
    a, b, c = recist_timeline(selection, visits)
    assert (a.non_target_response, a.non_target_volume_mm3, a.non_target_nadir_mm3) == (NON_CR_NON_PD, 300.0, 400.0)
    assert (b.non_target_response, b.non_target_nadir_mm3, b.response) == (NON_CR_NON_PD, 300.0, "SD")
    assert (c.non_target_response, c.target_response, c.response) == ("PD", "SD", "PD")
    assert any("unequivocal progression" in r for r in c.reasons)


def test_non_target_rule_is_configurable_and_checked() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 9.0, volume_mm3=400.0)])
    visit = VisitMeasurements.by_track({1: _m(30.0), 2: _m(10.0, 700.0)})
    assert assess(selection, visit, 30.0).non_target_response == NON_CR_NON_PD  # x1.75 < x2
    loose = NonTargetRule(volume_ratio=1.5, min_increase_mm3=100.0)
    assert assess(selection, visit, 30.0, rule=loose).non_target_response == "PD"
    with pytest.raises(MetatrackError, match=r"volume ratio must be > 1, got 0\.5"):
        NonTargetRule(volume_ratio=0.5)
    with pytest.raises(MetatrackError, match="minimum increase must be >= 0 mm3, got -1"):
        NonTargetRule(min_increase_mm3=-1.0)


def test_non_target_progression_by_a_readers_call() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 9.0, volume_mm3=400.0)])
    visit = VisitMeasurements.by_track({1: _m(30.0), 2: _m(9.0, 400.0)}, non_target_progression=True)
    assert assess(selection, visit, 30.0).response == "PD"
    grown = VisitMeasurements.by_track({1: _m(30.0), 2: _m(20.0, 4000.0)}, non_target_progression=False)
    assert assess(selection, grown, 30.0).non_target_response == NON_CR_NON_PD  # the reader overrules the rule


def test_unassessed_non_target_is_ne_and_leaves_targets_response() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 9.0, volume_mm3=400.0)])
    sd, cr = VisitMeasurements.by_track({1: _m(28.0)}), VisitMeasurements.by_track({1: None})
    assert (assess(selection, sd, 30.0).non_target_response, assess(selection, sd, 30.0).response) == ("NE", "SD")
    assert assess(selection, cr, 30.0).response == "PR"  # target CR, non-targets not evaluated: PR (Table 4)


# --- one test per response category -----------------------------------------------------------------------------


def test_category_cr() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 6.0, volume_mm3=100.0)])
    assert assess(selection, _visit({1: None, 2: None}), 30.0).response == "CR"


def test_category_pr() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 6.0, volume_mm3=100.0)])
    assert assess(selection, _visit({1: 20.0, 2: 6.0}), 30.0).response == "PR"


def test_category_sd() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 6.0, volume_mm3=100.0)])
    assert assess(selection, _visit({1: 25.0, 2: 6.0}), 30.0).response == "SD"


def test_category_pd() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 6.0, volume_mm3=100.0)])
    assert assess(selection, _visit({1: 36.0, 2: 6.0}), 30.0).response == "PD"


def test_category_ne() -> None:
    selection = select_targets([_lesion(1, 30.0), _lesion(2, 6.0, volume_mm3=100.0)])
    assert assess(selection, _visit({2: 6.0}), 30.0).response == "NE"


def test_category_non_cr_non_pd_without_targets() -> None:
    selection = select_targets([_lesion(1, 8.0, volume_mm3=250.0), _lesion(2, 6.0, "lung", volume_mm3=100.0)])
    assert selection.targets == ()
    a, b, c, d = recist_timeline(
        selection, [_visit({1: 8.0, 2: None}), _visit({1: None, 2: None}), _visit({}), _visit({1: 8.0}, True)]
    )
    assert (a.response, a.target_response, a.sum_mm) == (NON_CR_NON_PD, None, 0.0)
    assert b.response == "CR"
    assert c.response == "NE"  # neither assessed
    assert d.response == "PD"  # new lesion


# --- overall response: RECIST 1.1 Tables 4 and 5 --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "non_target", "new", "overall"),
    [
        ("CR", "CR", False, "CR"),
        ("CR", None, False, "CR"),
        ("CR", NON_CR_NON_PD, False, "PR"),
        ("CR", "NE", False, "PR"),
        ("PR", NON_CR_NON_PD, False, "PR"),
        ("PR", "NE", False, "PR"),
        ("SD", NON_CR_NON_PD, False, "SD"),
        ("SD", "NE", False, "SD"),
        ("NE", NON_CR_NON_PD, False, "NE"),
        ("PD", NON_CR_NON_PD, False, "PD"),
        ("SD", "PD", False, "PD"),
        ("CR", "CR", True, "PD"),
        (None, "CR", False, "CR"),
        (None, NON_CR_NON_PD, False, NON_CR_NON_PD),
        (None, "NE", False, "NE"),
        (None, "PD", False, "PD"),
        (None, NON_CR_NON_PD, True, "PD"),
        (None, None, False, "NE"),
    ],
)
def test_overall_response_table(
    target: Response | None, non_target: Response | None, new: bool, overall: Response
) -> None:
    assert overall_response(target, non_target, new) == overall


def test_unmeasured_lesion_label_is_an_error() -> None:
    selection = TargetSelection(targets=(_lesion(1, 30.0),), non_targets=(), baseline_sum_mm=30.0)
    with pytest.raises(MetatrackError, match="track 1: lesion label 9 has no measurement"):
        assess(selection, VisitMeasurements(tracks={1: (9,)}), 30.0)


def test_a_split_fragment_inherits_its_tracks_role_any_other_new_track_is_new() -> None:
    roles = {1: str(RecistRole.TARGET), 2: str(RecistRole.NON_TARGET)}
    assert inherited_role(roles, 1) == "target"
    assert inherited_role(roles, 2) == "non-target"
    assert inherited_role(roles, None) == "new"
    assert inherited_role(roles, 9) == "new"  # split from a track RECIST does not follow

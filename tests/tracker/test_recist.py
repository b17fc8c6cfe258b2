"""RECIST 1.1 rules and their edge cases, against hand-computed responses."""

import numpy as np
import pytest

from tracker.errors import MetatrackError
from tracker.recist import (
    Measurement,
    RecistLesion,
    VisitMeasurements,
    assess,
    recist_timeline,
    select_targets,
)


def _lesion(track_id: int, long_mm: float, organ: str = "liver", short_mm: float | None = None) -> RecistLesion:
    return RecistLesion(track_id, organ, long_mm, long_mm / 2 if short_mm is None else short_mm)


def _visit(diameters: dict[int, float | None], new_lesion: bool = False) -> VisitMeasurements:
    return VisitMeasurements(
        {k: None if v is None else Measurement(v, v / 2) for k, v in diameters.items()}, new_lesion=new_lesion
    )


def _one_target(baseline_mm: float) -> "object":
    return select_targets([_lesion(1, baseline_mm)])


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


def test_cr_with_small_nodes_although_sum_is_not_zero() -> None:
    node = RecistLesion(2, "lymph_node", 30.0, 18.0)
    selection = select_targets([_lesion(1, 40.0), node])
    assert selection.baseline_sum_mm == pytest.approx(58.0)
    visit = VisitMeasurements({1: None, 2: Measurement(12.0, 8.0)})
    (a,) = recist_timeline(selection, [visit])
    assert a.sum_mm == pytest.approx(8.0)
    assert a.response == "CR"
    node_too_big = VisitMeasurements({1: None, 2: Measurement(15.0, 10.0)})
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


def test_no_targets_is_not_evaluable_unless_new_lesion() -> None:
    selection = select_targets([_lesion(1, 5.0)])
    assert recist_timeline(selection, [_visit({}), _visit({}, new_lesion=True)])[0].response == "NE"
    assert recist_timeline(selection, [_visit({}, new_lesion=True)])[0].response == "PD"


def test_from_measured_lesions() -> None:
    from tracker.lesions import Geometry, extract_lesions

    mask = np.zeros((3, 20, 40), dtype=np.uint8)
    mask[1, 5:9, 3:33] = 1  # 4 x 30 pixels of 1 mm: long axis = diagonal
    (lesion,) = extract_lesions(mask, Geometry())
    selection = select_targets([RecistLesion.from_lesion(7, lesion)])
    assert selection.target_ids == (7,)
    assert selection.baseline_sum_mm == pytest.approx(np.hypot(30, 4))
    (a,) = recist_timeline(selection, [VisitMeasurements({7: Measurement.from_lesion(lesion)})])
    assert a.response == "SD" and a.change_from_baseline_pct == pytest.approx(0.0)

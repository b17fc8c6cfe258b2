"""Kaplan-Meier estimates and numbers at risk against lifelines, and risk tertiles."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines import KaplanMeierFitter

from tracker.reports.km import kaplan_meier, km_at, number_at_risk, tertiles


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    t = np.round(rng.exponential(400.0, 80))  # whole days: ties between events and censorings happen
    e = rng.random(80) < 0.6
    t[:5] = t[5]  # a tie of six
    return t, e


def test_survival_matches_lifelines(sample: tuple[np.ndarray, np.ndarray]) -> None:
    t, e = sample
    ours = kaplan_meier(t, e)
    kmf = KaplanMeierFitter().fit(t, e)
    theirs = kmf.survival_function_["KM_estimate"]
    np.testing.assert_allclose(ours.survival, theirs.to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours.times, theirs.index.to_numpy())
    grid = np.linspace(0, t.max() + 10, 37)
    np.testing.assert_allclose(km_at(ours, grid), kmf.survival_function_at_times(grid).to_numpy(), atol=1e-12)


def test_at_risk_counts_match_lifelines(sample: tuple[np.ndarray, np.ndarray]) -> None:
    t, e = sample
    table = KaplanMeierFitter().fit(t, e).event_table
    assert kaplan_meier(t, e).at_risk.tolist() == table["at_risk"].astype(int).tolist()
    assert number_at_risk(t, table.index.to_numpy()) == table["at_risk"].astype(int).tolist()
    assert kaplan_meier(t, e).events.tolist() == table["observed"].astype(int).tolist()


def test_at_risk_by_hand() -> None:
    # subjects followed to 2, 5, 5, 9 days: at day 0 all four, at day 5 three (the two at 5 still count), after 9 none
    assert number_at_risk([2, 5, 5, 9], [0, 3, 5, 6, 10]) == [4, 3, 3, 1, 0]
    km = kaplan_meier([2, 5, 5, 9], [1, 1, 0, 1])
    np.testing.assert_allclose(km.survival, [1.0, 0.75, 0.75 * 2 / 3, 0.0])


def test_tertiles_split_at_the_thirds() -> None:
    groups = tertiles(np.arange(9, dtype=float))
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]

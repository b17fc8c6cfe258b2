"""The survival table: time, event, baseline and latest features per patient; it loads into lifelines."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.helpers import FEATURES, synthetic_tables
from tracker.errors import MetatrackError
from tracker.exports.survival import survival_table


def test_latest_is_the_last_visit_before_the_outcome() -> None:
    visits = pd.DataFrame(
        {
            "patient_id": ["A", "A", "A", "B", "B", "C"],
            "time_days": [0.0, 60.0, 120.0, 0.0, 90.0, 0.0],
            "burden": [10.0, 12.0, 30.0, 5.0, 4.0, 1.0],
        }
    )
    events = pd.DataFrame({"patient_id": ["A", "B"], "time_days": [100.0, 90.0], "event": [1, 0]})
    table = survival_table(visits, events, ["burden"])
    assert table.to_dict("records") == [
        {"patient_id": "A", "time_days": 100.0, "event": 1, "latest_time_days": 60.0,
         "baseline_burden": 10.0, "latest_burden": 12.0},
        {"patient_id": "B", "time_days": 90.0, "event": 0, "latest_time_days": 90.0,
         "baseline_burden": 5.0, "latest_burden": 4.0},
    ]  # fmt: skip
    with pytest.raises(MetatrackError, match="unknown patient features"):
        survival_table(visits, events, ["volume"])


def test_table_fits_a_lifelines_cox_model() -> None:
    from lifelines import CoxPHFitter

    visits, events = synthetic_tables(120, seed=5)
    table = survival_table(visits, events, list(FEATURES))
    assert len(table) == 120 and table["event"].sum() == events["event"].sum()
    covariates = ["baseline_burden_log", "latest_burden_log", "latest_new_lesions"]
    cph = CoxPHFitter().fit(table[["time_days", "event", *covariates]], "time_days", "event")
    assert set(cph.params_.index) == set(covariates)
    assert cph.concordance_index_ > 0.6  # the slope cohort's hazard grows with the burden

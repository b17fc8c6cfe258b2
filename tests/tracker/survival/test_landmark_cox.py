"""Landmark Cox kind: the stored numbers reproduce the lifelines fits, visits after the last landmark use the last
fit, the fits stop where too few patients/events remain, and the file is plain JSON."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from tracker.errors import MetatrackError
from tracker.survival import SurvivalModelConfig, model_from_bytes, train_landmark_cox
from tracker.survival.baselines import landmark_design, outcome_from
from tracker.survival.data import prepare_visits
from tracker.survival.landmark_cox import MIN_LANDMARK_EVENTS, MIN_LANDMARK_PATIENTS, LandmarkCoxModel
from tracker.survival.model import prepare_training
from tracker.survival.toy import ToyCohortConfig, toy_cohort

CFG = SurvivalModelConfig()


@pytest.fixture(scope="module")
def cohort():
    return toy_cohort(ToyCohortConfig(n_patients=150), seed=21)


@pytest.fixture(scope="module")
def model(cohort) -> LandmarkCoxModel:
    visits, events, _ = cohort
    return train_landmark_cox(visits, events, CFG, seed=3, max_landmarks=3)


def test_stored_fits_reproduce_lifelines(model, cohort) -> None:
    visits = toy_cohort(ToyCohortConfig(n_patients=40), seed=22)[0]
    loaded = model_from_bytes(model.to_bytes())
    index, surv = loaded.survival_all_visits(visits)
    _, surv_mem = model.survival_all_visits(visits)
    assert np.array_equal(surv, surv_mem)
    prepared = prepare_visits(visits, CFG)
    assert len(model.lifelines_fits) == len(model.fits) == 3
    for k in sorted(index["visit_index"].unique()):
        rows = (index["visit_index"] == k).to_numpy()
        design = landmark_design(prepared, model.standardizer, CFG, int(k), index.loc[rows, "patient_id"].to_numpy())
        cox = model.lifelines_fits[min(int(k), 3) - 1]
        expected = cox.survival(design, np.zeros(rows.sum()), CFG.grid_months)
        np.testing.assert_allclose(surv[rows], expected, rtol=0, atol=1e-9)
        assert not np.array_equal(surv[rows], model.fits[0].survival(design, CFG.grid_months)) or k == 1


def test_fits_match_the_benchmark_landmark_cox(model, cohort) -> None:
    """Same features, standardisation, design and penalizer as evaluate.py's cox_landmark on the same patients."""
    visits, events, _ = cohort
    td = prepare_training(visits, events, CFG)
    assert model.features == td.chosen
    for k, cox in enumerate(model.lifelines_fits, start=1):
        ids, _, evt, _ = outcome_from(td.kept, td.events, CFG, k)
        design = landmark_design(td.kept, td.standardizer, CFG, k, ids)
        assert list(cox.columns) == [c for c in design.columns if design[c].std(ddof=0) > 1e-8]
        assert cox.fitter.penalizer == CFG.cox_penalizer
        assert model.metadata["metrics"]["landmarks"][k - 1]["n_events"] == int(evt.sum())


def test_landmarks_stop_where_data_run_out(cohort) -> None:
    visits, events, _ = cohort
    model = train_landmark_cox(visits, events, CFG, max_landmarks=50)
    td = prepare_training(visits, events, CFG)
    n = len(model.fits)
    assert 1 < n < 50
    _, _, evt, _ = outcome_from(td.kept, td.events, CFG, n + 1)
    assert len(evt) < MIN_LANDMARK_PATIENTS or evt.sum() < MIN_LANDMARK_EVENTS
    assert model.metadata["hyperparameters"]["max_landmarks"] == 50
    assert model.metadata["metrics"]["n_landmarks"] == n
    with pytest.raises(MetatrackError, match="max_landmarks"):
        train_landmark_cox(visits, events, CFG, max_landmarks=0)


def test_file_is_json_only(model) -> None:
    blob = model.to_bytes()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert zf.namelist() == ["model.json"]
        header = json.loads(zf.read("model.json"))
    assert header["kind"] == "landmark-cox" and header["format_version"] == 1
    assert [f["landmark"] for f in header["fits"]] == [1, 2, 3]
    assert set(header["fits"][0]) >= {"columns", "coef", "center", "baseline_cumulative_hazard"}
    header["format_version"] = 99
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("model.json", json.dumps(header))
    with pytest.raises(MetatrackError, match="format_version 99"):
        model_from_bytes(buf.getvalue())


def test_missing_feature_columns_raise(model, cohort) -> None:
    visits = cohort[0].drop(columns=model.features[:1])
    with pytest.raises(MetatrackError, match="needs feature columns"):
        model.survival_all_visits(visits)

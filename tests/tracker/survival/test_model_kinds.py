"""One protocol suite for every model kind in MODEL_KINDS: file round trip, header, curve shape and monotonicity,
no look-ahead, ranking the toy cohort's known risk, registration; old model files still load as "rnn"."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine

from db.registry import get_version, model_file_bytes, register_model
from db.session import session_scope
from tracker.errors import MetatrackError
from tracker.store import FileStore
from tracker.survival import MODEL_KINDS, RiskModel, SurvivalModel, SurvivalModelConfig, model_from_bytes
from tracker.survival.cache import cached_model
from tracker.survival.metrics import harrell_c
from tracker.survival.toy import ToyCohortConfig, toy_cohort

DATA = Path(__file__).resolve().parents[2] / "data" / "models"
TOY = ToyCohortConfig(n_patients=200, marker_noise_sd=0.15, slope_log_hazard_ratio=1.2, n_noise_features=2)
# quick settings per kind; a new kind must add its own here
FAST = {
    "rnn": SurvivalModelConfig(max_epochs=30, min_epochs=30, n_ensemble=2),
    "landmark-cox": SurvivalModelConfig(),
    "blend": SurvivalModelConfig(max_epochs=30, min_epochs=30, n_ensemble=2),
    "auto": SurvivalModelConfig(max_epochs=30, min_epochs=30, n_ensemble=2),
}
KINDS = sorted(MODEL_KINDS)


def test_every_kind_has_fast_settings() -> None:
    assert set(FAST) == set(MODEL_KINDS)


@pytest.fixture(scope="module")
def cohort():
    visits, events, _ = toy_cohort(TOY, seed=11)
    return visits, events


@pytest.fixture(scope="module")
def held_out():
    return toy_cohort(TOY, seed=12)


@pytest.fixture(scope="module", params=KINDS)
def trained(request, cohort) -> tuple[str, SurvivalModel]:
    visits, events = cohort
    return request.param, MODEL_KINDS[request.param].train(visits, events, FAST[request.param], seed=0)


def _header(blob: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return json.loads(zf.read("model.json"))


def test_protocol_and_kind(trained) -> None:
    kind, model = trained
    assert isinstance(model, SurvivalModel)
    assert model.kind == kind
    assert model.grid_months == FAST[kind].grid_months
    assert set(model.features) <= {"marker", "noise_0", "noise_1"}
    meta = model.metadata
    assert {"data_fingerprint", "hyperparameters", "versions", "metrics", "seed"} <= set(meta)
    assert len(meta["data_fingerprint"]) == 64 and meta["seed"] == 0


def test_bytes_round_trip_gives_identical_curves(trained, held_out) -> None:
    kind, model = trained
    visits = held_out[0]
    blob = model.to_bytes()
    header = _header(blob)
    assert header["kind"] == kind and isinstance(header["format_version"], int)
    loaded = model_from_bytes(blob)
    assert type(loaded) is type(model) and loaded.kind == kind
    assert loaded.features == model.features and loaded.grid_months == model.grid_months
    assert loaded.metadata == model.metadata
    assert loaded.to_bytes() == blob
    i1, s1 = model.survival_all_visits(visits)
    i2, s2 = loaded.survival_all_visits(visits)
    pd.testing.assert_frame_equal(i1, i2, check_exact=True)
    assert np.array_equal(s1, s2)


def test_curves_are_survival_curves_from_every_visit(trained, held_out) -> None:
    _, model = trained
    visits = held_out[0]
    index, surv = model.survival_all_visits(visits)
    assert list(index.columns) == ["patient_id", "visit_index", "time_days"]
    assert surv.shape == (len(visits), len(model.grid_months)) == (len(index), len(model.grid_months))
    expected = visits.sort_values(["patient_id", "time_days"], kind="stable")
    assert np.array_equal(index["patient_id"].to_numpy(), expected["patient_id"].to_numpy())
    assert np.array_equal(index["time_days"].to_numpy(), expected["time_days"].to_numpy())
    assert np.array_equal(index["visit_index"].to_numpy(), expected.groupby("patient_id").cumcount().to_numpy() + 1)
    assert np.all(np.isfinite(surv)) and np.all((surv >= 0.0) & (surv <= 1.0))
    assert np.all(np.diff(surv, axis=1) <= 0.0)
    # the per-patient tables derive from the same curves
    pred = model.predict(visits)
    risk = model.risk_at(visits, [12])
    np.testing.assert_allclose(risk["risk"].to_numpy(), 1 - pred["s_12m"].to_numpy(), rtol=1e-12)
    with pytest.raises(MetatrackError, match="outside the model's range"):
        model.risk_at(visits, [model.grid_months[-1] + 1])


def test_no_look_ahead(trained, held_out) -> None:
    _, model = trained
    visits = held_out[0]
    idx_full, full = model.survival_all_visits(visits)
    first_two = visits.sort_values(["patient_id", "time_days"]).groupby("patient_id").head(2)
    idx_short, short = model.survival_all_visits(first_two)
    keep = (idx_full["visit_index"] <= 2).to_numpy()
    assert np.array_equal(idx_short["visit_index"].to_numpy(), idx_full.loc[keep, "visit_index"].to_numpy())
    assert np.array_equal(short, full[keep])
    # changing later visits' values moves only their own curves
    altered = visits.copy()
    later = altered.sort_values(["patient_id", "time_days"]).groupby("patient_id").cumcount() >= 2
    altered.loc[later.reindex(altered.index), "marker"] += 5.0
    _, again = model.survival_all_visits(altered)
    assert np.array_equal(again[keep], full[keep])
    assert not np.array_equal(again[~keep], full[~keep])


def test_interval_brackets_the_curve_without_look_ahead(trained, held_out) -> None:
    """Every kind's 90 % band: lower <= S <= upper, a positive width, the same curves as without it, non-increasing
    bounds, and a visit's band unchanged by later visits."""
    _, model = trained
    visits = held_out[0]
    index, surv, lower, upper = model.survival_interval_all_visits(visits)
    pd.testing.assert_frame_equal(index, model.survival_all_visits(visits)[0])
    assert np.array_equal(surv, model.survival_all_visits(visits)[1])
    assert np.all(lower <= surv) and np.all(surv <= upper)
    assert np.all(np.diff(lower, axis=1) <= 0.0) and np.all(np.diff(upper, axis=1) <= 0.0)
    assert float(np.mean(upper[:, 11] - lower[:, 11])) > 0.01
    first_two = visits.sort_values(["patient_id", "time_days"]).groupby("patient_id").head(2)
    _, _, low2, up2 = model.survival_interval_all_visits(first_two)
    keep = (index["visit_index"] <= 2).to_numpy()
    np.testing.assert_allclose(low2, lower[keep], rtol=1e-12)
    np.testing.assert_allclose(up2, upper[keep], rtol=1e-12)
    risk = model.risk_at(visits, [12], interval=True)
    assert np.all((risk["lower"] <= risk["risk"]) & (risk["risk"] <= risk["upper"]))


def test_ranks_the_known_risk(trained, held_out) -> None:
    """Held-out toy patients: the risk from the 3rd visit orders patients like their true log hazard ratio (the
    marker's slope; its level alone carries no information, C ~ 0.5), and like their observed outcomes."""
    _, model = trained
    visits, events, truth = held_out
    risk = model.predict_all_visits(visits, [12])
    at3 = risk[risk["visit_index"] == 3]
    true_lhr = truth.set_index("patient_id").loc[at3["patient_id"], "log_hazard_ratio"].to_numpy()
    c_truth = harrell_c(-true_lhr, np.ones(len(at3)), at3["risk"].to_numpy())
    ev = events.set_index("patient_id").loc[at3["patient_id"]]
    c_outcome = harrell_c(ev["time_days"].to_numpy() - at3["time_days"].to_numpy(), ev["event"].to_numpy(), at3["risk"])
    assert c_truth > 0.65
    assert c_outcome > 0.58


def test_registers_with_its_kind_and_loads_through_the_cache(trained, held_out, engine: Engine, tmp_path) -> None:
    kind, model = trained
    store = FileStore(tmp_path / "store")
    with session_scope(engine) as s:
        mv = register_model(s, store, model, f"m-{kind}", "metastasis")
        assert mv.hyperparameters["kind"] == kind
    with session_scope(engine) as s:
        mv = get_version(s, f"m-{kind}")
        loaded = cached_model(mv.file_sha256, lambda: model_file_bytes(store, mv))
        assert mv.hyperparameters["kind"] == kind
        assert mv.features == model.features
    assert loaded.kind == kind
    assert np.array_equal(loaded.survival_all_visits(held_out[0])[1], model.survival_all_visits(held_out[0])[1])


def test_model_files_without_kind_are_rnn() -> None:
    """A model file written by the code before model kinds (format_version 2, no "kind"), committed with the curves
    it gave then (see tests/data/models/README.md)."""
    blob = (DATA / "rnn_format2_no_kind.zip").read_bytes()
    assert "kind" not in _header(blob) and _header(blob)["format_version"] == 2
    model = model_from_bytes(blob)
    assert isinstance(model, RiskModel) and model.kind == "rnn"
    assert RiskModel.from_bytes(blob).to_bytes() == model.to_bytes()
    visits = pd.read_csv(DATA / "rnn_format2_no_kind_visits.csv")
    expected = json.loads((DATA / "rnn_format2_no_kind_curves.json").read_text())
    index, surv = model.survival_all_visits(visits)
    assert index["patient_id"].tolist() == expected["patient_id"]
    assert index["visit_index"].tolist() == expected["visit_index"]
    np.testing.assert_allclose(surv, np.asarray(expected["survival"]), rtol=1e-6, atol=0)
    assert _header(model.to_bytes())["kind"] == "rnn"  # written again, the file names its kind


def test_header_without_kind_built_in_test_is_rnn(cohort) -> None:
    visits, events = cohort
    model = MODEL_KINDS["rnn"].train(visits, events, SurvivalModelConfig(max_epochs=2, min_epochs=2, n_ensemble=1))
    src, buf = zipfile.ZipFile(io.BytesIO(model.to_bytes())), io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            payload = src.read(name)
            if name == "model.json":
                header = json.loads(payload)
                del header["kind"]
                payload = json.dumps(header).encode()
            dst.writestr(name, payload)
    old = model_from_bytes(buf.getvalue())
    assert old.kind == "rnn"
    assert np.array_equal(old.survival_all_visits(visits)[1], model.survival_all_visits(visits)[1])


def test_unknown_kind_and_wrong_class_raise(cohort) -> None:
    visits, events = cohort
    cox = MODEL_KINDS["landmark-cox"].train(visits, events, FAST["landmark-cox"])
    with pytest.raises(MetatrackError, match="not an 'rnn' one"):
        RiskModel.from_bytes(cox.to_bytes())
    src, buf = zipfile.ZipFile(io.BytesIO(cox.to_bytes())), io.BytesIO()
    header = json.loads(src.read("model.json"))
    header["kind"] = "oracle"
    with zipfile.ZipFile(buf, "w") as dst:
        dst.writestr("model.json", json.dumps(header))
    with pytest.raises(MetatrackError, match="model kind 'oracle' is unknown"):
        model_from_bytes(buf.getvalue())
    with pytest.raises(MetatrackError, match="not a metatrack risk model"):
        model_from_bytes(b"not a zip")

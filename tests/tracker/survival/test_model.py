"""GRU risk model: no look-ahead, serialisation round trip, determinism, learning a known hazard, API shapes."""

import numpy as np
import pandas as pd
import pytest

from tracker.errors import MetatrackError
from tracker.survival import RiskModel, SurvivalModelConfig, train_model
from tracker.survival.metrics import harrell_c
from tracker.survival.toy import ToyCohortConfig, toy_cohort

FAST = SurvivalModelConfig(max_epochs=8, min_epochs=8)


@pytest.fixture(scope="module")
def cohort():
    return toy_cohort(ToyCohortConfig(n_patients=60), seed=5)


@pytest.fixture(scope="module")
def small_model(cohort):
    visits, events, _ = cohort
    return train_model(visits, events, FAST, seed=0)


def test_no_look_ahead(small_model, cohort):
    visits, _, _ = cohort
    full = small_model.predict_all_visits(visits, [6, 12, 24])
    first_two = visits.groupby("patient_id").head(2)
    short = small_model.predict_all_visits(first_two, [6, 12, 24])
    merged = short.merge(full, on=["patient_id", "visit_index", "horizon_months"], suffixes=("_short", "_full"))
    assert len(merged) == len(short) > 0
    assert np.array_equal(merged["risk_short"].to_numpy(), merged["risk_full"].to_numpy())
    # changing a later visit's values must not move earlier scores either
    altered = visits.copy()
    later = altered.groupby("patient_id").cumcount() >= 2
    altered.loc[later, "marker"] += 100.0
    again = small_model.predict_all_visits(altered, [12])
    base = full[full["horizon_months"] == 12]
    keep = again["visit_index"] <= 2
    assert np.array_equal(again.loc[keep, "risk"].to_numpy(), base.loc[base["visit_index"] <= 2, "risk"].to_numpy())
    assert not np.array_equal(again["risk"].to_numpy(), base["risk"].to_numpy())


def test_round_trip_is_exact(small_model, cohort):
    visits, _, _ = cohort
    blob = small_model.to_bytes()
    loaded = RiskModel.from_bytes(blob)
    a, b = small_model.predict(visits), loaded.predict(visits)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert loaded.metadata == small_model.metadata
    assert loaded.features == small_model.features
    assert loaded.to_bytes() == blob
    with pytest.raises(MetatrackError, match="not a metatrack risk model"):
        RiskModel.from_bytes(b"not a zip")


def test_deterministic_for_a_seed(small_model, cohort):
    visits, events, _ = cohort
    again = train_model(visits, events, FAST, seed=0)
    for name, tensor in small_model.net.state_dict().items():
        assert np.array_equal(tensor.numpy(), again.net.state_dict()[name].numpy()), name
    pd.testing.assert_frame_equal(again.predict(visits), small_model.predict(visits), check_exact=True)
    assert again.metadata["data_fingerprint"] == small_model.metadata["data_fingerprint"]
    other = train_model(visits, events, FAST, seed=1)
    assert not np.array_equal(other.predict(visits).iloc[:, 2:], small_model.predict(visits).iloc[:, 2:])


def test_api_shapes_and_metadata(small_model, cohort):
    visits, _events, _ = cohort
    pred = small_model.predict(visits)
    assert len(pred) == visits["patient_id"].nunique()
    assert list(pred.columns[:2]) == ["patient_id", "as_of_time_days"]
    last = visits.groupby("patient_id")["time_days"].max()
    np.testing.assert_array_equal(pred.set_index("patient_id")["as_of_time_days"], last.loc[pred["patient_id"]])
    curves = pred.filter(regex="^s_").to_numpy()
    assert curves.shape[1] == 36 and np.all(np.diff(curves, axis=1) <= 0) and np.all((curves > 0) & (curves < 1))
    risk = small_model.risk_at(visits, [12])
    np.testing.assert_allclose(risk["risk"].to_numpy(), 1 - pred["s_12m"].to_numpy(), rtol=1e-12)
    allv = small_model.predict_all_visits(visits, [6, 12])
    assert len(allv) == 2 * len(visits)
    meta = small_model.metadata
    assert meta["seed"] == 0 and len(meta["data_fingerprint"]) == 64
    assert set(meta["features"]) <= {"marker", "noise_0", "noise_1", "noise_2"}
    assert {"torch", "numpy", "lifelines"} <= set(meta["versions"])
    with pytest.raises(MetatrackError, match="horizon 48"):
        small_model.risk_at(visits, [48])


def test_dates_instead_of_days(cohort):
    visits, events, _ = cohort
    dated = visits.drop(columns="time_days").assign(
        date=pd.Timestamp("2020-01-01") + pd.to_timedelta(visits["time_days"].round(), unit="D")
    )
    model = train_model(visits.assign(time_days=visits["time_days"].round()), events, FAST, seed=0)
    a = model.predict(dated)
    b = model.predict(visits.assign(time_days=visits["time_days"].round()))
    np.testing.assert_array_equal(a.filter(regex="^s_").to_numpy(), b.filter(regex="^s_").to_numpy())


def test_learns_slope_dependent_hazard():
    toy = ToyCohortConfig(n_patients=300, marker_noise_sd=0.15, slope_log_hazard_ratio=1.2, n_noise_features=2)
    visits, events, _ = toy_cohort(toy, seed=11)
    test_v, test_e, _ = toy_cohort(toy, seed=12)
    model = train_model(visits, events, SurvivalModelConfig(max_epochs=120), seed=0)
    risk = model.predict_all_visits(test_v, [12])
    ev = test_e.set_index("patient_id")
    at3 = risk[risk["visit_index"] == 3]
    remaining = ev.loc[at3["patient_id"], "time_days"].to_numpy() - at3["time_days"].to_numpy()
    c = harrell_c(remaining, ev.loc[at3["patient_id"], "event"].to_numpy(), at3["risk"].to_numpy())
    assert c > 0.65  # held-out patients; the marker's baseline level alone carries no information (C ~ 0.5)


def test_ensemble_curve_is_the_mean_of_member_curves():
    import torch

    from tracker.survival.model import survival_from_logits
    from tracker.survival.rnn import EnsembleNet, RiskNet, predict_logits

    torch.manual_seed(0)
    members = [RiskNet(7, 8, 36, 0.0).eval() for i in range(3)]
    for m in members:
        with torch.no_grad():
            m.baseline.fill_(-3.0)
    x = np.random.default_rng(0).normal(size=(5, 4, 7)).astype(np.float32)
    mean_curve = np.mean([survival_from_logits(predict_logits(m, x)) for m in members], axis=0)
    ens_curve = survival_from_logits(predict_logits(EnsembleNet(members).eval(), x))
    np.testing.assert_allclose(ens_curve, mean_curve, rtol=1e-9, atol=1e-12)
    # one member: its own logits, unchanged
    single = EnsembleNet(members[:1]).eval()
    assert np.array_equal(predict_logits(single, x), predict_logits(members[0], x))


def test_reads_format_1_single_network_models(cohort):
    import io
    import json
    import zipfile

    visits, events, _ = cohort
    model = train_model(visits, events, SurvivalModelConfig(max_epochs=4, min_epochs=4, n_ensemble=1), seed=0)
    blob = model.to_bytes()
    # rewrite as format 1: weights at the top level, no n_members, no n_ensemble in the config
    src, buf = zipfile.ZipFile(io.BytesIO(blob)), io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            payload = src.read(name)
            if name == "model.json":
                header = json.loads(payload)
                header["format_version"] = 1
                header.pop("n_members")
                header["config"].pop("n_ensemble")
                header["weights"] = [w.removeprefix("members.0.") for w in header["weights"]]
                payload = json.dumps(header).encode()
            dst.writestr(name.replace("members.0.", ""), payload)
    old = RiskModel.from_bytes(buf.getvalue())
    assert old.cfg.n_ensemble == 1
    pd.testing.assert_frame_equal(old.predict(visits), model.predict(visits), check_exact=True)

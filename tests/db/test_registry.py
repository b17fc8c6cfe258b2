"""Model registry: register/load round trip, content-addressed model files, promotion rules, retire."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from db.models import Blob, ModelState, ModelVersion
from db.registry import get_version, list_models, promote, promoted_model, register_model, retire, show_model
from db.session import session_scope
from tests.helpers import FEATURES, synthetic_tables, tiny_model
from tracker.errors import MetatrackError
from tracker.store import FileStore
from tracker.workflows.models import load


def test_register_load_round_trip_and_single_stored_file(engine: Engine, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    model = tiny_model()
    visits, _ = synthetic_tables(20, seed=9)
    inputs = visits[["patient_id", "time_days", *FEATURES]]
    expected = model.predict_all_visits(inputs)
    with session_scope(engine) as s:
        v1 = register_model(s, store, model, "gru", "metastasis")
        v2 = register_model(s, store, model, "gru", "metastasis")
        other = register_model(s, store, model, "other", "death")
    assert (v1.version, v2.version, other.version) == (1, 2, 1)
    assert v1.file_sha256 == v2.file_sha256 == other.file_sha256
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Blob).where(Blob.kind == "model")) == 1
        mv = get_version(s, "gru")
        assert mv.features == model.features
        assert mv.data_fingerprint == model.metadata["data_fingerprint"]
        assert mv.metrics["n_patients"] == model.metadata["metrics"]["n_patients"]
    (label, loaded), (label1, loaded1) = load(engine, store, "gru"), load(engine, store, "gru:1")
    assert (label, label1) == ("gru:2", "gru:1")
    assert len(list((tmp_path / "store").rglob("*.pt"))) == 1
    got = loaded1.predict_all_visits(inputs)
    np.testing.assert_array_equal(got["risk"].to_numpy(), expected["risk"].to_numpy())
    assert loaded.to_bytes() == model.to_bytes()


def test_promote_keeps_one_promoted_model_per_endpoint(engine: Engine, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    model = tiny_model()
    with session_scope(engine) as s:
        for name, endpoint in (("a", "metastasis"), ("a", "metastasis"), ("b", "metastasis"), ("c", "death")):
            register_model(s, store, model, name, endpoint)
    with session_scope(engine) as s:
        promote(s, "a:1")
        promote(s, "c")
    with session_scope(engine) as s:
        promote(s, "b:1")
    with session_scope(engine) as s:
        states = {f"{m.name}:{m.version}": m.state for m in s.scalars(select(ModelVersion))}
        assert states == {
            "a:1": ModelState.TRAINED,
            "a:2": ModelState.TRAINED,
            "b:1": ModelState.PROMOTED,
            "c:1": ModelState.PROMOTED,
        }
        assert promoted_model(s, "metastasis").name == "b"
        rows = list_models(s)
        assert [r["model"] for r in rows] == ["a:1", "a:2", "b:1", "c:1"]
        assert show_model(s, "b:1")["features"] == list(model.features)
    with session_scope(engine) as s:
        retire(s, "b:1")
    with session_scope(engine) as s:
        assert promoted_model(s, "metastasis") is None
        assert promoted_model(s, "death").name == "c"
    # the database itself refuses a second promoted model of one endpoint
    with pytest.raises(Exception, match=r"(?i)unique"), session_scope(engine) as s:
        for spec in ("a:1", "a:2"):
            mv = s.scalar(select(ModelVersion).where(ModelVersion.name == "a", ModelVersion.version == int(spec[-1])))
            mv.state = ModelState.PROMOTED
            s.flush()


@pytest.mark.parametrize(("spec", "message"), [("nope", "not registered"), ("gru:x", "not a number"), (":3", "NAME")])
def test_bad_model_specs(engine: Engine, tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(MetatrackError, match=message):
        load(engine, FileStore(tmp_path), spec)

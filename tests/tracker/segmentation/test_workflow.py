"""The segmentation model in the registry (SQLite and PostgreSQL): register, promote, find, load, apply; the risk
paths never see it."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine

from db import registry
from db.session import session_scope
from tests.helpers import tiny_model
from tests.tracker.segmentation.spheres import CFG, SPACING, cohort, sphere_scan
from tracker.errors import MetatrackError
from tracker.segmentation import SEGMENTATION_ENDPOINT
from tracker.segmentation.model import SegmentationModel, read_segmentation_model
from tracker.store import FileStore
from tracker.workflows import segmentation


@functools.lru_cache(maxsize=1)
def one_epoch_model() -> SegmentationModel:
    import dataclasses

    from tracker.segmentation.training import train_segmentation

    return train_segmentation(cohort(2, 1, seed=3), dataclasses.replace(CFG, max_epochs=1, min_epochs=1))


def test_register_promote_load_apply(engine: Engine, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    model = one_epoch_model()
    assert segmentation.promoted_segmentation(engine, store) is None
    with pytest.raises(MetatrackError, match="no segmentation model is promoted"):
        segmentation.segmentation_file(engine, store, None)
    first = segmentation.register(engine, store, model, "seg")
    second = segmentation.register(engine, store, model, "seg", promote=True)
    assert (first["model"], first["state"], second["model"], second["state"]) == (
        "seg:1",
        "trained",
        "seg:2",
        "promoted",
    )
    assert second["lesion_recall"] == model.metadata["metrics"]["lesion_recall"]
    found = segmentation.promoted_segmentation(engine, store)
    assert found is not None
    mv_id, path = found.model_version_id, found.path
    with session_scope(engine) as s:
        mv = registry.get_version(s, "seg:2")
        assert (mv.id, mv.endpoint, mv.hyperparameters["kind"], mv.features) == (
            mv_id,
            SEGMENTATION_ENDPOINT,
            "segmentation",
            [],
        )
        assert mv.data_fingerprint == model.metadata["data_fingerprint"]
        assert registry.promoted_models(s) == []  # rescore, alerts and the demo see no risk model
    loaded = read_segmentation_model(path)
    assert loaded is read_segmentation_model(path)  # cached
    image, _ = sphere_scan(np.random.default_rng(8))
    np.testing.assert_array_equal(
        loaded.predict_probability(image, SPACING, "cpu"), model.predict_probability(image, SPACING, "cpu")
    )


def test_a_risk_model_is_not_a_segmentation_model(engine: Engine, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    from tracker.workflows.models import register

    register(engine, store, tiny_model(), "risk", "metastasis")
    with pytest.raises(MetatrackError, match=r"model risk:1 is a rnn risk model, not a segmentation model"):
        segmentation.segmentation_file(engine, store, "risk")
    with session_scope(engine) as s:
        registry.promote(s, "risk:1")
    segmentation.register(engine, store, one_epoch_model(), "seg", promote=True)
    with session_scope(engine) as s:
        assert [mv.name for mv in registry.promoted_models(s)] == ["risk"]
        assert registry.promoted_model(s, SEGMENTATION_ENDPOINT).name == "seg"

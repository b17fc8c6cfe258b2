"""The shipped demo risk model: what its card claims, and risk that rises while the disease progresses."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tracker.deltas import patient_deltas
from tracker.demo_model import DEMO_BASE_FEATURES, DEMO_CARD, DEMO_MODEL_FILE
from tracker.survival import model_from_bytes


def _visits(patient: str, burden: list[tuple[float, float, float, float]]) -> pd.DataFrame:
    """Visits 90 days apart from (total volume, lesion count, new lesions, growing volume), with the pipeline's
    deltas, as `tracker.workflows.process` computes them."""
    rows: list[dict] = []
    previous: dict | None = None
    baseline: dict | None = None
    for i, (volume, count, new, growing) in enumerate(burden):
        day = 90.0 * i
        now: dict = {"days_from_baseline": day, "total_volume_mm3": volume, "lesion_count": count,
                     "new_lesion_count": new, "growing_volume_mm3": growing, "max_track_growth_30d": 0.0}  # fmt: skip
        now.update(patient_deltas(now, previous, baseline, days_since_previous=90.0 if i else 0.0,
                                  days_since_baseline=day))  # fmt: skip
        rows.append({"patient_id": patient, "time_days": day, **now})
        baseline = baseline or now
        previous = now
    return pd.DataFrame(rows)


def test_the_card_describes_the_shipped_model() -> None:
    card, model = json.loads(DEMO_CARD.read_text()), model_from_bytes(DEMO_MODEL_FILE.read_bytes())
    assert card["kind"] == model.kind
    assert card["trained_on"]["features"] == model.features
    assert all(f == "days_from_baseline" or any(f.endswith(b) for b in DEMO_BASE_FEATURES) for f in model.features)
    assert card["checked_on"]["processed_patients"] >= 30
    assert card["c_index"]["mean"] >= 0.65  # the bar, on processed patients the model never saw


def test_risk_rises_while_the_disease_progresses() -> None:
    """The fault the demo had: its 12-month risk fell at successive progressive visits."""
    model = model_from_bytes(DEMO_MODEL_FILE.read_bytes())
    stable = _visits("stable", [(5000.0, 3, 0, 0.0)] * 4)
    growing = _visits("growing", [(5000.0, 3, 0, 0.0), (8000.0, 4, 1, 3000.0), (14000.0, 6, 2, 8000.0),
                                  (24000.0, 8, 2, 14000.0)])  # fmt: skip
    risk = model.predict_all_visits(pd.concat([stable, growing], ignore_index=True), [12.0])
    by = {p: g.sort_values("visit_index")["risk"].to_numpy() for p, g in risk.groupby("patient_id")}
    assert by["growing"][0] == pytest.approx(by["stable"][0], abs=1e-6)  # the same baseline
    assert all(by["growing"][k] > by["stable"][k] for k in (1, 2, 3))
    assert by["growing"][3] > by["growing"][1]

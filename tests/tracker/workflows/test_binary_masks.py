"""Binary lesion masks (one value for every lesion, as most hospitals deliver them) track as labelled ones do.

A binary mask's lesions are its connected components, numbered by `label_lesions`; matching a follow-up against
a track must find the track's own component in the earlier mask, not every voxel of the mask's single value.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from db import migrate
from db.session import make_engine
from tests.helpers import predicted_edges, truth_edges
from tracker.lesions import Geometry, label_lesions
from tracker.records import Settings
from tracker.simulator import SimulationConfig, simulate_cohort
from tracker.store import FileStore
from tracker.workflows.ingest import ingest_many, read_manifest
from tracker.workflows.process import process_scans
from tracker.workflows.views import timeline

pytestmark = pytest.mark.slow


def _binarise(mask_path: Path, min_volume_mm3: float) -> dict[int, int]:
    """Rewrite a simulator label map as a binary mask; returns component label -> simulator label."""
    labelled = sitk.ReadImage(str(mask_path))
    arr = sitk.GetArrayFromImage(labelled)
    binary = sitk.GetImageFromArray((arr > 0).astype(np.uint8))
    binary.CopyInformation(labelled)
    sitk.WriteImage(binary, str(mask_path))
    components = label_lesions(arr > 0, Geometry.from_image(labelled), min_volume_mm3=min_volume_mm3)
    mapping = {}
    for c in np.unique(components[components > 0]):
        values = np.unique(arr[components == c])
        assert len(values) == 1, f"{mask_path.name}: component {c} holds simulator labels {values}: pick a seed"
        mapping[int(c)] = int(values[0])
    return mapping


def test_binary_masks_track_the_true_lesions(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    simulate_cohort(SimulationConfig(n_patients=1, seed=3, shape=(64, 64, 48), spacing=(4.0,) * 3), cohort)
    truth = json.loads((cohort / "truth.json").read_text())["patients"]["SIM001"]
    settings = Settings(preset="fast", shell_mm=0.0, features=False)
    requests = sorted(read_manifest(cohort / "manifest.csv"), key=lambda r: r.scan_date)
    assert all(r.mask is not None for r in requests)
    to_true = [_binarise(Path(str(r.mask)), settings.min_lesion_mm3) for r in requests]
    assert sum(len(m) > 1 for m in to_true) >= 2  # several lesions share the mask's one value on several scans

    engine = make_engine(f"sqlite:///{tmp_path / 'mt.db'}")
    migrate.upgrade(engine)
    store = FileStore(tmp_path / "store")
    _, failed = ingest_many(engine, store, requests)
    assert not failed
    report = process_scans(engine, store, settings, tmp_path / "work")
    assert not report.failed

    predicted = {(j, to_true[j][a], k, to_true[k][b]) for j, a, k, b in predicted_edges(timeline(engine, "SIM001"))}
    true = truth_edges(truth)
    hits = len(true & predicted)
    assert hits / max(len(predicted), 1) >= 0.9, (true, predicted)
    assert hits / max(len(true), 1) >= 0.9, (true, predicted)

"""The process workflow end to end on a simulated patient, scored against the simulator's ground truth.

One cohort is ingested and processed once per module (`processed`); the read-only tests check the timeline
captured right after that run, the tests that change the database (user targets, reprocessing, a rerun) come last.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, select

from db import migrate, repo
from db.models import Lesion, Scan, ScanState
from db.results import reset_from
from db.session import make_engine, session_scope
from tests.helpers import predicted_edges, truth_edges
from tracker.deltas import GROWING_VOLUME_RATIO, GROWTH_VOLUME_EPS_MM3, RATE_PERIOD_DAYS
from tracker.records import Settings
from tracker.simulator import SimulationConfig, simulate_cohort
from tracker.store import FileStore
from tracker.workflows.ingest import ingest_many, read_manifest
from tracker.workflows.locate import locate
from tracker.workflows.process import ProcessReport, process_scans
from tracker.workflows.recist_targets import set_targets
from tracker.workflows.views import timeline

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processed_cohort")]
SPACING_MM = 4.0


@dataclass
class Processed:
    engine: Engine
    store: FileStore
    work: Path
    report: ProcessReport
    n_scans: int
    timeline: dict[str, Any]  # as right after the first run
    truth: dict[str, Any]  # the simulator's truth of SIM001


def _process(engine: Engine, store: FileStore, work: Path) -> ProcessReport:
    return process_scans(engine, store, Settings(preset="fast", shell_mm=3.0), work)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    cfg = SimulationConfig(n_patients=1, seed=3, shape=(64, 64, 48), spacing=(SPACING_MM,) * 3)
    simulate_cohort(cfg, out)
    return out


@pytest.fixture(scope="module")
def processed(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Processed:
    root = tmp_path_factory.mktemp("processed")
    engine = make_engine(f"sqlite:///{root / 'mt.db'}")
    migrate.upgrade(engine)
    store = FileStore(root / "store")
    done, failed = ingest_many(engine, store, read_manifest(cohort / "manifest.csv"))
    assert not failed
    report = _process(engine, store, root / "work")
    truth = json.loads((cohort / "truth.json").read_text())["patients"]["SIM001"]
    return Processed(engine, store, root / "work", report, len(done), timeline(engine, "SIM001"), truth)


def test_every_scan_processed_once(processed: Processed) -> None:
    assert not processed.report.failed and len(processed.report.processed) == processed.n_scans
    scans = processed.timeline["scans"]
    assert [s["state"] for s in scans] == ["processed"] * processed.n_scans
    assert scans[0]["registration"] is None and all(s["registration"] is not None for s in scans[1:])


def test_tracks_link_the_true_lesions(processed: Processed) -> None:
    true_edges, pred_edges = truth_edges(processed.truth), predicted_edges(processed.timeline)
    hits = len(true_edges & pred_edges)
    assert hits / max(len(pred_edges), 1) >= 0.9, (true_edges, pred_edges)
    assert hits / max(len(true_edges), 1) >= 0.9, (true_edges, pred_edges)


def test_lesion_volumes_are_the_true_masks(processed: Processed) -> None:
    """A lesion label holding one true lesion measures exactly its voxels in the simulator's mask, which is within
    partial-volume error of the lesion's continuous volume."""
    checked = 0
    for scan, true_scan in zip(processed.timeline["scans"], processed.truth["scans"], strict=True):
        voxel_mm3 = float(np.prod(true_scan["grid"]["spacing"]))  # each scanner has its own slice spacing
        for les in scan["lesions"]:
            ids = true_scan["labels"].get(str(les["label"]), [])
            if len(ids) != 1:
                continue
            true = true_scan["lesions"][ids[0]]
            assert les["volume_mm3"] == pytest.approx(true["n_voxels"] * voxel_mm3)
            assert les["volume_mm3"] == pytest.approx(true["volume_mm3"], rel=0.25)  # 4x4x3 mm voxels, small lesions
            checked += 1
        truth_total = sum(true_scan["lesions"][i]["n_voxels"] for ids in true_scan["labels"].values() for i in ids)
        assert scan["patient_features"]["total_volume_mm3"] == pytest.approx(truth_total * voxel_mm3)
        assert scan["patient_features"]["lesion_count"] == len(true_scan["labels"])
    assert checked >= processed.n_scans


def test_recist_response_at_every_follow_up(processed: Processed) -> None:
    scans = processed.timeline["scans"]
    assert scans[0]["recist"]["response"] == "BL"
    assert all(s["recist"]["response"] in {"CR", "PR", "SD", "PD"} for s in scans[1:])


def test_mixed_response_features_follow_the_tracks(processed: Processed) -> None:
    """Growing volume and fastest growth against each continuing track's last sighting (scans with a split are
    left out: the timeline does not say which track split)."""
    last_seen: dict[int, tuple[float, date]] = {}
    checked = 0
    for scan in processed.timeline["scans"]:
        day = date.fromisoformat(scan["date"])
        pairs = [(les["volume_mm3"] + GROWTH_VOLUME_EPS_MM3, last_seen[les["track_id"]][0] + GROWTH_VOLUME_EPS_MM3,
                  (day - last_seen[les["track_id"]][1]).days, les["volume_mm3"])
                 for les in scan["lesions"] if les["change"] == "persistent"]  # fmt: skip
        if all(les["change"] != "split" for les in scan["lesions"]):
            pf = scan["patient_features"]
            grown = sum(v for now, before, _, v in pairs if now / before > GROWING_VOLUME_RATIO)
            assert pf["growing_volume_mm3"] == pytest.approx(grown)
            rates = [np.log(now / before) * RATE_PERIOD_DAYS / days for now, before, days, _ in pairs]
            assert pf["max_track_growth_30d"] == (pytest.approx(max(rates)) if rates else None)
            checked += bool(rates)
        last_seen.update({les["track_id"]: (les["volume_mm3"], day) for les in scan["lesions"]})
    assert checked >= 2


def test_locate_maps_the_true_landmarks(processed: Processed) -> None:
    """The truth's landmark pairs, mapped baseline -> follow-up through the stored registration."""
    scans, follow_up = processed.timeline["scans"], processed.truth["scans"][1]
    pairs = follow_up["landmarks"]
    base_pts = np.array([p["baseline"] for p in pairs])
    res = locate(processed.engine, processed.store, "SIM001", date.fromisoformat(scans[0]["date"]),
                 date.fromisoformat(follow_up["date"]), base_pts)  # fmt: skip
    mapped = np.array([p["to"] for p in res["points"]])
    err = np.linalg.norm(mapped - np.array([p["scan"] for p in pairs]), axis=1)
    initial = np.linalg.norm(base_pts - np.array([p["scan"] for p in pairs]), axis=1)
    assert err.mean() < 2.5 < initial.mean(), (err.mean(), initial.mean())  # 4 mm voxels


def test_user_targets_reassess_every_follow_up(processed: Processed) -> None:
    """Every follow-up re-assessed with the sum of the chosen tracks' longest diameters."""
    scans = processed.timeline["scans"]
    chosen = sorted(les["track_id"] for les in scans[0]["lesions"] if (les["long_axis_mm"] or 0) >= 10)[:1]
    rows = set_targets(processed.engine, "SIM001", chosen)
    for scan, row in zip(scans, rows, strict=True):
        expected = sum(les["long_axis_mm"] for les in scan["lesions"] if les["track_id"] in chosen and les["change"]
                       in (None, "new", "persistent"))  # fmt: skip
        assert row["sum_mm"] == pytest.approx(expected)
    roles = {les["track_id"]: les["recist_role"] for les in timeline(processed.engine, "SIM001")["scans"][0]["lesions"]}
    assert {t for t, r in roles.items() if r == "target"} == set(chosen)


def test_reprocessing_gives_the_same_tracks_and_a_rerun_writes_nothing(processed: Processed) -> None:
    def links(tl: dict) -> list:
        return [[(les["label"], les["track_id"], les["change"]) for les in s["lesions"]] for s in tl["scans"]]

    engine, store, work = processed.engine, processed.store, processed.work
    first = links(timeline(engine, "SIM001"))
    with session_scope(engine) as s:
        day = date.fromisoformat(processed.timeline["scans"][1]["date"])
        assert reset_from(s, "SIM001", day) == processed.n_scans - 1
    assert len(_process(engine, store, work).processed) == processed.n_scans - 1
    assert links(timeline(engine, "SIM001")) == first
    with session_scope(engine) as s:
        before = repo.table_counts(s)
    again = _process(engine, store, work)
    assert not again.processed and not again.failed
    with session_scope(engine) as s:
        assert repo.table_counts(s) == before


def test_failed_scan_writes_nothing_and_holds_back_later_scans(cohort: Path, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'mt.db'}")
    migrate.upgrade(engine)
    store = FileStore(tmp_path / "store")
    ingest_many(engine, store, read_manifest(cohort / "manifest.csv"))
    with session_scope(engine) as s:
        scans = list(s.scalars(select(Scan).order_by(Scan.scan_date)))
        second = scans[1]
        broken = store.find(second.image_sha256, ".nii.gz")
    saved = tmp_path / "saved.nii.gz"
    shutil.move(broken, saved)
    store_before = sorted(p.relative_to(store.root) for p in store.root.rglob("*") if p.is_file())
    report = _process(engine, store, tmp_path / "work")
    assert report.processed == [scans[0].id]
    assert list(report.failed) == [second.id] and "missing" in report.failed[second.id]
    assert report.waiting == [s.id for s in scans[2:]]
    with session_scope(engine) as s:
        failed = s.get(Scan, second.id)
        assert failed is not None and failed.state == ScanState.FAILED and "missing" in (failed.error or "")
        assert s.scalars(select(Lesion).where(Lesion.scan_id == second.id)).first() is None
    assert sorted(p.relative_to(store.root) for p in store.root.rglob("*") if p.is_file()) == store_before
    shutil.move(saved, broken)
    report = _process(engine, store, tmp_path / "work")
    assert report.processed == [s.id for s in scans[1:]] and not report.failed


def test_a_lost_database_stops_the_run_without_marking_scans(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database going away is not the scan's fault: the run stops in one line and no scan is marked failed."""
    from db.session import DatabaseUnavailable
    from tracker.workflows import process as workflow

    engine = make_engine(f"sqlite:///{tmp_path / 'mt.db'}")
    migrate.upgrade(engine)
    store = FileStore(tmp_path / "store")
    ingest_many(engine, store, read_manifest(cohort / "manifest.csv"))

    def gone(*args: object, **kwargs: object) -> bool:
        raise DatabaseUnavailable("database connection lost while saving; gave up after 4 tries")

    monkeypatch.setattr(workflow, "save_outcome", gone)
    with pytest.raises(DatabaseUnavailable):
        process_scans(engine, store, Settings(preset="affine", features=False), tmp_path / "work")
    with session_scope(engine) as s:
        assert {scan.state for scan in s.scalars(select(Scan))} == {ScanState.INGESTED}

"""`metatrack demo`: every pipeline step on a small built-in synthetic cohort, then its timeline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cli import output
from cli.context import AppState
from cli.render import print_timeline, write_cohort

if TYPE_CHECKING:
    from sqlalchemy import Engine

DEMO_SHAPE = (107, 107, 75)  # ~320 x 320 x 224 mm at 3 mm: quick to register on two cores
DEMO_SPACING = (3.0, 3.0, 3.0)
DEMO_MODEL = "demo-rnn"
DEMO_TRAINING_PATIENTS = 300
ENDPOINT = "metastasis"


def run_demo(state: AppState, *, patients: int, seed: int) -> None:
    """Simulate (once per seed and size) into the data home, ingest, process, score, and print the timeline."""
    from cli.processcmd import run_process
    from tracker.home import data_home
    from tracker.records import Settings
    from tracker.simulator import SimulationConfig, simulate_cohort
    from tracker.workflows import views
    from tracker.workflows.ingest import ingest_many, read_manifest

    out = data_home() / "demo" / f"cohort-n{patients}-seed{seed}"
    manifest = out / "manifest.csv"
    if not manifest.exists():
        cfg = SimulationConfig(n_patients=patients, seed=seed, shape=DEMO_SHAPE, spacing=DEMO_SPACING)
        output.log(f"1/6 simulating {patients} patients into {out}")
        with output.progress("simulate", patients, state.progress) as advance:
            simulate_cohort(cfg, out, progress=lambda i, n: advance())
    requests = read_manifest(manifest)
    engine, store = state.engine(), state.store()
    output.log(f"2/6 ingesting {len(requests)} scans")
    with output.progress("ingest", len(requests), state.progress) as advance:
        done, failed = ingest_many(engine, store, requests, lambda *a: advance())
    new = sum(r.status == "ingested" for r in done)
    output.log(f"    {new} new, {len(done) - new} already present, {len(failed)} failed")
    _import_events(engine, out / "events.csv")
    output.log("3/6 processing: registration, lesions, tracks, RECIST, radiomics, deltas")
    run_process(
        state, Settings(preset="fast", threads=2, seed=0, feature_config="ct_default"), patient=None, as_json=False
    )
    _ensure_model(state, seed)
    output.log("5/6 re-scoring risk with the promoted model")
    from tracker.workflows.rescore import rescore_all

    stats = rescore_all(engine, store, ENDPOINT)
    output.log(f"    {stats.get('rows_written', stats)} risk rows written")
    output.log("6/6 cohort timeline")
    rows = views.cohort(engine)
    first = views.timeline(engine, rows[0]["patient_id"]) if rows else None
    write_cohort(rows, "table", None)
    if first is not None:
        print_timeline(first)


def _import_events(engine: Engine, path: Path) -> None:
    import pandas as pd

    from tracker.workflows.models import add_events

    added = add_events(engine, pd.read_csv(path), ENDPOINT, source="simulator")
    output.log(f"    {added} clinical events imported")


def _ensure_model(state: AppState, seed: int) -> None:
    """Train, register and promote the demo model unless a model is promoted for the endpoint already."""
    from tracker.demo_model import latent_training_tables
    from tracker.survival import SurvivalModelConfig, train_model
    from tracker.workflows import models

    engine, store = state.engine(), state.store()
    if models.has_promoted(engine, ENDPOINT):
        output.log(f"4/6 a {ENDPOINT} model is promoted already")
        return
    output.log(
        f"4/6 training the demo risk model on a latent simulated cohort of {DEMO_TRAINING_PATIENTS} patients "
        "(features named as the pipeline's patient features)"
    )
    visits, events = latent_training_tables(DEMO_TRAINING_PATIENTS, seed + 1000)
    visits = visits.dropna(axis=1, how="all")
    cfg = SurvivalModelConfig()
    with output.progress("train", cfg.n_ensemble * cfg.max_epochs, state.progress) as advance:
        model = train_model(visits, events, cfg, seed=seed, progress=lambda e, n, loss: advance())
    spec = models.register(engine, store, model, DEMO_MODEL, ENDPOINT)["model"]
    models.promote(engine, spec)
    output.log(f"    registered and promoted {spec}")

"""`metatrack demo`: the whole pipeline on a small built-in synthetic cohort."""

from __future__ import annotations

from cli import output
from cli.context import AppState
from cli.render import write_cohort


def run_demo(state: AppState, *, patients: int, seed: int) -> None:
    """Simulate (once per seed and size) into the data home, ingest, process, and print the cohort timeline."""
    from db.session import session_scope
    from db.views import cohort
    from tracker.home import data_home
    from tracker.ingest import ingest_many, read_manifest
    from tracker.simulator import SimulationConfig, simulate_cohort

    out = data_home() / "demo" / f"cohort-n{patients}-seed{seed}"
    manifest = out / "manifest.csv"
    if not manifest.exists():
        cfg = SimulationConfig(n_patients=patients, seed=seed)
        output.log(f"simulating {patients} patients into {out}")
        with output.progress("simulate", patients, state.progress) as advance:
            simulate_cohort(cfg, out, progress=lambda i, n: advance())
    requests = read_manifest(manifest)
    engine, store = state.engine(), state.store()
    with output.progress("ingest", len(requests), state.progress) as advance:
        done, failed = ingest_many(engine, store, requests, lambda *a: advance())
    new = sum(r.status == "ingested" for r in done)
    output.log(f"ingested {new} new scans ({len(done) - new} already present, {len(failed)} failed)")
    with session_scope(engine) as s:
        rows = cohort(s)
    write_cohort(rows, "table", None)

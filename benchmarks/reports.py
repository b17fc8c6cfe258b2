"""Report timing: a 6-scan patient's HTML report (target <= 5 s) and a 300-patient cohort report (target <= 30 s).

Usage:
    python benchmarks/reports.py [--work DIR] [--patients 300] [--shape 107 107 75 --spacing 3]

The patient: one simulated patient with 5 follow-ups (demo grid by default), ingested, processed (fast preset) and
scored by a small model; the processed data stay in ``--work`` and are reused by the next run. The cohort: a
synthetic cohort bulk-loaded (``db.synthetic.fill_cohort``) with RECIST rows from its burden and risk rows from a
small model. Each report is timed end to end (database reads, snapshots, figures, HTML) in this process, beside a
peer in the same process: the patient's ``timeline --json`` view and the cohort's ``cohort`` table view. Report
time includes matplotlib's first import (the first report of a process pays it; measured separately).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

# Run as a script, this folder is on sys.path and benchmarks/registration.py would shadow the registration package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

TARGET_PATIENT_S = 5.0
TARGET_COHORT_S = 30.0
PATIENT = "SIM001"
ENDPOINT = "metastasis"


def _small_model(visits: pd.DataFrame, events: pd.DataFrame):
    from tracker.survival import SurvivalModelConfig, train_model

    cfg = SurvivalModelConfig(max_epochs=3, min_epochs=1, hidden_size=4, n_ensemble=1)
    return train_model(visits, events, cfg, seed=0)


def _score(engine, store, model) -> None:
    from tracker.workflows import models
    from tracker.workflows.rescore import rescore_all

    models.promote(engine, models.register(engine, store, model, "bench", ENDPOINT)["model"])
    rescore_all(engine, store, ENDPOINT)


def prepare_patient(work: Path, shape: tuple[int, int, int], spacing: float):
    """(engine, store) holding one processed, scored 6-scan patient (built once per work folder)."""
    from db import migrate
    from db.session import make_engine
    from tracker.demo_model import latent_training_tables
    from tracker.records import Settings
    from tracker.simulator import SimulationConfig, simulate_cohort
    from tracker.store import FileStore
    from tracker.workflows.ingest import ingest_many, read_manifest
    from tracker.workflows.models import add_events
    from tracker.workflows.process import process_scans

    work.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{work / 'patient.db'}")
    store = FileStore(work / "store")
    migrate.upgrade(engine)  # a patient processed by an earlier metatrack is reused at the current schema
    if (work / "ready").exists():
        return engine, store
    cfg = SimulationConfig(n_patients=1, seed=3, shape=shape, spacing=(spacing,) * 3, min_followups=5, max_followups=5)
    simulate_cohort(cfg, work / "sim")
    ingest_many(engine, store, read_manifest(work / "sim" / "manifest.csv"))
    t = time.perf_counter()
    done = process_scans(engine, store, Settings(preset="fast", threads=2, shell_mm=3.0), work / "tmp")
    if done.failed:
        raise SystemExit(f"processing failed: {done.failed}")
    print(f"(processing the patient took {time.perf_counter() - t:.0f} s; reused by later runs)")
    add_events(engine, pd.read_csv(work / "sim" / "events.csv"), ENDPOINT, source="simulator")
    visits, events = latent_training_tables(60, 7)
    _score(engine, store, _small_model(visits.dropna(axis=1, how="all"), events))
    (work / "ready").touch()
    return engine, store


def prepare_cohort(work: Path, n_patients: int):
    """(engine, store) holding a bulk-loaded synthetic cohort with RECIST rows and risk scores."""
    from db import migrate
    from db.reports import fill_recist
    from db.session import make_engine
    from db.synthetic import fill_cohort
    from tracker.store import FileStore
    from tracker.survival.synthetic import SLOPE_FEATURES, slope_cohort

    path = work / f"cohort-{n_patients}.db"
    path.unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    store = FileStore(work / "store")
    visits, events = slope_cohort(n_patients, seed=1)
    fill_cohort(engine, visits, events)
    _score(engine, store, _small_model(visits[["patient_id", "time_days", *SLOPE_FEATURES]], events))
    from tracker.workflows.views import cohort as cohort_rows

    rows = []
    for pid, group in pd.DataFrame(cohort_rows(engine)).groupby("patient_id", sort=False):
        burden = np.exp(visits.loc[visits["patient_id"] == pid, "burden_log"].to_numpy())[: len(group)]
        base, nadir = burden[0], burden[0]
        for k, (sid, value) in enumerate(zip(group["scan_id"], burden, strict=False)):
            pct = 100.0 * (value - base) / base
            response = "BL" if k == 0 else "PD" if value >= 1.2 * nadir else "PR" if pct <= -30 else "SD"
            nadir = min(nadir, value)
            rows.append(
                {
                    "scan_id": int(sid),
                    "sum_mm": float(value),
                    "baseline_sum_mm": float(base),
                    "nadir_mm": float(nadir),
                    "change_from_baseline_pct": None if k == 0 else float(pct),
                    "response": response,
                }
            )
    fill_recist(engine, rows)
    return engine, store


def _best_of(n: int, fn) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of `n` runs; CPU time shows the work when the machine is shared."""
    times = []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t, time.process_time() - c))
    return min(times)


def _verdict(seconds: float, target: float) -> str:
    return "ok" if seconds <= target else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "metatrack-bench-reports")
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--shape", type=int, nargs=3, default=(107, 107, 75))
    ap.add_argument("--spacing", type=float, default=3.0)
    args = ap.parse_args()

    t = time.perf_counter()
    import matplotlib.figure  # noqa: F401  (the first import, paid once per process)

    print(
        f"matplotlib import: {time.perf_counter() - t:.2f} s; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    from tracker.workflows import reports, views

    engine, store = prepare_patient(args.work, tuple(args.shape), args.spacing)
    out = args.work / "out"
    out.mkdir(exist_ok=True)
    n_scans = len(views.timeline(engine, PATIENT)["scans"])
    first, _ = _best_of(1, lambda: reports.write_patient_report(engine, store, PATIENT, out / "patient.html"))
    report_s, report_cpu = _best_of(
        3, lambda: reports.write_patient_report(engine, store, PATIENT, out / "patient.html")
    )
    peer_s, _ = _best_of(3, lambda: views.timeline(engine, PATIENT))
    print(
        f"patient report ({n_scans} scans, grid {tuple(args.shape)} at {args.spacing} mm): first {first:.2f} s, "
        f"then {report_s:.2f} s ({report_cpu:.2f} s CPU; "
        f"target <= {TARGET_PATIENT_S:.0f} s: {_verdict(report_s, TARGET_PATIENT_S)}); "
        f"timeline view {peer_s * 1000:.0f} ms (report / timeline = {report_s / peer_s:.0f}x); "
        f"{(out / 'patient.html').stat().st_size / 1e3:.0f} kB"
    )

    engine_c, _ = prepare_cohort(args.work, args.patients)
    cohort_s, cohort_cpu = _best_of(2, lambda: reports.write_cohort_report(engine_c, out / "cohort.html", ENDPOINT))
    peer_c, _ = _best_of(2, lambda: views.cohort(engine_c))
    print(
        f"cohort report ({args.patients} patients): {cohort_s:.2f} s ({cohort_cpu:.2f} s CPU; "
        f"target <= {TARGET_COHORT_S:.0f} s: "
        f"{_verdict(cohort_s, TARGET_COHORT_S)}); cohort table view {peer_c:.2f} s "
        f"(report / view = {cohort_s / peer_c:.1f}x); {(out / 'cohort.html').stat().st_size / 1e3:.0f} kB"
    )


if __name__ == "__main__":
    main()

"""Re-scoring benchmark: a synthetic cohort (default 10,000 patients x ~5 scans of patient features) in SQLite and
PostgreSQL, a small trained model promoted, then `rescore_all` timed (target >= 1,000 patients/s), run again
(must write nothing), and a killed worker (kill -9 mid-run in a subprocess) resumed with --reclaim.

    .venv/bin/python benchmarks/rescore.py [--patients 10000] [--backends sqlite,postgresql] [--workers 2]

PostgreSQL: a throw-away database on $METATRACK_TEST_PG's server (default postgres@127.0.0.1:5432), dropped after.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from sqlalchemy import Engine

from db import jobs
from db.migrate import upgrade
from db.registry import promote, register_model
from db.scores import row_stats
from db.session import make_engine, scratch_database, session_scope
from db.synthetic import fill_cohort
from tracker.store import FileStore
from tracker.survival.synthetic import SLOPE_FEATURES as FEATURES
from tracker.survival.synthetic import slope_cohort as synthetic_tables
from tracker.workflows import rescore

PG_ADMIN_URL = os.environ.get("METATRACK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AS_OF = date(2024, 6, 1)
TARGET_PATIENTS_PER_S = 1000.0
TRAIN_PATIENTS = 500
KILL_BATCH = 250
MEAN_SCANS = 7.0  # Poisson mean before follow-up ends: ~5 scans per patient on average
POLL_S = 0.05


def train_small_model(epochs: int):
    from tracker.survival import SurvivalModelConfig, train_model

    visits, events = synthetic_tables(TRAIN_PATIENTS, seed=1234, prefix="T")
    cfg = SurvivalModelConfig(max_epochs=epochs, min_epochs=min(epochs, 10), hidden_size=16)
    return train_model(
        visits[["patient_id", "time_days", *FEATURES]], events[["patient_id", "time_days", "event"]], cfg, seed=0
    )


def score_counts(engine: Engine, model_version_id: int | None = None) -> tuple[int, int, object]:
    """(rows, distinct keys, newest computed_at) of risk_scores."""
    with session_scope(engine) as s:
        return row_stats(s, model_version_id)


def killed_run(engine: Engine, url: str, store: FileStore, model) -> dict:
    with session_scope(engine) as s:
        done_before = jobs.counts(s, rescore.JOB_KIND)["done"]
    """Promote a new version (everyone stale), kill -9 a worker subprocess mid-run, resume with reclaim."""
    with session_scope(engine) as s:
        mv = register_model(s, store, model, "bench", "metastasis")
        promote(s, f"bench:{mv.version}")
        mv_id = mv.id
    planned = rescore.plan(engine, as_of=AS_OF)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--_worker", url, str(store.root), str(KILL_BATCH)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        with session_scope(engine) as s:
            done = jobs.counts(s, rescore.JOB_KIND)
        mid_batch = done["done"] >= done_before + KILL_BATCH and done["running"] > 0  # kill inside a batch
        if mid_batch or proc.poll() is not None:
            break
        time.sleep(POLL_S)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with session_scope(engine) as s:
        at_kill = jobs.counts(s, rescore.JOB_KIND)
    resumed = rescore.rescore_all(engine, store, as_of=AS_OF, reclaim=True)
    rows, distinct, _ = score_counts(engine, mv_id)
    with session_scope(engine) as s:
        final = jobs.counts(s, rescore.JOB_KIND)
    complete = rescore.plan(engine, as_of=AS_OF) == 0 and final["queued"] == final["running"] == 0
    ok = rows == distinct and complete and final["failed"] == 0
    return {
        "planned": planned,
        "done_at_kill": at_kill["done"] - done_before,
        "running_at_kill": at_kill["running"],
        "reclaimed": resumed["reclaimed"],
        "resumed_jobs": resumed["jobs_done"],
        "rows": rows,
        "duplicates": rows - distinct,
        "complete": complete,
        "ok": ok,
    }


def run_backend(name: str, url: str, n: int, model, workers: int, tmp: Path) -> list[dict]:
    engine = make_engine(url)
    upgrade(engine)
    store = FileStore(tmp / f"store-{name}")
    visits, events = synthetic_tables(n, seed=99, mean_scans=MEAN_SCANS)
    t0 = time.perf_counter()
    fill_cohort(engine, visits, events)
    fill_s = time.perf_counter() - t0
    with session_scope(engine) as s:
        mv = register_model(s, store, model, "bench", "metastasis")
        promote(s, f"bench:{mv.version}")
    w = workers if name == "postgresql" else 1
    first = rescore.rescore_all(engine, store, as_of=AS_OF, workers=w)
    rows1, distinct1, computed1 = score_counts(engine)
    second = rescore.rescore_all(engine, store, as_of=AS_OF, workers=w)
    rows2, _, computed2 = score_counts(engine)
    kill = killed_run(engine, url, store, model)
    engine.dispose()
    out = [
        {
            "backend": name,
            "run": f"rescore_all (workers={w})",
            "patients": first["patients"],
            "scans": len(visits),
            "seconds": first["seconds"],
            "patients_per_s": first["patients"] / first["seconds"],
            "rows_per_s": first["rows_written"] / first["seconds"],
            "rows": rows1,
            "note": f"fill {fill_s:.1f}s; target >= {TARGET_PATIENTS_PER_S:.0f} patients/s; dup {rows1 - distinct1}",
        },
        {
            "backend": name,
            "run": "again (idempotent)",
            "patients": second["patients"],
            "scans": len(visits),
            "seconds": second["seconds"],
            "patients_per_s": float("nan"),
            "rows_per_s": float("nan"),
            "rows": rows2,
            "note": f"new rows {rows2 - rows1}; written {second['rows_written']}; "
            f"computed_at unchanged {computed1 == computed2}",
        },
        {
            "backend": name,
            "run": "kill -9 + resume",
            "patients": kill["planned"],
            "scans": len(visits),
            "seconds": float("nan"),
            "patients_per_s": float("nan"),
            "rows_per_s": float("nan"),
            "rows": kill["rows"],
            "note": f"done at kill {kill['done_at_kill']}, running {kill['running_at_kill']}, reclaimed "
            f"{kill['reclaimed']}, resumed {kill['resumed_jobs']}, duplicates {kill['duplicates']}, "
            f"complete {kill['complete']}",
        },
    ]
    ok = rows2 == rows1 and second["rows_written"] == 0 and computed1 == computed2 and kill["ok"]
    out[0]["ok"] = out[1]["ok"] = out[2]["ok"] = ok
    return out


def _worker_main(url: str, store_root: str, batch: int) -> None:
    engine = make_engine(url)
    rescore.work(engine, FileStore(Path(store_root)), batch_size=batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--workers", type=int, default=1, help="workers on PostgreSQL")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        _worker_main(args._worker[0], args._worker[1], int(args._worker[2]))
        return
    t0 = time.perf_counter()
    model = train_small_model(args.epochs)
    print(f"model: {len(model.features)} features, trained in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for backend in args.backends.split(","):
            if backend == "sqlite":
                rows += run_backend("sqlite", f"sqlite:///{tmp / 'bench.db'}", args.patients, model, 1, tmp)
            elif backend == "postgresql":
                with scratch_database(PG_ADMIN_URL, "mt_bench") as url:
                    rows += run_backend("postgresql", url, args.patients, model, args.workers, tmp)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
    cols = ["backend", "run", "patients", "scans", "seconds", "patients_per_s", "rows_per_s", "rows", "ok", "note"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    if not all(r["ok"] for r in rows):
        raise SystemExit("FAILED: a check did not hold (see the table)")


if __name__ == "__main__":
    main()

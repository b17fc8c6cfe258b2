"""Cohort-scale reads: 10,000 simulated patients' rows (about 50,000 scans with lesions, tracks, features, deltas,
RECIST and risk scores; rows, not images) on PostgreSQL and SQLite, and the user-facing reads timed on them.

    .venv/bin/python benchmarks/scale.py [--patients 10000] [--small 1000] [--backends sqlite,postgresql]

Figures: `patients`, `timeline P --json` (in process, median and worst of a spread of patients, and end to end
through the CLI), `cohort --format parquet` (CLI, wall and peak RSS; also at --small patients: the CLI's fixed
cost of starting and importing), `export lesions` (CLI, wall and peak RSS at --small and --patients patients:
streaming keeps the peak flat) and `rescore` planning (every patient stale, then again with nothing to add).
Targets on PostgreSQL: timeline <= 100 ms, cohort <= 5 s for 50,000 scans. The SQLite column is the peer the
PostgreSQL figures are read against. PostgreSQL: a throw-away database on $METATRACK_TEST_PG's server (default
postgres@127.0.0.1:5432), dropped after; SQLite: a temporary file.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from db.migrate import upgrade
from db.session import make_engine, scratch_database
from db.synthetic import fill_cohort, fill_results
from tracker.survival.synthetic import slope_cohort
from tracker.workflows import rescore, views

PG_ADMIN_URL = os.environ.get("METATRACK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
METATRACK = str(Path(sys.executable).with_name("metatrack"))
MEAN_SCANS = 7.5  # Poisson mean before follow-up ends: about 5 scans per patient
AS_OF = date(2024, 6, 1)
TIMELINE_PATIENTS = 25
TIMELINE_TARGET_MS = 100.0
COHORT_TARGET_S = 5.0
SEED = 16


@contextmanager
def database(backend: str, tmp: Path, tag: str) -> Iterator[str]:
    """An empty database URL of the backend, removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / f'{tag}.db'}"
    elif backend == "postgresql":
        with scratch_database(PG_ADMIN_URL, "mt_scale") as url:
            yield url
    else:
        raise SystemExit(f"unknown backend {backend!r}")


def fill(url: str, n: int) -> dict[str, Any]:
    """Patients, scans, patient features, events and every result row; returns row counts and load time."""
    engine = make_engine(url)
    upgrade(engine)
    visits, events = slope_cohort(n, seed=SEED, mean_scans=MEAN_SCANS)
    t0 = time.perf_counter()
    fill_cohort(engine, visits, events)
    counts: dict[str, Any] = dict(fill_results(engine, seed=SEED))
    counts["fill_s"] = time.perf_counter() - t0
    engine.dispose()
    return counts


def timeline_json(engine: Engine, name: str) -> str:
    """What `timeline NAME --json` prints."""
    return json.dumps(views.timeline(engine, name))


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time in seconds of `repeat` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


# Runs argv and prints its peak RSS (KiB): a grandchild, as a child forked from this process would inherit this
# process's own high-water mark in ru_maxrss.
_RSS_RUNNER = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, st, ru = os.wait4(p.pid, 0); "
    "print(ru.ru_maxrss, file=sys.stderr); sys.exit(os.waitstatus_to_exitcode(st))"
)


def cli(url: str, home: Path, *args: str) -> tuple[float, float]:
    """Run the CLI in a subprocess: (wall s, its peak RSS in MiB); NaNs when it fails (said on stderr), so that
    one failed command does not lose the run's other figures."""
    env = dict(os.environ, METATRACK_HOME=str(home))
    argv = [sys.executable, "-c", _RSS_RUNNER, METATRACK, "--db", url, "--quiet", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(f"FAILED: metatrack {' '.join(args)}: {proc.stderr.strip()}", file=sys.stderr)
        return float("nan"), float("nan")
    return wall, int(proc.stderr.split()[-1]) / 1024


def measure(backend: str, url: str, small_url: str, home: Path, counts: dict[str, Any]) -> dict[str, Any]:
    engine = make_engine(url)
    out: dict[str, Any] = {"scans": counts["scans"], "lesions": counts["lesions"], "fill_s": counts["fill_s"]}
    out["patients_s"], rows = timed(lambda: views.patients(engine), repeat=3)
    names = [r["patient_id"] for r in rows]
    picks = names[:: max(1, len(names) // TIMELINE_PATIENTS)][:TIMELINE_PATIENTS]
    times = []
    for name in picks:
        t, _ = timed(functools.partial(timeline_json, engine, name), repeat=3)
        times.append(t * 1000)
    out["timeline_ms"] = statistics.median(times)
    out["timeline_worst_ms"] = max(times)
    out["timeline_cli_s"], _ = cli(url, home, "timeline", picks[0], "--json")
    out["cohort_s"], rows_ = timed(lambda: views.cohort(engine))
    out["cohort_rows"] = len(rows_)
    del rows_
    parquet = str(home / f"cohort-{backend}.parquet")
    out["cohort_cli_s"], out["cohort_rss_mib"] = cli(url, home, "cohort", "--format", "parquet", "--output", parquet)
    out["cohort_small_cli_s"], _ = cli(small_url, home, "cohort", "--format", "parquet", "--output", parquet)
    out["plan_s"], out["planned"] = timed(lambda: rescore.plan(engine, as_of=AS_OF))
    out["replan_s"], out["replanned"] = timed(lambda: rescore.plan(engine, as_of=AS_OF))
    engine.dispose()
    dest = str(home / f"lesions-{backend}.csv")
    out["export_s"], out["export_rss_mib"] = cli(url, home, "export", "lesions", "--output", dest)
    _, out["export_small_rss_mib"] = cli(small_url, home, "export", "lesions", "--output", dest)
    return out


ROWS = (
    ("rows: scans / lesions", lambda r: f"{r['scans']} / {r['lesions']}", ""),
    ("fill (s)", lambda r: f"{r['fill_s']:.1f}", ""),
    ("patients (s)", lambda r: f"{r['patients_s']:.3f}", ""),
    ("timeline --json median (ms)", lambda r: f"{r['timeline_ms']:.1f}", f"<= {TIMELINE_TARGET_MS:.0f}"),
    ("timeline --json worst (ms)", lambda r: f"{r['timeline_worst_ms']:.1f}", ""),
    ("timeline --json CLI (s)", lambda r: f"{r['timeline_cli_s']:.2f}", ""),
    ("cohort rows (workflow, s)", lambda r: f"{r['cohort_s']:.2f}", ""),
    ("cohort --format parquet CLI (s)", lambda r: f"{r['cohort_cli_s']:.2f}", f"<= {COHORT_TARGET_S:.0f}"),
    ("cohort parquet CLI at --small patients (s)", lambda r: f"{r['cohort_small_cli_s']:.2f}", ""),
    ("cohort CLI peak RSS (MiB)", lambda r: f"{r['cohort_rss_mib']:.0f}", ""),
    ("export lesions CLI (s)", lambda r: f"{r['export_s']:.2f}", "streaming"),
    (
        "export lesions peak RSS small / full (MiB)",
        lambda r: f"{r['export_small_rss_mib']:.0f} / {r['export_rss_mib']:.0f}",
        "flat",
    ),
    ("rescore plan, all stale (s)", lambda r: f"{r['plan_s']:.2f} ({r['planned']} jobs)", ""),
    ("rescore plan again (s)", lambda r: f"{r['replan_s']:.2f} ({r['replanned']} jobs)", ""),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=1_000, help="patients of the second database (fixed costs, memory)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    results: dict[str, dict[str, Any]] = {}
    backends = args.backends.split(",")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for backend in backends:
            with database(backend, tmp, "full") as url, database(backend, tmp, "small") as small_url:
                counts = fill(url, args.patients)
                fill(small_url, args.small)
                print(f"{backend}: filled {counts}", file=sys.stderr)
                results[backend] = measure(backend, url, small_url, tmp, counts)
    print(f"{args.patients} patients; --small {args.small} patients")
    print(" | ".join(["measure", *backends, "target (PostgreSQL)"]))
    for label, fmt, target in ROWS:
        print(" | ".join([label, *(fmt(results[b]) for b in backends), target]))


if __name__ == "__main__":
    main()

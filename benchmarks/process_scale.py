"""`process` on Dask: one simulated cohort processed by `--workers 1` (in one process) and `--workers 2`, and a
`--workers 2` run in which one worker process is SIGKILLed mid-patient.

    .venv/bin/python benchmarks/process_scale.py [--patients 8] [--preset affine] [--no-features]

Each run is the real console script on its own copy of one ingested SQLite data home, with `--threads 1` (one
registration thread) and `--threads-per-worker 1`. Printed: each run's wall and CPU time (start-up included; the
CPU time of every process of the run, which a loaded machine does not inflate the way it does wall time) and the
ratio of `--workers 2` to `--workers 1` (target <= 0.6 on 2 cores); whether tracks, RECIST, patient features and
lesion feature values equal the in-process run's (numbers to 1e-9); for the killed run, which worker died (the
first to start its second scan, i.e. with its patient's baseline committed), the rows per table against the
in-process run's (a duplicate would show as an extra row) and the scans left unprocessed (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests.helpers

from db.harmonisation import config_by_name, feature_matrix
from db.migrate import upgrade
from db.repo import table_counts
from db.session import make_engine, session_scope
from tests.helpers import result_differences
from tracker.simulator import SimulationConfig, simulate_cohort
from tracker.store import FileStore
from tracker.workflows.ingest import ingest_many, read_manifest
from tracker.workflows.process import count_pending
from tracker.workflows.views import patients, timeline

ROOT = Path(__file__).resolve().parents[1]
METATRACK = Path(sys.executable).with_name("metatrack")
TARGET_RATIO = 0.6
TOLERANCE = 1e-9
FEATURE_CONFIG = "ct_default"
_WORK_DIR = re.compile(r"^scan-(\d+)-")


def make_template(where: Path, n_patients: int, spacing_mm: float = 4.0) -> Path:
    """A data home with the simulated cohort ingested (SQLite); returns it. The grid covers the simulator's field
    of view (~256 x 256 x 192 mm) at `spacing_mm` (4 mm: 64 x 64 x 48)."""
    shape = (round(256 / spacing_mm), round(256 / spacing_mm), round(192 / spacing_mm))
    cfg = SimulationConfig(
        n_patients=n_patients, seed=11, shape=shape, spacing=(spacing_mm,) * 3, min_followups=2, max_followups=2
    )
    simulate_cohort(cfg, where / "cohort")
    home = where / "template"
    engine = make_engine(f"sqlite:///{home / 'metatrack.db'}")
    upgrade(engine)
    done, failed = ingest_many(engine, FileStore(home / "store"), read_manifest(where / "cohort" / "manifest.csv"))
    engine.dispose()
    if failed:
        raise SystemExit(f"ingest failed: {failed[0][1]}")
    print(
        f"cohort: {n_patients} patients, {len(done)} scans, {shape[0]}x{shape[1]}x{shape[2]} at {spacing_mm:g} mm",
        file=sys.stderr,
    )
    return home


def results(url: str, features: bool) -> dict[str, Any]:
    """Tracks, RECIST and patient features per scan (timeline, ids left out) and lesion feature values, keyed by
    pseudonym, date and label; rows per table."""
    engine = make_engine(url)
    out: dict[str, Any] = {}
    lesion_key: dict[int, str] = {}
    try:
        for p in patients(engine):
            for scan in timeline(engine, p["patient_id"])["scans"]:
                key = f"{p['patient_id']}/{scan['date']}"
                for les in scan["lesions"]:
                    lesion_key[les.pop("id")] = f"{key}/{les['label']}"
                scan.pop("id")
                out[key] = scan
        with session_scope(engine) as s:
            if features:
                config_id = config_by_name(s, FEATURE_CONFIG).id
                for region in ("lesion", "shell"):
                    wide, _ = feature_matrix(s, config_id, region)
                    for lesion_id, row in wide.iterrows():
                        for tag, value in row.items():
                            out[f"features/{lesion_key[int(lesion_id)]}/{region}/{tag}"] = float(value)
            out["rows"] = table_counts(s)
    finally:
        engine.dispose()
    return out


def run(template: Path, where: Path, args: list[str], kill_mid_patient: bool = False) -> dict[str, Any]:
    """`metatrack process ARGS` on a copy of the template; with `kill_mid_patient`, SIGKILL the first worker
    process that starts its second scan (its work folders name its pid)."""
    home = where / "home"
    shutil.copytree(template, home)
    url = f"sqlite:///{home / 'metatrack.db'}"
    env = {k: v for k, v in os.environ.items() if k != "METATRACK_DB"}
    env["METATRACK_HOME"] = str(home)
    cmd = [str(METATRACK), "--db", url, "--no-progress", "process", *args]
    killed: list[int] = []
    cpu_before = _children_cpu_s()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_mid_patient:
        watcher = threading.Thread(target=_kill_mid_patient, args=(home / "tmp", proc, killed), daemon=True)
        watcher.start()
    stdout, stderr = proc.communicate(timeout=3600)
    wall = time.monotonic() - start
    cpu = _children_cpu_s() - cpu_before
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n{stderr}")
    engine = make_engine(url)
    left = count_pending(engine)
    engine.dispose()
    processed = json.loads(stdout)["processed"]
    return {"wall_s": wall, "cpu_s": cpu, "url": url, "killed": killed, "left": left, "processed": processed}


def _children_cpu_s() -> float:
    """CPU seconds of the finished child processes so far (the CLI and, reaped by their nannies, its workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _kill_mid_patient(workroot: Path, proc: subprocess.Popen, killed: list[int]) -> None:
    seen: dict[int, set[str]] = {}
    while proc.poll() is None:
        try:
            names = os.listdir(workroot)
        except FileNotFoundError:
            names = []
        for name in names:
            m = _WORK_DIR.match(name)
            if m:
                seen.setdefault(int(m.group(1)), set()).add(name)
        ready = [pid for pid, dirs in seen.items() if len(dirs) >= 2 and pid != proc.pid]
        if ready:
            os.kill(ready[0], signal.SIGKILL)
            killed.append(ready[0])
            return
        time.sleep(0.02)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--preset", default="affine")
    ap.add_argument("--no-features", action="store_true")
    ap.add_argument("--spacing", type=float, default=4.0, help="voxel size, mm (4: 64x64x48; 2.5: 102x102x77)")
    ap.add_argument("--keep", type=Path, help="work here and keep the data homes (default: a temp folder)")
    args = ap.parse_args()
    features = not args.no_features
    common = ["--preset", args.preset, "--threads", "1", "--threads-per-worker", "1", "--json"]
    if not features:
        common.append("--no-features")
    with tempfile.TemporaryDirectory(prefix="process_scale_") as scratch:
        root = args.keep or Path(scratch)
        template = make_template(root, args.patients, args.spacing)
        one = run(template, root / "w1", [*common, "--workers", "1"])
        two = run(template, root / "w2", [*common, "--workers", "2"])
        kill = run(template, root / "kill", [*common, "--workers", "2"], kill_mid_patient=True)
        ref = results(one["url"], features)
        ratio = two["wall_s"] / one["wall_s"]
        print(f"{'run':<26}{'wall s':>8}{'CPU s':>8}{'scans':>7}  equal to --workers 1")
        print(f"{'--workers 1 (in-process)':<26}{one['wall_s']:8.1f}{one['cpu_s']:8.1f}{one['processed']:7d}  -")
        for name, r in (("--workers 2", two), ("--workers 2, one killed", kill)):
            diff = result_differences(results(r["url"], features), ref, TOLERANCE)
            same = "yes" if not diff else "NO: " + "; ".join(diff[:3])
            print(f"{name:<26}{r['wall_s']:8.1f}{r['cpu_s']:8.1f}{r['processed']:7d}  {same}")
        print(f"wall-time ratio --workers 2 / --workers 1: {ratio:.2f} (target <= {TARGET_RATIO})")
        rows_kill, rows_ref = results(kill["url"], False)["rows"], ref["rows"]
        extra = {t: rows_kill[t] - rows_ref[t] for t in rows_ref if rows_kill[t] != rows_ref[t]}
        print(
            f"killed run: worker pid {kill['killed'] or 'none (the run ended first)'} SIGKILLed mid-patient; "
            f"rows per table differing from --workers 1: {extra or 'none'}; scans left unprocessed: {kill['left']}"
        )


if __name__ == "__main__":
    main()

"""`metatrack process --workers N` and `--scheduler ADDRESS`: the real console script on a small ingested cohort.

One cohort (3 patients, 2 scans each, 64x64x48 at 4 mm, affine registration, no radiomics) is ingested once into a
SQLite template; each test runs the command on a copy (METATRACK_HOME in tmp). `reference` is the timelines one
uninterrupted in-process run makes (ids left out).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster
from typer.testing import CliRunner

from cli.main import app
from db.session import make_engine
from tests.helpers import ingested_home
from tracker.simulator import SimulationConfig
from tracker.workflows.process import count_pending
from tracker.workflows.views import patients, timeline

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("process_workers_cohort")]

ROOT = Path(__file__).resolve().parents[2]
METATRACK = Path(sys.executable).with_name("metatrack")
PROCESS = ["--no-progress", "process", "--preset", "affine", "--no-features", "--threads", "1"]
N_SCANS = 6  # 3 patients on 2 workers: one is still unstarted when the first scan lands (the Ctrl-C test)


def _timelines(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        out = {}
        for p in patients(engine):
            tl = timeline(engine, p["patient_id"])
            for s in tl["scans"]:
                s.pop("id")
                for les in s["lesions"]:
                    les.pop("id")
            out[p["patient_id"]] = tl
        return out
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("workers")
    cfg = SimulationConfig(
        n_patients=3, seed=4, shape=(64, 64, 48), spacing=(4.0, 4.0, 4.0), min_followups=1, max_followups=1
    )
    return ingested_home(root, cfg, N_SCANS)


def _copy(template: Path, where: Path) -> tuple[Path, str]:
    home = where / "home"
    shutil.copytree(template, home)
    return home, f"sqlite:///{home / 'metatrack.db'}"


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "METATRACK_DB"}
    env["METATRACK_HOME"] = str(home)
    return env


def _run(home: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(METATRACK), "--db", url, *PROCESS, *args]
    return subprocess.run(cmd, env=_env(home), cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home, url = _copy(template, tmp_path_factory.mktemp("reference"))
    res = _run(home, url)
    assert res.returncode == 0, res.stderr
    return _timelines(url)


def test_two_workers_print_the_dashboard_and_process_every_scan(
    template: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    home, url = _copy(template, tmp_path)
    res = _run(home, url, "--workers", "2", "--json")
    assert res.returncode == 0, res.stderr
    assert "dask scheduler tcp://" in res.stderr and "dashboard http://" in res.stderr
    assert json.loads(res.stdout)["processed"] == N_SCANS
    assert _timelines(url) == reference


def test_scheduler_file_of_a_cluster_started_in_the_test(
    template: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    home, url = _copy(template, tmp_path)
    sched_file = tmp_path / "scheduler.json"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            client.write_scheduler_file(str(sched_file))
            res = _run(home, url, "--scheduler", str(sched_file))
            assert len(client.scheduler_info()["workers"]) == 2  # the test's cluster is still there
    assert res.returncode == 0, res.stderr
    assert f"dask scheduler {cluster.scheduler_address}" in res.stderr
    assert f"processed {N_SCANS} scans, 0 failed, 0 waiting" in res.stderr
    assert _timelines(url) == reference


def test_ctrl_c_leaves_no_scan_half_written_and_a_rerun_finishes(
    template: Path, reference: dict[str, Any], tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) once the first scan is processed: the
    run stops, every scan is processed or untouched, and a rerun in one process ends as the reference."""
    home, url = _copy(template, tmp_path)
    cmd = [str(METATRACK), "--db", url, *PROCESS, "--workers", "2"]
    proc = subprocess.Popen(
        cmd,
        env=_env(home),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # a suite started in the background by a non-interactive shell inherits SIGINT ignored, and a Python that
        # starts with SIGINT ignored never raises KeyboardInterrupt: give the run a terminal's default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    engine = make_engine(url)
    try:
        deadline = time.monotonic() + 240
        while count_pending(engine) == N_SCANS and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
        assert stderr.strip().splitlines()[-1].startswith("error: interrupted: no patient was started after it")
        states = {s["state"] for tl in _timelines(url).values() for s in tl["scans"]}
        assert states <= {"processed", "ingested"} and "processed" in states, stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        engine.dispose()
    res = _run(home, url)
    assert res.returncode == 0, res.stderr
    assert _timelines(url) == reference
    assert not list((home / "tmp").glob("scan-*")) and not list((home / "store").rglob(".incoming-*"))


def test_scheduler_and_workers_together_are_a_usage_error(home: Path) -> None:
    res = CliRunner().invoke(app, ["process", "--scheduler", "tcp://127.0.0.1:8786", "--workers", "2"])
    assert res.exit_code == 2 and "--scheduler uses the cluster's own workers" in res.stderr


def test_an_unreachable_scheduler_is_one_line(template: Path, tmp_path: Path) -> None:
    home, url = _copy(template, tmp_path)
    res = _run(home, url, "--scheduler", "tcp://127.0.0.1:9")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Dask scheduler tcp://127.0.0.1:9"), lines

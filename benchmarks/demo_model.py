"""Make the demo's risk model and check it on simulated patients it never saw, imaged and processed for real.

The demo ships ``tracker/data/demo_model.zip`` and its card ``tracker/data/demo_model.json``, both written here:

1. the shipped model: an RNN trained on the simulator's latent cohort (300 patients, seed 1000) restricted to the
   patient features the pipeline measures as the latent table defines them (``tracker.demo_model``);
2. the check: a simulated cohort on the demo's grid (40 patients, seed 4242) ingested and processed by the real
   pipeline (``fast`` preset) into its own database; none of its patients was seen in training. The score is
   Harrell's C of the 12-month risk after the k-th visit against the time from that visit to the event, per
   landmark k = 1..4 and averaged over the landmarks;
3. beside it, in the same run: the landmark Cox on the same training table; the previous demo model (an RNN on
   every latent column, intensity statistics and RECIST sum included, whose measured counterparts differ in
   scale); and both kinds trained on the processed cohort's own measured features, scored by 5-fold
   patient-grouped cross-validation (too few patients to train well: the reason the demo trains on the latent
   cohort).

    python benchmarks/demo_model.py --work /tmp/demo-model            # simulate, process (~30 min on 2 cores)
    python benchmarks/demo_model.py --work /tmp/demo-model --write     # and write tracker/data/demo_model.*

The processed cohort in ``--work`` is made once (``process`` picks up what is left).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracker.demo_model import DEMO_CARD, DEMO_MODEL_FILE, ENDPOINT  # noqa: E402
from tracker.survival.config import DAYS_PER_MONTH  # noqa: E402
from tracker.survival.metrics import harrell_c  # noqa: E402

COHORTS = {"train": (40, 4242)}
LATENT = (300, 1000)  # latent training cohort: patients, seed
SPACING_MM = 3.0  # the demo's grid (cli.demo.DEMO_SHAPE at 3 mm)
HORIZON_MONTHS = 12.0
LANDMARKS = (1, 2, 3, 4)


def _metatrack(home: Path, *args: str) -> None:
    env = {**os.environ, "METATRACK_HOME": str(home)}
    env.pop("METATRACK_DB", None)
    cmd = [sys.executable, "-c", "from cli.main import main; main()", "--no-progress", *args]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def processed_cohort(work: Path, name: str) -> str:
    """The database URL of a simulated cohort processed by the pipeline (made once; ``work/name`` is its data
    home, ``work/name/cohort`` the simulated files)."""
    n, seed = COHORTS[name]
    home = work / name
    cohort = home / "cohort"
    if not (cohort / "manifest.csv").exists():
        _metatrack(home, "simulate", str(cohort), "-n", str(n), "--seed", str(seed), "--spacing", str(SPACING_MM))
        _metatrack(home, "ingest", "--manifest", str(cohort / "manifest.csv"))
        _metatrack(home, "events", "import", str(cohort / "events.csv"), "--endpoint", ENDPOINT)
    _metatrack(home, "process", "--preset", "fast", "--threads", "2")
    return f"sqlite:///{home / 'metatrack.db'}"


def tables(db: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    from db.session import make_engine
    from tracker.workflows.models import database_tables

    return database_tables(make_engine(db), ENDPOINT)


def landmark_c(model: Any, visits: pd.DataFrame, events: pd.DataFrame) -> dict[str, float]:
    """Landmark C of one model's risks (see :func:`landmark_c_of`)."""
    return landmark_c_of(model.predict_all_visits(visits, [HORIZON_MONTHS]), events)


def landmark_c_of(risk: pd.DataFrame, events: pd.DataFrame) -> dict[str, float]:
    """Harrell's C of the 12-month risk after visit k against the time from visit k to the event (k = LANDMARKS),
    over the patients whose k-th visit precedes their event; ``mean`` averages the landmarks."""
    ev = events.set_index("patient_id")
    out: dict[str, float] = {}
    for k in LANDMARKS:
        at = risk[risk["visit_index"] == k]
        t_event = ev.loc[at["patient_id"], "time_days"].to_numpy(dtype=np.float64)
        remaining = (t_event - at["time_days"].to_numpy(dtype=np.float64)) / DAYS_PER_MONTH
        keep = remaining > 0
        flags = ev.loc[at["patient_id"], "event"].to_numpy(dtype=int)[keep]
        if keep.sum() >= 5 and flags.sum() >= 2:
            out[f"landmark_{k}"] = harrell_c(remaining[keep], flags, at["risk"].to_numpy()[keep])
    out["mean"] = float(np.mean(list(out.values())))
    return out


def train(kind: str, visits: pd.DataFrame, events: pd.DataFrame, seed: int = 0) -> Any:
    from tracker.survival import SurvivalModelConfig
    from tracker.survival.kinds import model_kind

    return model_kind(kind).train(visits, events, SurvivalModelConfig(), seed=seed)


def cross_validated_c(kind: str, visits: pd.DataFrame, events: pd.DataFrame, folds: int = 5) -> dict[str, float]:
    """Landmark C of out-of-fold risks: patient-grouped folds, every patient scored by a model trained without it."""
    patients = np.array(sorted(events["patient_id"]))
    order = np.random.default_rng(0).permutation(len(patients))
    parts = []
    for f in range(folds):
        test = set(patients[order[f::folds]])
        held = visits["patient_id"].isin(test)
        model = train(kind, visits[~held], events[~events["patient_id"].isin(test)])
        parts.append(model.predict_all_visits(visits[held], [HORIZON_MONTHS]))
    return landmark_c_of(pd.concat(parts, ignore_index=True), events)


def latent_model(all_columns: bool, kind: str = "rnn") -> Any:
    """A model trained on the latent cohort: the demo's columns, or every latent column (the previous demo)."""
    from tracker.demo_model import demo_training_tables, latent_training_tables

    if all_columns:
        visits, events = latent_training_tables(*LATENT)
        visits = visits.dropna(axis=1, how="all")
    else:
        visits, events = demo_training_tables(*LATENT)
    return train(kind, visits, events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the processed cohort")
    parser.add_argument("--write", action="store_true", help="write tracker/data/demo_model.zip and .json")
    parser.add_argument("--no-process", action="store_true", help="use the patients processed so far")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    home = args.work / "train"
    db = f"sqlite:///{home / 'metatrack.db'}" if args.no_process else processed_cohort(args.work, "train")
    visits, events = tables(db)
    events = events[events["patient_id"].isin(visits["patient_id"])]
    print(f"processed cohort: {len(events)} patients, {len(visits)} visits, {int(events['event'].sum())} events")

    shipped = latent_model(all_columns=False)
    rows = {
        "shipped: rnn, latent cohort, demo features": landmark_c(shipped, visits, events),
        "landmark-cox, latent cohort, demo features": landmark_c(latent_model(False, "landmark-cox"), visits, events),
        "previous demo: rnn, latent cohort, every column": landmark_c(latent_model(True), visits, events),
    }
    for kind in ("rnn", "landmark-cox"):
        rows[f"{kind}, processed cohort itself (5-fold CV)"] = cross_validated_c(kind, visits, events)
    print(f"\nC of the {HORIZON_MONTHS:.0f}-month risk on patients each model never saw (Harrell), per landmark:")
    print(pd.DataFrame(rows).T.round(3).to_string())

    if args.write:
        DEMO_MODEL_FILE.parent.mkdir(parents=True, exist_ok=True)
        DEMO_MODEL_FILE.write_bytes(shipped.to_bytes())
        c = rows["shipped: rnn, latent cohort, demo features"]
        card = {
            "kind": shipped.kind,
            "endpoint": ENDPOINT,
            "trained_on": {"latent_patients": LATENT[0], "seed": LATENT[1], "features": shipped.features},
            "checked_on": {
                "processed_patients": len(events),
                "visits": len(visits),
                "events": int(events["event"].sum()),
                "simulation_seed": COHORTS["train"][1],
                "preset": "fast",
            },
            "horizon_months": HORIZON_MONTHS,
            "c_index": {m: round(x, 4) for m, x in c.items()},
            "compared": {k: round(v["mean"], 4) for k, v in rows.items()},
            "made_by": "python benchmarks/demo_model.py --work DIR --write",
        }
        DEMO_CARD.write_text(json.dumps(card, indent=2) + "\n")
        print(f"\nwrote {DEMO_MODEL_FILE.relative_to(ROOT)} and {DEMO_CARD.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

"""`metatrack demo`: every pipeline step on a small built-in synthetic cohort, then its timeline."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli import output
from cli.context import AppState
from cli.render import print_timeline, write_cohort
from tracker.demo_model import ENDPOINT

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from tracker.workflows.ingest import ScanRequest

DEMO_SHAPE = (107, 107, 75)  # ~320 x 320 x 224 mm at 3 mm: quick to register on two cores
DEMO_SPACING = (3.0, 3.0, 3.0)
DEMO_MODEL = "demo-risk"
DEMO_SEGMENTATION_MODEL = "demo-lesions"
STEPS = 8
# ~100 s of CPU (2 threads) on the 3-patient demo; so short a training rarely finds a lesion on its own: propagation
# finds the tracked ones, and `metatrack segment train` trains a full model
DEMO_SEGMENTATION_MIN_RECALL = 0.5  # the demo promotes its small model only when it finds this share of lesions
DEMO_SEGMENTATION_EPOCHS = 4


def run_demo(state: AppState, *, patients: int, seed: int) -> None:
    """Simulate (once per seed and size) into the data home, ingest (the first patient's last follow-up without
    its mask), train a small segmentation model, process (that follow-up's lesions found), score, print the
    timeline and write the cohort report and the first patient's."""
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
        output.log(f"1/{STEPS} simulating {patients} patients into {out}")
        with output.progress("simulate", patients, state.progress) as advance:
            simulate_cohort(cfg, out, progress=lambda i, n: advance())
    requests, unmasked = without_last_mask(read_manifest(manifest))
    engine, store = state.engine(), state.store()
    output.log(
        f"2/{STEPS} ingesting {len(requests)} scans; patient {unmasked[0]}'s follow-up of {unmasked[1]} without its "
        "lesion mask, as follow-ups arrive"
    )
    with output.progress("ingest", len(requests), state.progress) as advance:
        done, failed = ingest_many(engine, store, requests, lambda *a: advance())
    new = sum(r.status == "ingested" for r in done)
    output.log(f"    {new} new, {len(done) - new} already present, {len(failed)} failed")
    _import_events(engine, out / "events.csv")
    _ensure_segmentation_model(state, seed)
    output.log(f"4/{STEPS} processing: registration, lesions (found where no mask was given), tracks, RECIST, ...")
    run_process(
        state, Settings(preset="fast", threads=2, seed=0, feature_config="ct_default"), patient=None, as_json=False
    )
    output.log("    " + found_line(views.timeline(engine, unmasked[0]), unmasked[1]))
    _ensure_model(state, seed)
    output.log(f"6/{STEPS} re-scoring risk with the promoted model")
    from tracker.workflows.rescore import rescore_all

    stats = rescore_all(engine, store, ENDPOINT)
    output.log(f"    {stats.get('rows_written', stats)} risk rows written")
    output.log(f"7/{STEPS} cohort timeline")
    rows = views.cohort(engine)
    first = views.timeline(engine, rows[0]["patient_id"]) if rows else None
    write_cohort(rows, "table", None)
    if first is not None:
        print_timeline(first)
    from tracker.workflows.reports import write_demo_reports

    written = write_demo_reports(engine, store, out / "reports", ENDPOINT)
    output.log(
        f"8/{STEPS} reports (self-contained HTML, open them in a browser): " + ", ".join(str(p) for p in written)
    )


def without_last_mask(requests: list[ScanRequest]) -> tuple[list[ScanRequest], tuple[str, date]]:
    """The manifest's scans with the first patient's last follow-up stripped of its lesion mask; (that patient,
    that date)."""
    patient = requests[0].external_id
    last = max(r.scan_date for r in requests if r.external_id == patient and r.scan_date is not None)
    return [
        dataclasses.replace(r, mask=None) if (r.external_id, r.scan_date) == (patient, last) else r for r in requests
    ], (patient, last)


def found_line(timeline: dict[str, Any], day: date) -> str:
    """What processing found on the follow-up ingested without a mask: its lesions, their source and confidence."""
    scan = next(s for s in timeline["scans"] if s["date"] == day.isoformat())
    if scan["mask"] is not None and scan["mask"]["source"] == "given":
        return f"the follow-up of {day} (patient {timeline['patient_id']}) has the mask an earlier run ingested"
    where = f"the follow-up of {day} (patient {timeline['patient_id']}) had no mask"
    if scan["state"] != "processed":
        return f"{where} and was not processed: {scan['error']}"
    found = ", ".join(
        f"T{les['track_id']} {les['source']}"
        + (f" (confidence {les['confidence']:.2f})" if les["confidence"] is not None else "")
        for les in scan["lesions"]
    )
    return f"{where}: {len(scan['lesions'])} lesion(s) found: {found or 'none'}"


def _import_events(engine: Engine, path: Path) -> None:
    import pandas as pd

    from tracker.workflows.models import add_events

    added = add_events(engine, pd.read_csv(path), ENDPOINT, source="simulator")
    output.log(f"    {added} clinical events imported")


def _ensure_model(state: AppState, seed: int) -> None:
    """Register and promote the shipped demo model unless a model is promoted for the endpoint already."""
    import json

    from tracker.demo_model import DEMO_CARD, DEMO_MODEL_FILE
    from tracker.survival import model_from_bytes
    from tracker.workflows import models

    engine, store = state.engine(), state.store()
    if models.has_promoted(engine, ENDPOINT):
        output.log(f"5/{STEPS} a {ENDPOINT} model is promoted already")
        return
    card = json.loads(DEMO_CARD.read_text())
    model = model_from_bytes(DEMO_MODEL_FILE.read_bytes())
    spec = models.register(engine, store, model, DEMO_MODEL, ENDPOINT)["model"]
    models.promote(engine, spec)
    c, checked = card["c_index"]["mean"], card["checked_on"]
    output.log(
        f"5/{STEPS} registered and promoted the demo risk model {spec} ({card['kind']} trained on a latent simulated "
        f"cohort of {card['trained_on']['latent_patients']} patients, on the patient features the pipeline measures "
        "alike)"
    )
    output.log(
        f"    on {checked['processed_patients']} simulated patients it never saw, imaged and processed by this "
        f"pipeline, its {card['horizon_months']:.0f}-month risk ranks the event times with C = {c:.2f} "
        "(Harrell, mean over visits 1-4; benchmarks/demo_model.py)"
    )


def _ensure_segmentation_model(state: AppState, seed: int) -> None:
    """Train a small segmentation model on the ingested scans' masks, unless one is promoted already, and promote
    it when it finds at least `DEMO_SEGMENTATION_MIN_RECALL` of the held-out lesions: it then finds new lesions on
    the follow-up without a mask (which gets its tracked lesions by propagation either way)."""
    from tracker.workflows import segmentation

    engine, store = state.engine(), state.store()
    if segmentation.promoted_segmentation(engine, store) is not None:
        output.log(f"3/{STEPS} a segmentation model is promoted already")
        return
    if segmentation.labelled_patients(engine, store) < 2:
        output.log(f"3/{STEPS} no segmentation model: it needs 2 patients with masks (propagation still runs)")
        return
    from tracker.segmentation.config import SegmentationConfig

    epochs = DEMO_SEGMENTATION_EPOCHS
    cfg = SegmentationConfig(seed=seed, max_epochs=epochs, min_epochs=epochs, val_every=epochs)
    output.log(
        f"3/{STEPS} training a small lesion segmentation model on the scans with masks ({cfg.max_epochs} epochs)"
    )
    with output.progress("train", cfg.max_epochs, state.progress) as advance:
        info = segmentation.train(
            engine, store, cfg, name=DEMO_SEGMENTATION_MODEL, promote=False, progress=lambda e, n, loss: advance()
        )
    recall, fp = info.get("lesion_recall"), info.get("fp_per_scan")
    if not (isinstance(recall, float) and isinstance(fp, float)):
        output.log(f"    registered {info['model']}; no validation figures: not promoted")
        return
    found = f"on the patients held out it finds {recall:.0%} of the lesions >= 10 mm, {fp:.1f} false positives per scan"
    if recall < DEMO_SEGMENTATION_MIN_RECALL:
        # a model that misses most lesions would only add noise: the follow-up's lesions come from propagation
        output.log(
            f"    registered {info['model']}, not promoted: {found} (a full model: `metatrack segment train --promote`)"
        )
        return
    from tracker.workflows.models import promote

    promote(engine, info["model"])
    output.log(f"    registered and promoted {info['model']}: {found}")

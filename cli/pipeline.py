"""The `process` command's body: run the pipeline with a progress bar, then score what changed."""

from __future__ import annotations

from datetime import date

from cli import output
from cli.context import AppState
from tracker.errors import MetatrackError


def run_process(
    state: AppState,
    *,
    patient: str | None,
    preset: str,
    threads: int,
    seed: int,
    features: str,
    shell_mm: float,
    no_features: bool,
    as_json: bool,
) -> dict:
    """Process pending scans; returns (and prints) the report."""
    from tracker.home import data_home
    from tracker.pipeline import Settings
    from tracker.process import count_pending, process_pending

    if not no_features:
        from tracker.radiomics import load_config

        load_config(features)  # a bad config fails here, before any scan is touched
    settings = Settings(
        preset=preset, threads=threads, seed=seed, feature_config=features, shell_mm=shell_mm, features=not no_features
    )
    engine, store = state.engine(), state.store()
    total = count_pending(engine, patient)
    with output.progress("process", total, state.progress) as advance:

        def on_scan(scan_id: int, error: str | None) -> None:
            advance()
            if error:
                output.err.print(f"error: scan {scan_id}: {error}", highlight=False, markup=False)

        report = process_pending(engine, store, settings, data_home() / "tmp", patient=patient, on_scan=on_scan)
    if report.processed and not no_features:
        from tracker.harmonise_cohort import apply_pending

        harmonised = apply_pending(engine, features)
        if harmonised["skipped_scanners"]:
            output.log(
                f"warning: scanners {harmonised['skipped_scanners']} are unknown to harmonisation model "
                f"{harmonised['model']}; their features stay unharmonised (fit a new model to include them)"
            )
    scored = _score(state, report.patients)
    summary = {
        "processed": len(report.processed),
        "failed": {str(k): v for k, v in report.failed.items()},
        "waiting": len(report.waiting),
        "scored_patients": scored,
    }
    if as_json:
        output.print_json(summary)
    else:
        output.log(
            f"processed {summary['processed']} scans, {len(report.failed)} failed, {summary['waiting']} waiting"
            + (f"; risk scored for {scored} patients" if scored else "")
        )
    if report.failed:
        raise MetatrackError(f"{len(report.failed)} scans failed (errors above and in `metatrack timeline`)")
    return summary


def reset_patient(state: AppState, patient: str, day: date) -> None:
    """Forget a patient's results from `day` on (one transaction), ready to process again."""
    from db.results import reset_from
    from db.session import session_scope

    with session_scope(state.engine()) as s:
        n = reset_from(s, patient, day)
    output.log(f"{n} scans of {patient} from {day} will be processed again")


def _score(state: AppState, patients: list[str]) -> int:
    """Risk scores for the patients whose scans were processed (a no-op when no model is promoted)."""
    if not patients:
        return 0
    from db.repo import patient_ids
    from db.session import session_scope
    from tracker.rescore import score_patients

    engine = state.engine()
    with session_scope(engine) as s:
        ids = patient_ids(s, patients)
    stats = score_patients(engine, state.store(), ids)
    return int(getattr(stats, "patients", 0) or 0)

"""The `process` command's body: a progress bar over the process workflow and its summary."""

from __future__ import annotations

from cli import output
from cli.context import AppState
from tracker.errors import MetatrackError
from tracker.records import Settings


def run_process(state: AppState, settings: Settings, *, patient: str | None, as_json: bool) -> None:
    """`process` with a progress bar and its summary (also the demo's step 3)."""
    from tracker.home import data_home
    from tracker.workflows.process import count_pending, process

    engine, store = state.engine(), state.store()
    with output.progress("process", count_pending(engine, patient), state.progress) as advance:

        def on_scan(scan_id: int, error: str | None) -> None:
            advance()
            if error:
                output.err.print(f"error: scan {scan_id}: {error}", highlight=False, markup=False)

        report = process(engine, store, settings, data_home() / "tmp", patient=patient, on_scan=on_scan)
    harmonised = report.harmonisation
    if harmonised and harmonised["skipped_scanners"]:
        output.log(
            f"warning: scanners {harmonised['skipped_scanners']} are unknown to harmonisation model "
            f"{harmonised['model']}; their features stay unharmonised (fit a new model to include them)"
        )
    summary = report.summary()
    if as_json:
        output.print_json(summary)
    else:
        scored = report.scored_patients
        output.log(
            f"processed {summary['processed']} scans, {len(report.failed)} failed, {summary['waiting']} waiting"
            + (f"; risk scored for {scored} patients" if scored else "")
        )
    if report.failed:
        raise MetatrackError(f"{len(report.failed)} scans failed (errors above and in `metatrack timeline`)")

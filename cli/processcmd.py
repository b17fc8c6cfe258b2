"""The `process` command's body: a progress bar over the process workflow (in this process or on a Dask cluster)
and its summary."""

from __future__ import annotations

import typer

from cli import output
from cli.context import AppState
from tracker.errors import MetatrackError
from tracker.records import Settings
from tracker.workflows.distributed import ClusterSpec

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def run_process(
    state: AppState, settings: Settings, *, patient: str | None, as_json: bool, cluster: ClusterSpec | None = None
) -> None:
    """`process` with a progress bar and its summary (also the demo's step 3); on a Dask cluster unless `cluster`
    is None or in-process (one worker, no scheduler)."""
    from tracker.home import data_home
    from tracker.workflows.distributed import process_on_cluster
    from tracker.workflows.process import count_pending, process

    engine, store = state.engine(), state.store()

    def on_wait(holder: int | None, waited_s: float) -> None:
        who = f"pid {holder}" if holder is not None else "another process"
        output.log(f"waiting for the `process` run of {who} to finish with this SQLite database ({waited_s:.0f} s)")

    with output.progress("process", count_pending(engine, patient), state.progress) as advance:

        def on_scan(scan_id: int, error: str | None) -> None:
            advance()
            if error:
                output.err.print(f"error: scan {scan_id}: {error}", highlight=False, markup=False)

        def on_start(scheduler: str, dashboard: str | None) -> None:
            output.log(f"dask scheduler {scheduler}" + (f", dashboard {dashboard}" if dashboard else ""))

        workroot = data_home() / "tmp"
        if cluster is None or cluster.in_process:
            report = process(engine, store, settings, workroot, patient=patient, on_scan=on_scan, on_wait=on_wait)
        else:
            try:
                report = process_on_cluster(
                    engine,
                    store,
                    settings,
                    workroot,
                    cluster,
                    patient=patient,
                    on_scan=on_scan,
                    on_wait=on_wait,
                    on_start=on_start,
                )
            except KeyboardInterrupt:
                output.error(
                    "interrupted: no patient was started after it and no scan is half-written; "
                    "run `metatrack process` again to do what is left"
                )
                raise typer.Exit(INTERRUPTED_EXIT) from None
    if report.swept:
        output.log("cleaned up after interrupted runs: " + ", ".join(f"{n} {what}" for what, n in report.swept.items()))
    if report.store_busy:
        output.log("note: the store was busy; files of interrupted runs are left for a later run to remove")
    for held in report.held:
        output.log(f"patient {held}: held by another run, skipped")
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
            + (f", {len(report.held)} patients held by another run" if report.held else "")
            + (f"; risk scored for {scored} patients" if scored else "")
        )
    if report.failed:
        raise MetatrackError(f"{len(report.failed)} scans failed (errors above and in `metatrack timeline`)")

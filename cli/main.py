"""The `metatrack` command line: parse, call one function of the other packages, print.

Heavy libraries (SimpleITK, ants, torch, monai) are imported inside the commands that need them, so that
`metatrack --help` answers at once. Exit codes: 0 ok, 1 error (one line on stderr), 2 usage.
"""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from typer import _click as click
from typer.core import TyperGroup

from cli import output
from cli.alertscmd import alerts
from cli.choices import Modality, Preset, RecordFormat, Role, TableFormat
from cli.context import AppState
from cli.exportcmd import export_app
from cli.filtercmd import filter_image
from cli.reportcmd import report
from cli.risk import events_app, jobs_app, model_app, rescore, train
from cli.segmentcmd import segment_app
from tracker.errors import MetatrackError, describe_db_error, is_database_error, os_error_message


class _Group(TyperGroup):
    """Turns errors into one line on stderr and exit code 1: metatrack's own, and as a last line of defence those of
    the database (unreachable, lost, unknown driver) and of the file system (disk full, permissions).

    Database connection failures arrive as :class:`MetatrackError` with the password masked (``db.session`` makes
    them; the CLI may not import it): a driver's message after a connection is made cannot hold the password.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MetatrackError as exc:
            output.error(str(exc))
            raise typer.Exit(1) from exc
        except OSError as exc:
            output.error(os_error_message(exc))
            raise typer.Exit(1) from exc
        except Exception as exc:
            if not is_database_error(exc):
                raise
            output.error(f"database error: {describe_db_error(exc)}")
            raise typer.Exit(1) from exc


app = typer.Typer(
    cls=_Group,
    name="metatrack",
    help="Longitudinal follow-up tracking for oncology imaging.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold patient data
)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
harmonise_app = typer.Typer(help="ComBat harmonisation of lesion features across scanners.", no_args_is_help=True)
app.add_typer(harmonise_app, name="harmonise")
app.add_typer(segment_app, name="segment")

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _state(ctx: typer.Context) -> AppState:
    return ctx.find_root().obj


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        output.print_text(f"metatrack {version('metatrack')}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option("--db", help="SQLAlchemy database URL (default: $METATRACK_DB, else SQLite in the data home)."),
    ] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars (batch systems).")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Diagnostic messages (database retries, warnings) too.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only results and errors: no messages, no progress bars.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    if verbose and quiet:
        raise typer.BadParameter("--verbose and --quiet exclude each other")
    output.set_verbosity(output.Verbosity.QUIET if quiet else output.Verbosity.VERBOSE if verbose else None)
    ctx.obj = AppState(db_url=db, progress=not (no_progress or quiet))


@app.command()
def init(ctx: typer.Context) -> None:
    """Create (or bring up to date) the database and the data home."""
    from tracker.home import data_home
    from tracker.workflows import database

    revision = database.init(_state(ctx).db_url)
    output.log(f"database ready at migration {revision}; data home {data_home()}")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from tracker.workflows import database

    output.log(f"database at migration {database.upgrade(_state(ctx).db_url, revision)}")


@db_app.command("downgrade")
def db_downgrade(ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")]) -> None:
    """Revert migrations down to REVISION ('base' empties the database)."""
    from tracker.workflows import database

    output.log(f"database at migration {database.downgrade(_state(ctx).db_url, revision)}")


@db_app.command("current")
def db_current(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show the database's migration revision and the newest one available."""
    from tracker.workflows import database

    info = database.revisions(_state(ctx).db_url)
    output.print_json(info) if as_json else output.out.print(f"current {info['current']}  head {info['head']}")


def _parse_day(value: str) -> date:
    from tracker.workflows.ingest import parse_date

    return parse_date(value, "--date")


@app.command()
def ingest(
    ctx: typer.Context,
    image: Annotated[Path | None, typer.Argument(help="NIfTI/NRRD/MHA file or DICOM series folder.")] = None,
    patient: Annotated[str | None, typer.Option("--patient", "-p", help="Patient pseudonym.")] = None,
    scan_date: Annotated[
        str | None,
        typer.Option("--date", "-d", help="Scan date, YYYY-MM-DD (DICOM: StudyDate, SeriesDate, AcquisitionDate)."),
    ] = None,
    mask: Annotated[
        Path | None, typer.Option("--mask", "-m", help="Lesion mask (label or binary volume, RTSTRUCT, DICOM SEG).")
    ] = None,
    roi: Annotated[
        list[str] | None, typer.Option(help="RTSTRUCT ROI to take (name or regular expression; repeatable).")
    ] = None,
    segment: Annotated[
        list[str] | None, typer.Option(help="DICOM SEG segment to take (number, label or regex; repeatable).")
    ] = None,
    recursive: Annotated[bool, typer.Option(help="Search the DICOM folder's subfolders too.")] = False,
    organs: Annotated[Path | None, typer.Option(help="Organ label map on the image's grid (optional).")] = None,
    modality: Annotated[
        Modality | None, typer.Option(case_sensitive=False, help="Default: the DICOM Modality, else CT.")
    ] = None,
    scanner: Annotated[str | None, typer.Option(help="Scanner name (site/vendor/model).")] = None,
    site: Annotated[str | None, typer.Option(help="Site name.")] = None,
    role: Annotated[Role | None, typer.Option(help="Default: baseline for a new patient.")] = None,
    series: Annotated[str | None, typer.Option(help="DICOM SeriesInstanceUID when a folder holds several.")] = None,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="CSV: patient_id,date,image[,mask,modality,scanner,role,roi,segment]."),
    ] = None,
    replace_mask: Annotated[
        bool,
        typer.Option(
            "--replace-mask",
            help="The scan is ingested already with another mask: this --mask replaces it (then process the "
            "patient again with --reprocess-from).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ingest a scan (and its lesion mask), or every row of a manifest; each scan is one transaction. A mask for
    a scan ingested without one (or, with --replace-mask, with another) is added to it."""
    from tracker.records import ScanRole
    from tracker.workflows.ingest import ScanRequest, ingest_many, read_manifest

    state = _state(ctx)
    if manifest is not None:
        if image is not None:
            raise typer.BadParameter("give either IMAGE or --manifest, not both")
        requests = read_manifest(manifest)
    else:
        if image is None or patient is None:
            raise typer.BadParameter("IMAGE and --patient are required, and --date unless DICOM (or use --manifest)")
        requests = [
            ScanRequest(
                external_id=patient,
                scan_date=_parse_day(scan_date) if scan_date is not None else None,
                image=image,
                mask=mask,
                modality=modality.value if modality else None,
                scanner=scanner,
                site=site,
                role=ScanRole(role.value) if role else None,
                series_uid=series,
                organs=organs,
                rois=tuple(roi or ()),
                segments=tuple(segment or ()),
                recursive=recursive,
                replace_mask=replace_mask,
            )
        ]
    engine, store = state.engine(), state.store()
    with output.progress("ingest", len(requests), state.progress and len(requests) > 1) as advance:

        def on_done(req, res, exc) -> None:
            advance()
            if exc is not None and len(requests) > 1:
                output.error(str(exc))

        done, failed = ingest_many(engine, store, requests, on_done, notify=output.log)
    rows = [
        {
            "patient_id": r.external_id,
            "date": r.scan_date.isoformat(),
            "scan_id": r.scan_id,
            "role": r.role.value,
            "status": r.status,
            "lesion_labels": r.lesion_labels,
            "mask_empty": r.mask_empty,
        }
        for r in done
    ]
    for note in dict.fromkeys(n for r in done for n in r.notes):
        output.log(note)
    if as_json:
        output.print_json({"ingested": rows, "failed": [{"image": str(q.image), "error": str(e)} for q, e in failed]})
    elif rows:
        output.print_table(rows)
    if len(requests) == 1:
        if failed:
            raise MetatrackError(str(failed[0][1]))
        return
    summary = _ingest_summary(done, failed)
    if failed:
        raise MetatrackError(f"{len(failed)} of {len(requests)} scans were not ingested: {summary}")
    output.log(f"ingest: {summary}")


def _ingest_summary(done: list, failed: list) -> str:
    """What a manifest's ingest did and did not do, on one line."""
    from tracker.workflows.ingest import NotAttempted

    new = sum(r.status == "ingested" for r in done)
    skipped = [e for _, e in failed if isinstance(e, NotAttempted)]
    parts = [f"{new} ingested", f"{len(done) - new} already present", f"{len(failed) - len(skipped)} failed"]
    if skipped:
        parts.append(f"{len(skipped)} not attempted ({str(skipped[0]).removeprefix('not attempted: ')})")
    return ", ".join(parts)


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Output folder for the synthetic cohort.")],
    patients: Annotated[int, typer.Option("--patients", "-n", min=1, help="Number of patients.")] = 20,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same cohort).")] = 0,
    spacing: Annotated[float, typer.Option(help="Nominal isotropic voxel size in mm.")] = 2.0,
    no_progress: Annotated[bool, typer.Option("--no-progress")] = False,
) -> None:
    """Write a synthetic cohort with full ground truth (images, masks, manifest, truth.json, events.csv)."""
    from tracker.simulator import SimulationConfig, simulate_cohort

    cfg = SimulationConfig(n_patients=patients, seed=seed, **_sim_grid(spacing))
    with output.progress("simulate", patients, not no_progress) as advance:
        manifest = simulate_cohort(cfg, out, progress=lambda i, n: advance())
    output.log(f"wrote {patients} patients; manifest {manifest}")


def _sim_grid(spacing: float) -> dict:
    """A grid covering the default field of view (~320 x 320 x 224 mm) at the given voxel size."""
    fov = (320.0, 320.0, 224.0)
    return {"shape": tuple(round(f / spacing) for f in fov), "spacing": (spacing, spacing, spacing)}


@app.command()
def process(
    ctx: typer.Context,
    patient: Annotated[str | None, typer.Option("--patient", "-p", help="Only this patient.")] = None,
    preset: Annotated[Preset, typer.Option(help="Registration preset.")] = Preset.ACCURATE,
    threads: Annotated[int, typer.Option(min=1, help="Threads for registration (ITK/ANTs).")] = 2,
    seed: Annotated[int, typer.Option(help="Registration seed.")] = 0,
    features: Annotated[str, typer.Option(help="Radiomics preset or YAML config for lesion features.")] = "ct_default",
    shell_mm: Annotated[float, typer.Option(help="Peritumoral shell width in mm (0: none).")] = 5.0,
    no_features: Annotated[bool, typer.Option("--no-features", help="Skip radiomics.")] = False,
    reprocess_from: Annotated[
        str | None, typer.Option("--reprocess-from", help="With --patient: redo its scans from this date on.")
    ] = None,
    non_target_ratio: Annotated[
        float | None,
        typer.Option(
            "--non-target-pd-ratio",
            min=1.0,
            help="RECIST unequivocal non-target progression: total non-target volume at least this times its nadir "
            "(default 2) ...",
        ),
    ] = None,
    non_target_min_mm3: Annotated[
        float | None,
        typer.Option("--non-target-pd-min-mm3", min=0.0, help="... and at least this many mm³ above it (default 500)."),
    ] = None,
    propagation: Annotated[
        bool, typer.Option(help="A scan without a mask: carry the open tracks' lesions into it from earlier scans.")
    ] = True,
    segmentation_model: Annotated[
        bool, typer.Option(help="A scan without a mask: find lesions with the promoted segmentation model.")
    ] = True,
    new_lesion_confidence: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="A new lesion the segmentation model found (no mask given) counts for RECIST from this confidence on.",
        ),
    ] = 0.5,
    workers: Annotated[
        int, typer.Option(min=1, help="Patients processed side by side by a local Dask cluster of N processes.")
    ] = 1,
    threads_per_worker: Annotated[
        int, typer.Option(min=1, help="With --workers: patients each worker process runs at once.")
    ] = 1,
    scheduler: Annotated[
        str | None,
        typer.Option(help="An existing Dask cluster: tcp://HOST:8786 or a scheduler file (see docs/scaling.md)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register, find lesions, track, assess RECIST and measure every unprocessed scan (one transaction each)."""
    from tracker.records import Settings
    from tracker.workflows.distributed import ClusterSpec
    from tracker.workflows.process import reset_patient

    state = _state(ctx)
    if scheduler is not None and (workers != 1 or threads_per_worker != 1):
        raise typer.BadParameter("--scheduler uses the cluster's own workers: leave out --workers/--threads-per-worker")
    cluster = ClusterSpec(workers=workers, threads_per_worker=threads_per_worker, scheduler=scheduler)
    if reprocess_from is not None:
        if patient is None:
            raise typer.BadParameter("--reprocess-from needs --patient")
        day = _parse_day(reprocess_from)
        n = reset_patient(state.engine(), patient, day)
        output.log(f"{n} scans of {patient} from {day} will be processed again")
    settings = Settings(
        preset=preset.value,
        threads=threads,
        seed=seed,
        feature_config=features,
        shell_mm=shell_mm,
        features=not no_features,
        propagation=propagation,
        segmentation_model=segmentation_model,
        new_lesion_min_confidence=new_lesion_confidence,
    )
    if non_target_ratio is not None:
        settings = dataclasses.replace(settings, recist_non_target_volume_ratio=non_target_ratio)
    if non_target_min_mm3 is not None:
        settings = dataclasses.replace(settings, recist_non_target_min_increase_mm3=non_target_min_mm3)
    from cli.processcmd import run_process

    run_process(state, settings, patient=patient, as_json=as_json, cluster=cluster)


@app.command()
def locate(
    ctx: typer.Context,
    patient: Annotated[str, typer.Argument(help="Patient pseudonym.")],
    x: Annotated[float, typer.Argument(help="x (mm, LPS)")],
    y: Annotated[float, typer.Argument(help="y (mm, LPS)")],
    z: Annotated[float, typer.Argument(help="z (mm, LPS)")],
    from_date: Annotated[str, typer.Option("--from", help="Date of the scan the point is in.")],
    to_date: Annotated[str, typer.Option("--to", help="Date of the scan to map it to.")],
    as_json: JsonOpt = False,
) -> None:
    """Map a physical point (mm, ITK/LPS) from one of a patient's timepoints to another.

    Put `--` before negative coordinates: metatrack locate P --from 2024-01-10 --to 2024-03-20 -- -12.5 40 -7
    """
    import numpy as np

    from tracker.workflows.ingest import parse_date
    from tracker.workflows.locate import locate as run

    state = _state(ctx)
    res = run(
        state.engine(),
        state.store(),
        patient,
        parse_date(from_date, "--from"),
        parse_date(to_date, "--to"),
        np.asarray([[x, y, z]], dtype=np.float64),
    )
    if as_json:
        output.print_json(res)
        return
    p = res["points"][0]
    flag = "  (registration flagged for review)" if res["needs_review"] else ""
    output.out.print(
        f"{res['from']} ({', '.join(f'{v:.2f}' for v in p['from'])}) -> "
        f"{res['to']} ({', '.join(f'{v:.2f}' for v in p['to'])}) mm LPS{flag}"
    )


@app.command()
def features(
    ctx: typer.Context,
    image: Annotated[Path | None, typer.Argument(help="Image file (NIfTI/NRRD/MHA) or DICOM folder.")] = None,
    mask: Annotated[Path | None, typer.Argument(help="Mask on the image's grid.")] = None,
    config: Annotated[str, typer.Option("--config", "-c", help="Preset name or YAML config.")] = "ct_default",
    label: Annotated[int | None, typer.Option(help="Only this mask label (default: all non-zero voxels).")] = None,
    roi: Annotated[list[str] | None, typer.Option(help="RTSTRUCT ROI (name or regex; repeatable).")] = None,
    segment: Annotated[list[str] | None, typer.Option(help="DICOM SEG segment (number, label or regex).")] = None,
    batch: Annotated[
        Path | None,
        typer.Option(help="CSV of image,mask[,label][,body_mask] rows (paths relative to the CSV): a row each."),
    ] = None,
    fmt: Annotated[RecordFormat, typer.Option("--format")] = RecordFormat.CSV,
    out: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
    body_mask: Annotated[
        str | None,
        typer.Option(
            help="Body mask file, or 'auto' (Otsu foreground), for z-score configs such as mr_default; in --batch, "
            "for the rows without a body_mask of their own."
        ),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Processes for --batch (one thread each).")] = 1,
) -> None:
    """IBSI radiomics of one image/mask pair (one record per feature), or of a batch (one row per pair)."""
    from cli.featurescmd import run_features

    choice = {"rois": tuple(roi or ()), "segments": tuple(segment or ())}
    progress = _state(ctx).progress
    run_features(image, mask, config, label, batch, fmt.value, out, body_mask, jobs, progress=progress, **choice)


@harmonise_app.command("fit")
def harmonise_fit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the new harmonisation model.")],
    config: Annotated[str, typer.Option(help="Feature configuration whose values are harmonised.")] = "ct_default",
    non_parametric: Annotated[bool, typer.Option("--non-parametric", help="Non-parametric EB priors.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit ComBat on every stored lesion (batches = scanners), store it, and harmonise the stored values."""
    from tracker.workflows.harmonisation import fit

    res = fit(_state(ctx).engine(), name, config, parametric=not non_parametric)
    output.print_json(res) if as_json else output.log(
        f"model {res['model']}: {res['lesions']} lesions, {res['tags']} features, scanners {res['batches']}"
    )


@harmonise_app.command("apply")
def harmonise_apply(
    ctx: typer.Context,
    config: Annotated[str, typer.Option(help="Feature configuration.")] = "ct_default",
    as_json: JsonOpt = False,
) -> None:
    """Harmonise values not yet harmonised with the active model (never refits)."""
    from tracker.workflows.harmonisation import apply_pending

    res = apply_pending(_state(ctx).engine(), config)
    output.print_json(res) if as_json else output.log(
        f"model {res['model']}: {res['values_written']} values harmonised; unknown scanners {res['skipped_scanners']}"
    )


@app.command("recist-targets")
def recist_targets(
    ctx: typer.Context,
    patient: Annotated[str, typer.Argument(help="Patient pseudonym.")],
    tracks: Annotated[list[int], typer.Argument(help="Track numbers to use as targets (e.g. 2 5).")],
    as_json: JsonOpt = False,
) -> None:
    """Override the RECIST target selection and re-assess every processed follow-up."""
    from tracker.workflows.recist_targets import set_targets

    rows = set_targets(_state(ctx).engine(), patient, tracks)
    output.print_json(rows) if as_json else output.print_table(rows)


@app.command("patients")
def patients_cmd(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List patients with their scan counts and dates."""
    from tracker.workflows import views

    rows = views.patients(_state(ctx).engine())
    output.print_json(rows) if as_json else output.print_table(rows)


@app.command()
def timeline(
    ctx: typer.Context,
    patient: Annotated[str, typer.Argument(help="Patient pseudonym.")],
    as_json: JsonOpt = False,
) -> None:
    """A patient's scans, lesions, tracks, RECIST and risk in date order."""
    from tracker.workflows import views

    data = views.timeline(_state(ctx).engine(), patient)
    if as_json:
        output.print_json(data)
        return
    from cli.render import print_timeline

    print_timeline(data)


@app.command()
def cohort(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    fmt: Annotated[TableFormat, typer.Option("--format")] = TableFormat.TABLE,
    out: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file (parquet needs it).")] = None,
) -> None:
    """The cohort table: one row per scan of every patient."""
    from cli.render import write_cohort
    from tracker.workflows import views

    rows = views.cohort(_state(ctx).engine())

    write_cohort(rows, "json" if as_json else fmt.value, out)


@app.command()
def demo(
    ctx: typer.Context,
    patients: Annotated[int, typer.Option("--patients", "-n", min=1)] = 3,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Simulate a small cohort into the data home, run every pipeline step on it, print the cohort timeline."""
    from cli.demo import run_demo

    run_demo(_state(ctx), patients=patients, seed=seed)


app.add_typer(model_app, name="model")
app.add_typer(jobs_app, name="jobs")
app.add_typer(events_app, name="events")
app.command("train")(train)
app.command("rescore")(rescore)
app.command("alerts")(alerts)
app.add_typer(export_app, name="export")
app.command("report")(report)
app.command("filter")(filter_image)


def main() -> None:
    """Console entry point."""
    app()

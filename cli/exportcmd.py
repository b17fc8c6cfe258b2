"""`metatrack export`: lesion and survival tables, label maps and DICOM SEG/SR for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import output
from cli.choices import FileFormat
from cli.context import AppState

export_app = typer.Typer(
    help="Export results: lesion tables, survival tables, masks, DICOM SEG + SR.", no_args_is_help=True
)

FormatOpt = Annotated[FileFormat, typer.Option("--format", "-f")]
OutFileOpt = Annotated[Path, typer.Option("--output", "-o", help="File to write (a manifest JSON goes beside it).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]


def _state(ctx: typer.Context) -> AppState:
    return ctx.find_root().obj


def _report(result: dict, as_json: bool, line: str) -> None:
    if as_json:
        output.print_json(result)
    else:
        output.log(line)


@export_app.command("lesions")
def lesions(
    ctx: typer.Context,
    out: OutFileOpt,
    fmt: FormatOpt = FileFormat.CSV,
    patient: Annotated[str | None, typer.Option("--patient", "-p", help="Only this patient.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """One row per lesion x scan x region (lesion, peritumoral shell): track, change, RECIST role, organ, raw and
    harmonised features, feature config and engine version. Streamed: memory stays flat for any cohort."""
    from tracker.workflows.exports import export_lesions

    res = export_lesions(_state(ctx).engine(), out, fmt.value, patient)
    _report(res, as_json, f"wrote {res['rows']} rows ({res['features']} features) to {res['file']}")


@export_app.command("survival")
def survival(
    ctx: typer.Context,
    endpoint: Annotated[str, typer.Option("--endpoint", "-e", help="metastasis, progression or death.")],
    out: OutFileOpt,
    fmt: FormatOpt = FileFormat.CSV,
    as_json: JsonOpt = False,
) -> None:
    """One row per patient: time_days, event, baseline and latest patient features (for R survival, lifelines)."""
    from tracker.workflows.exports import export_survival

    res = export_survival(_state(ctx).engine(), endpoint, out, fmt.value)
    _report(res, as_json, f"wrote {res['patients']} patients ({res['events']} events) to {res['file']}")


@export_app.command("masks")
def masks(
    ctx: typer.Context,
    patient: Annotated[str, typer.Argument(help="Patient pseudonym.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write to (created if needed).")],
    as_json: JsonOpt = False,
) -> None:
    """Each processed scan's lesion label map as NIfTI on the scan's grid, label = track number."""
    from tracker.workflows.exports import export_masks

    state = _state(ctx)
    res = export_masks(state.engine(), state.store(), patient, out_dir)
    _report(res, as_json, f"wrote {len(res['files'])} label maps to {res['folder']}")


@export_app.command("dicom")
def dicom(
    ctx: typer.Context,
    patient: Annotated[str, typer.Argument(help="Patient pseudonym.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write to (created if needed).")],
    source_dicom: Annotated[
        Path | None,
        typer.Option(
            "--source-dicom",
            help="Folder with the original DICOM files: the SEG/SR then carry their patient and study "
            "(identifying). Without it: the pseudonym and UIDs only.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A DICOM SEG (segment = lesion track) and an SR TID 1500 report for each processed scan from DICOM."""
    from tracker.workflows.exports import export_dicom

    state = _state(ctx)
    res = export_dicom(state.engine(), state.store(), patient, out_dir, source_dicom)
    for note in res["skipped"]:
        output.log(f"skipped {note}")
    _report(res, as_json, f"wrote {len(res['files'])} DICOM files to {res['folder']}")

"""`metatrack report`: self-contained HTML reports and figures for a patient or the cohort."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from cli import output
from cli.context import AppState


class FigureFormat(enum.StrEnum):
    PNG = "png"
    PDF = "pdf"


def report(
    ctx: typer.Context,
    patient: Annotated[str | None, typer.Argument(help="Patient pseudonym (omit with --cohort).")] = None,
    cohort: Annotated[bool, typer.Option("--cohort", help="The cohort report instead of one patient's.")] = False,
    out: Annotated[Path | None, typer.Option("--output", "-o", help="HTML file to write.")] = None,
    figures: Annotated[
        Path | None, typer.Option("--figures", help="Folder to write each figure to, as its own file.")
    ] = None,
    fmt: Annotated[FigureFormat, typer.Option("--format", help="File format of --figures.")] = FigureFormat.PNG,
    endpoint: Annotated[str, typer.Option(help="Endpoint of the cohort's Kaplan-Meier curves.")] = "metastasis",
    as_json: Annotated[bool, typer.Option("--json", help="The written paths as JSON on stdout.")] = False,
) -> None:
    """Write a patient's or the cohort's report: one HTML file that opens offline (figures embedded), or each
    figure as PNG/PDF for papers.

    Examples: metatrack report P001 -o P001.html; metatrack report --cohort -o cohort.html;
    metatrack report P001 --figures figs --format pdf.
    """
    if cohort == (patient is not None):
        raise typer.BadParameter("give a PATIENT or --cohort (one of them)", param_hint="PATIENT")
    if (out is None) == (figures is None):
        raise typer.BadParameter("give -o FILE.html or --figures DIR (one of them)", param_hint="--output")
    from tracker.workflows import reports

    state: AppState = ctx.find_root().obj
    engine = state.engine(migrate_empty=False)
    if cohort:
        written = (
            [reports.write_cohort_report(engine, out, endpoint)]
            if out is not None
            else reports.write_cohort_figures(engine, figures or Path("."), endpoint, fmt.value)
        )
    else:
        name = str(patient)
        written = (
            [reports.write_patient_report(engine, state.store(), name, out)]
            if out is not None
            else reports.write_patient_figures(engine, state.store(), name, figures or Path("."), fmt.value)
        )
    if as_json:
        output.print_json([str(p) for p in written])
    else:
        for p in written:
            output.log(f"wrote {p}")

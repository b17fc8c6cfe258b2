"""`metatrack export`: lesion and survival tables, label maps and DICOM SEG/SR for other tools."""

from __future__ import annotations

import typer

export_app = typer.Typer(
    help="Export results: lesion tables, survival tables, masks, DICOM SEG + SR.", no_args_is_help=True
)

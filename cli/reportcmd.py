"""`metatrack report`: self-contained HTML reports and figures for a patient or the cohort."""

from __future__ import annotations

import typer


def report(ctx: typer.Context) -> None:
    """Write a patient or cohort report (not yet built)."""
    raise typer.Exit(2)

"""`metatrack filter`: IBSI 2 convolutional filter response maps."""

from __future__ import annotations

import typer


def filter_image(ctx: typer.Context) -> None:
    """Write a filter response map (not yet built)."""
    raise typer.Exit(2)

"""`metatrack segment train|apply`: the lesion segmentation model (MONAI) trained on the user's labelled scans."""

from __future__ import annotations

import typer

segment_app = typer.Typer(help="Lesion segmentation model: train on the labelled scans, apply to an image.")

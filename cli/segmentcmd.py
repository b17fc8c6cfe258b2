"""`metatrack segment train|apply`: the lesion segmentation model (MONAI) trained on the user's labelled scans."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli import output
from tracker.errors import MetatrackError

if TYPE_CHECKING:
    from cli.context import AppState

segment_app = typer.Typer(
    help="Lesion segmentation model: train on the labelled scans, apply to an image.", no_args_is_help=True
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
MASK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def _state(ctx: typer.Context) -> AppState:
    return ctx.find_root().obj


@segment_app.command("train")
def segment_train(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option("--name", help="Model name (default: lesion-unet).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Maximum training epochs.")] = None,
    patch: Annotated[float | None, typer.Option("--patch", min=8.0, help="Training patch side, mm.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same data + seed, same model on CPU).")] = 0,
    promote: Annotated[bool, typer.Option("--promote", help="Promote the new model at once.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a 3-D U-Net on every ingested scan with a given lesion mask, register it and print its validation
    metrics (patients held out for early stopping and the detection thresholds)."""
    from tracker.segmentation.config import SegmentationConfig
    from tracker.workflows import segmentation

    state = _state(ctx)
    defaults = SegmentationConfig()
    cfg = SegmentationConfig(
        seed=seed,
        patch_mm=patch if patch is not None else defaults.patch_mm,
        max_epochs=epochs if epochs is not None else defaults.max_epochs,
        min_epochs=min(epochs, defaults.min_epochs) if epochs is not None else defaults.min_epochs,
    )
    with output.progress("train", cfg.max_epochs, state.progress) as advance:
        info = segmentation.train(
            state.engine(), state.store(), cfg, name=name, promote=promote, progress=lambda e, n, loss: advance()
        )
    if as_json:
        output.print_json(info)
        return
    output.print_table([info])
    if promote:
        output.log(f"registered and promoted {info['model']} for new-lesion detection")
    else:
        output.log(f"registered {info['model']} (state trained); `metatrack model promote {info['model']}` to use it")


@segment_app.command("apply")
def segment_apply(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(help="Image file (NIfTI/NRRD/MHA) or DICOM folder.")],
    out: Annotated[Path, typer.Option("--output", "-o", help="Label map to write (.nii.gz, .nii, .nrrd, .mha).")],
    model: Annotated[str | None, typer.Option("--model", help="NAME[:VERSION] (default: the promoted one).")] = None,
    probability: Annotated[
        Path | None, typer.Option("--probability", help="Also write the lesion probability map here.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the lesions the segmentation model finds in IMAGE as a label map on its grid (1 = largest)."""
    from tracker.imageio import volume_suffix
    from tracker.workflows import segmentation

    for path in (out, probability):
        if path is not None and volume_suffix(path) not in MASK_SUFFIXES:
            raise MetatrackError(f"{path}: write the map as .nii.gz, .nii, .nrrd or .mha")
    state = _state(ctx)
    info = segmentation.apply(state.engine(), state.store(), image, out, model=model, probability_out=probability)
    if as_json:
        output.print_json(info)
        return
    if info["lesions"]:
        output.print_table(info["lesions"], title=f"lesions found by {info['model']}")
    output.log(f"wrote {out}: {len(info['lesions'])} lesion(s) (model {info['model']})")

"""`metatrack filter`: IBSI 2 convolutional filter response maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import output


def filter_image(
    image: Annotated[Path, typer.Argument(help="Image file (NIfTI/NRRD/MHA) or DICOM folder.")],
    config: Annotated[
        str, typer.Option("--config", "-c", help="Radiomics preset or YAML config with a filter: section.")
    ],
    out: Annotated[Path, typer.Option("--output", "-o", help="Response map to write (.nii.gz, .nii, .nrrd, .mha).")],
) -> None:
    """Write the response map of IMAGE under the config's IBSI 2 filter (after its resampling and rounding),
    as float32 on the config's grid; e.g. -c ibsi2_p1_2_a for IBSI 2 phase-1 test 2.a."""
    import numpy as np
    import SimpleITK as sitk

    from tracker.errors import MetatrackError
    from tracker.imageio import read_image, volume_suffix
    from tracker.radiomics import load_config
    from tracker.radiomics.preprocess import filter_volume

    if volume_suffix(out) not in (".nii", ".nii.gz", ".nrrd", ".mha"):
        raise MetatrackError(f"{out}: the response map must be written as .nii.gz, .nii, .nrrd or .mha")
    cfg = load_config(config)
    if cfg["filter"] is None:
        raise MetatrackError(f"{config}: radiomics config {cfg['name']!r} has no filter: section")
    loaded = read_image(image)
    arr = sitk.GetArrayFromImage(loaded.image).astype(np.float64)
    sx, sy, sz = (float(v) for v in loaded.image.GetSpacing())
    response, spacing, first = filter_volume(arr, (sz, sy, sx), cfg)
    result = sitk.GetImageFromArray(response.astype(np.float32))
    result.SetSpacing((spacing[2], spacing[1], spacing[0]))
    result.SetDirection(loaded.image.GetDirection())
    result.SetOrigin(loaded.image.TransformContinuousIndexToPhysicalPoint((first[2], first[1], first[0])))
    try:
        sitk.WriteImage(result, str(out), useCompression=True)
    except RuntimeError as exc:
        raise MetatrackError(f"{out}: could not write the response map ({str(exc).strip().splitlines()[-1]})") from exc
    output.log(f"wrote {out} ({cfg['filter']['kind']} response, {'x'.join(map(str, response.shape[::-1]))} voxels)")

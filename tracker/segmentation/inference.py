"""Image <-> network: the working grid (MONAI spacing transforms), the intensity window, sliding-window inference.

Arrays are (z, y, x); a scan's affine here is diagonal (its spacing): direction and origin do not change what a
lesion looks like, and the probability is returned on the image's own voxel grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

MAX_WINDOW_SIDE = 96  # voxels per axis of an inference window (memory: ~1 GB for the default U-Net at 96^3)


def working_spacing(spacings_zyx: Sequence[Sequence[float]], patch_mm: float, max_patch_voxels: int) -> list[float]:
    """The median spacing of the scans per axis, never finer than ``patch_mm / max_patch_voxels``."""
    median = np.median(np.asarray(spacings_zyx, dtype=np.float64), axis=0)
    return [float(max(v, patch_mm / max_patch_voxels)) for v in median]


def patch_voxels(patch_mm: float, spacing_zyx: Sequence[float], stride: int) -> list[int]:
    """The patch side per axis in voxels at the working spacing, rounded to a multiple of the network's stride."""
    return [int(max(stride, stride * round(patch_mm / s / stride))) for s in spacing_zyx]


def inference_window(shape: Sequence[int], patch: Sequence[int], stride: int) -> list[int]:
    """The sliding window at inference: the whole volume (sides rounded up to the stride) up to
    :data:`MAX_WINDOW_SIDE`, never smaller than the training patch. The network is convolutional with batch
    statistics frozen, so a larger window gives the same output with fewer window borders and far fewer calls."""
    cap = max(MAX_WINDOW_SIDE // stride * stride, stride)
    return [max(int(p), min(cap, -(-int(n) // stride) * stride)) for n, p in zip(shape, patch, strict=True)]


def intensity_window(
    images: Sequence[np.ndarray],
    lesion_maps: Sequence[np.ndarray],
    percentiles: Sequence[float],
    margin_iqr: float,
    max_samples: int = 2_000_000,
) -> tuple[float, float]:
    """The (lo, hi) intensity window from the voxels inside lesions: their ``percentiles`` widened on each side
    by ``margin_iqr`` times their interquartile range (all voxels when no scan has a lesion).

    The lesions, not the body, set the scale: the lesion-vs-organ contrast then fills a large share of [0, 1]
    while air, lung and bone clip; percentiles and IQRs, not fixed intensities, so CT and MR alike.
    """
    values = [image[lesions > 0] for image, lesions in zip(images, lesion_maps, strict=True) if (lesions > 0).any()]
    pool = np.concatenate(values) if values else np.concatenate([im.ravel() for im in images])
    if pool.size > max_samples:  # a fixed stride, not a random draw: the same data give the same window
        pool = pool[:: pool.size // max_samples + 1]
    pool = pool.astype(np.float64)
    lo, hi = np.percentile(pool, list(percentiles))
    q1, q3 = np.percentile(pool, [25.0, 75.0])
    spread = max(float(q3 - q1), 1e-6 * max(abs(float(q1)), abs(float(q3)), 1.0))
    return float(lo - margin_iqr * spread), float(hi + margin_iqr * spread)


def plain(t: Any) -> torch.Tensor:
    """A float32 torch tensor without MONAI metadata (MetaTensors carry their history of operations)."""
    import torch
    from monai.data import MetaTensor

    return (t.as_tensor() if isinstance(t, MetaTensor) else torch.as_tensor(t)).float()


def _affine(spacing_zyx: Sequence[float]) -> torch.Tensor:
    import torch

    return torch.diag(torch.tensor([*map(float, spacing_zyx), 1.0], dtype=torch.float64))


def to_working_grid(
    array: np.ndarray, spacing_zyx: Sequence[float], work_spacing: Sequence[float], *, label: bool = False
) -> torch.Tensor:
    """(1, z, y, x) float32 tensor of ``array`` resampled to ``work_spacing`` (MONAI ``Spacing``; nearest for
    labels, bilinear otherwise); unchanged when the spacings agree."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    t = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32)[None]
    if np.allclose(spacing_zyx, work_spacing, rtol=0, atol=1e-3):
        return t
    img = MetaTensor(t, affine=_affine(spacing_zyx))
    out = Spacing(pixdim=list(work_spacing), mode="nearest" if label else "bilinear", padding_mode="border")(img)
    return plain(out)


def from_working_grid(
    volume: torch.Tensor, work_spacing: Sequence[float], spacing_zyx: Sequence[float], shape: Sequence[int]
) -> np.ndarray:
    """A (1, z, y, x) working-grid volume back on the image's grid (``shape``, ``spacing_zyx``), bilinear."""
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    if np.allclose(spacing_zyx, work_spacing, rtol=0, atol=1e-3) and tuple(volume.shape[1:]) == tuple(shape):
        return volume[0].cpu().numpy().astype(np.float32)
    img = MetaTensor(plain(volume.detach().cpu()), affine=_affine(work_spacing))
    out = SpatialResample(mode="bilinear", padding_mode="border")(
        img, dst_affine=_affine(spacing_zyx), spatial_size=tuple(int(n) for n in shape)
    )
    return plain(out).cpu().numpy()[0]


def scale_window(volume: torch.Tensor, window: Sequence[float]) -> torch.Tensor:
    """Intensities clipped to ``window`` (lo, hi) and scaled to [0, 1] (MONAI ``ScaleIntensityRange``)."""
    from monai.transforms import ScaleIntensityRange

    lo, hi = (float(v) for v in window)
    return plain(ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(volume))


def sliding_probability(
    net: Any, volume: torch.Tensor, patch: Sequence[int], stride: int, overlap: float, device: Any
) -> torch.Tensor:
    """Lesion probability (1, z, y, x) on the working grid of a windowed (1, z, y, x) volume."""
    import torch
    from monai.inferers import sliding_window_inference

    roi = inference_window(volume.shape[1:], patch, stride)

    with torch.no_grad():
        logits = sliding_window_inference(
            volume[None].to(device),
            roi_size=list(roi),
            sw_batch_size=1,
            predictor=net,
            overlap=overlap,
            mode="gaussian",
            padding_mode="replicate",
        )
    return torch.sigmoid(plain(logits)[0]).cpu()

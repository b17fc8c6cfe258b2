"""Follow-up to baseline registration: rigid -> affine (Mattes MI) -> a deformable backend, on clipped CT.

Pipeline (SimpleITK, torch and ANTs, multi-threaded, deterministic for a seed and thread count):
1. Both scans are clipped to a HU window; the baseline body mask (given or thresholded) restricts the metric
   (``registration.intensity``).
2. Rigid then affine alignment with Mattes mutual information (insensitive to HU offsets) on a 6/3 mm
   pyramid built once for both stages, or an affine started from a prior result (the previous follow-up's).
3. The follow-up is resampled onto the baseline grid and histogram-matched to it; the residual deformation
   comes from the preset's deformable backend, looked up by ``Preset.deformable`` in
   ``registration.backends.BACKENDS``: ``bspline`` (coarse-to-fine cubic B-spline FFD in torch, presets
   ``fast`` to 3 mm and ``accurate`` to 1.5 mm), ``demons`` (multi-resolution symmetric-forces demons),
   ``syn`` (ANTs SyN through antspyx) or ``none`` (preset ``affine``). A new backend is added in that one
   table (plus a preset here naming it); ``register`` itself does not change.
4. The field is inverted by fixed-point iteration (torch); transforms are written to ``workdir``.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from registration import bspline, intensity, quality
from registration.backends import BACKENDS, DeformableInputs, SynSettings, shrink_factors
from registration.transforms import is_field_file, read_transform, write_affine, write_field
from tracker.errors import MetatrackError

MI_BINS = 32
LINEAR_SMOOTHING_PER_SHRINK = 0.5  # Gaussian sigma of a pyramid level, in fixed voxels per shrink step
LINEAR_STAGE_THREADS = 1
OPTIMIZER_MAX_STEP_MM = 2.0
OPTIMIZER_MIN_STEP_MM = 1e-3
OPTIMIZER_RELAXATION = 0.5
FIELD_STORE_SPACING_MM = 3.0
INVERSE_ITERATIONS = 30
INVERSE_MEAN_TOLERANCE_MM = 1e-3
INVERSE_MAX_TOLERANCE_MM = 0.1
QUALITY_SHRINK = 2
# Scans finer than this are smoothed and shrunk to it first (a 0.8 mm CT to 1.6 mm): no stage of any preset
# looks finer than 1.5 mm (``accurate``'s last B-spline level), and every full-resolution filter (body mask,
# pyramids, resampling, histogram matching) then costs a quarter or less.
WORKING_VOXEL_MM = 1.6
ENGINE_NAMES = {name: backend.engine for name, backend in BACKENDS.items()}


@dataclass(frozen=True)
class Preset:
    """Settings of one registration preset.

    Pyramid levels are given as target voxel sizes in mm (coarse first); each becomes an integer shrink
    factor of the fixed grid, so a preset behaves alike on 1 mm and 3 mm scans.
    """

    name: str
    rigid_levels_mm: tuple[float, ...] = (6.0, 3.0)
    affine_levels_mm: tuple[float, ...] = (6.0, 3.0)
    linear_iterations: int = 100
    sampling_share: float = 0.05
    demons_levels_mm: tuple[float, ...] = (6.0, 3.0)
    demons_iterations: tuple[int, ...] = (100, 50)
    field_sigma_voxels: float = 2.0
    presmooth_voxels: float = 0.5
    diffeomorphic: bool = False
    deformable: str = "demons"  # a key of registration.backends.BACKENDS
    bspline: bspline.BSplineSettings = field(default_factory=bspline.BSplineSettings)
    syn: SynSettings = field(default_factory=SynSettings)


PRESETS: dict[str, Preset] = {
    "fast": Preset("fast", deformable="bspline"),
    "demons": Preset("demons"),
    # a fourth, 1.5 mm image level for the B-spline: lower TRE (p95 especially) for ~4-6 s more per follow-up
    "accurate": Preset(
        "accurate",
        deformable="bspline",
        bspline=bspline.BSplineSettings(
            image_levels_mm=(6.0, 6.0, 3.0, 1.5),
            control_spacing_mm=(40.0, 20.0, 20.0, 20.0),
            iterations=(100, 100, 60, 30),
            step_mm=(2.0, 1.0, 0.3, 0.3),
        ),
    ),
    "affine": Preset("affine", demons_levels_mm=(), demons_iterations=(), deformable="none"),
    # ANTs SyN (antspyx) after our affine, at 6 and 3 mm: a well-known reference deformable stage
    "syn": Preset("syn", deformable="syn"),
}


@dataclass
class RegistrationResult:
    """Transforms and quality of one follow-up-to-baseline registration.

    ``forward`` maps baseline (fixed) points to follow-up (moving) points, i.e. it resamples the follow-up
    into the baseline frame; ``inverse`` maps follow-up points to baseline points. Both lists apply to a
    point in list order (see ``registration.transforms``).
    """

    forward: list[Path]
    inverse: list[Path]
    metrics: dict[str, float | str | int] = field(default_factory=dict)
    needs_review: bool = False
    review_reasons: list[str] = field(default_factory=list)


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("SimpleITK", "antspyx", "torch", "numpy", "metatrack"):
        try:
            out[f"version_{dist.lower()}"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[f"version_{dist.lower()}"] = "absent"
    return out


def _to_affine(transform: sitk.Transform) -> sitk.AffineTransform:
    """Express a rigid/affine (possibly wrapped in a composite) transform as one AffineTransform."""
    tx: Any = transform.Downcast() if hasattr(transform, "Downcast") else transform
    if isinstance(tx, sitk.CompositeTransform):
        parts = [tx.GetNthTransform(i).Downcast() for i in range(tx.GetNumberOfTransforms())]
        matrix, offset = np.eye(3), np.zeros(3)
        for part in reversed(parts):  # applied last-added first; fold into x -> matrix @ x + offset
            m = np.asarray(part.GetMatrix()).reshape(3, 3)
            c = np.asarray(part.GetCenter())
            o = np.asarray(part.GetTranslation()) + c - m @ c
            matrix, offset = m @ matrix, m @ offset + o
        affine = sitk.AffineTransform(3)
        affine.SetMatrix(matrix.ravel().tolist())
        affine.SetTranslation(offset.tolist())
        return affine
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tx.GetCenter())
    affine.SetMatrix(tx.GetMatrix())
    affine.SetTranslation(tx.GetTranslation())
    return affine


Level = tuple[sitk.Image, sitk.Image, sitk.Image | None]


def _pyramid(fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image | None, shrinks: list[int]) -> dict[int, Level]:
    """Smoothed, shrunk fixed/moving/mask images per shrink factor of the fixed grid.

    Built once here with the global thread count (smoothing and shrinking are deterministic for any count)
    instead of inside ITK's registration method, which rebuilds the pyramid single-threaded at every level
    of every stage (4-8 s of the linear stage).
    """
    out: dict[int, Level] = {}
    finest = min(fixed.GetSpacing())
    for shrink in sorted(set(shrinks)):
        sigma_mm = LINEAR_SMOOTHING_PER_SHRINK * shrink * finest
        fixed_l = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, sigma_mm), [shrink] * 3)
        # The moving image is shrunk too (to about the same voxel size on its own grid): ITK filters the
        # whole moving image at every level, so its size sets the cost.
        moving_shrink = shrink_factors((shrink * finest,), moving.GetSpacing())[0]
        moving_l = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving, sigma_mm), [moving_shrink] * 3)
        mask_l = None
        if mask is not None:
            mask_l = sitk.Resample(mask, fixed_l, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        out[shrink] = (fixed_l, moving_l, mask_l)
    return out


def _unwrap(transform: sitk.Transform) -> sitk.Transform:
    tx = transform.Downcast()
    while isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0).Downcast()
    return tx


def _linear_stage(
    pyramid: dict[int, Level],
    initial: sitk.Transform,
    shrinks: list[int],
    preset: Preset,
    seed: int,
) -> sitk.Transform:
    """Mattes-MI gradient descent level by level (coarse first), each level restarting the optimiser."""
    transform = initial
    for shrink in shrinks:
        fixed, moving, mask = pyramid[shrink]
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(MI_BINS)
        if preset.sampling_share < 1.0:
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(preset.sampling_share, seed + 1)  # seed 0 would mean "wall clock"
        if mask is not None:
            reg.SetMetricFixedMask(mask)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(
            OPTIMIZER_MAX_STEP_MM,
            OPTIMIZER_MIN_STEP_MM,
            preset.linear_iterations,
            relaxationFactor=OPTIMIZER_RELAXATION,
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(transform, inPlace=False)
        # ITK's threaded metric sums in a varying order, so only one thread makes the result reproducible.
        threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(LINEAR_STAGE_THREADS)
        try:
            transform = _unwrap(reg.Execute(fixed, moving))
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return transform


def _initial_affine(initial: RegistrationResult) -> sitk.Transform:
    parametric = [p for p in initial.forward if not is_field_file(Path(p))]
    if not parametric:
        raise MetatrackError("initial: prior registration has no affine transform file in its forward list")
    return _to_affine(read_transform(Path(parametric[-1])))


def _check_image(image: sitk.Image, name: str) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise MetatrackError(
            f"{name}: expected a 3-D scalar image, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} components"
        )


def _quality(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image,
    affine: sitk.AffineTransform,
    disp: sitk.Image | None,
) -> dict[str, float | str | int]:
    reference = sitk.Shrink(fixed, [QUALITY_SHRINK] * 3)
    mask_img = sitk.Resample(fixed_mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    mask = sitk.GetArrayFromImage(mask_img) > 0
    full = sitk.CompositeTransform([affine])
    if disp is not None:
        full.AddTransform(sitk.DisplacementFieldTransform(sitk.Image(disp)))
    air = intensity.HU_WINDOW_LOW
    before = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, air, sitk.sitkFloat32)
    after = sitk.Resample(moving, reference, full, sitk.sitkLinear, air, sitk.sitkFloat32)
    fixed_arr = sitk.GetArrayFromImage(reference)
    moving_body = sitk.GetArrayFromImage(intensity.body_mask(after)) > 0
    matrix = np.asarray(affine.GetMatrix()).reshape(3, 3)
    scales = quality.affine_scales(matrix)
    affine_det = float(np.linalg.det(matrix))
    out: dict[str, float | str | int] = {
        "body_voxels": int(mask.sum()),
        "ncc_before": quality.ncc(fixed_arr, sitk.GetArrayFromImage(before), mask) if mask.any() else 0.0,
        "ncc_after": quality.ncc(fixed_arr, sitk.GetArrayFromImage(after), mask) if mask.any() else 0.0,
        "body_dice": quality.dice(mask, moving_body),
        "affine_det": affine_det,
        "affine_scale_min": float(scales.min()),
        "affine_scale_max": float(scales.max()),
    }
    out.update(quality.jacobian_stats(disp, affine_det))
    return out


@contextmanager
def _itk_threads(threads: int) -> Iterator[None]:
    """SimpleITK's global thread count and ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS set to ``threads`` meanwhile."""
    previous_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    previous_env = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous_threads)
        if previous_env is None:
            os.environ.pop("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", None)
        else:
            os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = previous_env


def _affine_stage(
    fixed_c: sitk.Image,
    moving_c: sitk.Image,
    mask: sitk.Image,
    cfg: Preset,
    seed: int,
    initial: RegistrationResult | None,
) -> sitk.AffineTransform:
    """Rigid then affine (or affine from a prior result's) Mattes-MI alignment, baseline point -> follow-up."""
    metric_mask = mask if sitk.GetArrayViewFromImage(mask).sum() >= quality.MIN_MASK_VOXELS else None
    rigid_shrinks = shrink_factors(cfg.rigid_levels_mm, fixed_c.GetSpacing())
    affine_shrinks = shrink_factors(cfg.affine_levels_mm, fixed_c.GetSpacing())
    pyramid = _pyramid(fixed_c, moving_c, metric_mask, rigid_shrinks + affine_shrinks)
    if initial is not None:
        start_tx: sitk.Transform = _initial_affine(initial)
    else:
        rigid0 = sitk.CenteredTransformInitializer(
            fixed_c, moving_c, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
        start_tx = _to_affine(_linear_stage(pyramid, rigid0, rigid_shrinks, cfg, seed))
    return _to_affine(_linear_stage(pyramid, start_tx, affine_shrinks, cfg, seed))


def invert_field(disp: sitk.Image) -> sitk.Image:
    """Inverse v of a displacement field d on its own grid: v(y) = -d(y + v(y)), by fixed-point iteration.

    Runs in torch (trilinear ``grid_sample`` in float32, as the field is stored; the field held constant beyond
    its border) on ``bspline.device()``, until the residual |v + d(y + v)| is below ``INVERSE_MAX_TOLERANCE_MM``
    everywhere and ``INVERSE_MEAN_TOLERANCE_MM`` on average, or after ``INVERSE_ITERATIONS``. It replaced ITK's
    ``InvertDisplacementField`` (the same iteration; ITK stops when either tolerance holds), which took 1.8 CPU-s
    on a 0.9 M voxel field, a third of a small scan's registration, against 0.25 CPU-s here (the same round
    trip, 0.003 mm mean).
    """
    import torch
    import torch.nn.functional as F

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(bspline.TORCH_THREADS)
    try:
        dev = bspline.device()
        direction = np.asarray(disp.GetDirection()).reshape(3, 3)
        size_xyz = np.asarray(disp.GetSize())
        # mm along the grid's index axes -> grid_sample's normalised (x, y, z) units (align_corners=True)
        to_norm = 2.0 / (np.asarray(disp.GetSpacing()) * np.maximum(size_xyz - 1, 1))
        index_mm = (sitk.GetArrayFromImage(disp) @ direction).astype(np.float32)  # (Z, Y, X, 3)
        field = torch.from_numpy(index_mm).to(dev).permute(3, 0, 1, 2).contiguous()  # (3, Z, Y, X)
        scale = torch.from_numpy(to_norm.astype(np.float32)).to(dev)
        axes = [torch.linspace(-1.0, 1.0, int(n), dtype=torch.float32, device=dev) for n in size_xyz[::-1]]
        gz, gy, gx = torch.meshgrid(*axes, indexing="ij")
        identity = torch.stack((gx, gy, gz), dim=-1)[None]
        inverse = -field
        with torch.no_grad():
            for _ in range(INVERSE_ITERATIONS):
                grid = identity + inverse.permute(1, 2, 3, 0)[None] * scale
                sampled = F.grid_sample(field[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
                update = -sampled[0]
                residual = ((update - inverse) ** 2).sum(0).sqrt()
                inverse = update
                if residual.max() <= INVERSE_MAX_TOLERANCE_MM and residual.mean() <= INVERSE_MEAN_TOLERANCE_MM:
                    break
        lps = inverse.permute(1, 2, 3, 0).cpu().numpy().astype(np.float64) @ direction.T
    finally:
        torch.set_num_threads(previous_threads)
    out = sitk.GetImageFromArray(lps, isVector=True)
    out.CopyInformation(disp)
    return out


def _write_transforms(
    affine: sitk.AffineTransform, disp: sitk.Image | None, workdir: Path
) -> tuple[list[Path], list[Path], sitk.Image | None]:
    """Write the affine, the field and their inverses; the field comes back as stored (float32 precision)."""
    forward = [write_affine(affine, workdir / "affine.tfm")]
    inverse = [write_affine(affine.GetInverse(), workdir / "affine_inverse.tfm")]
    if disp is None:
        return forward, inverse, None
    disp_inv = invert_field(disp)
    # Uncompressed: gzip took 0.33 CPU-s per 0.9 M voxel field and saved 9 % of its size (float noise).
    forward.insert(0, write_field(disp, workdir / "warp.nii"))
    inverse.append(write_field(disp_inv, workdir / "warp_inverse.nii"))
    # Quality is evaluated on the field as stored, so metrics describe the files.
    return forward, inverse, sitk.Cast(sitk.Cast(disp, sitk.sitkVectorFloat32), sitk.sitkVectorFloat64)


def working_shrink(spacing: tuple[float, ...]) -> list[int]:
    """Per axis (x, y, z), the largest integer shrink that keeps a voxel side within ``WORKING_VOXEL_MM``."""
    return [max(1, math.floor(WORKING_VOXEL_MM / sp + 1e-6)) for sp in spacing]


def _working_copy(image: sitk.Image) -> sitk.Image:
    """``image`` smoothed (half a voxel per shrink step) and shrunk to ``working_shrink``; itself when that is 1."""
    shrink = working_shrink(image.GetSpacing())
    if max(shrink) == 1:
        return image
    sigma = [LINEAR_SMOOTHING_PER_SHRINK * k * sp for k, sp in zip(shrink, image.GetSpacing(), strict=True)]
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(image, sigma), shrink)


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    preset: str = "fast",
    seed: int = 0,
    threads: int = 2,
    workdir: Path,
    fixed_mask: sitk.Image | None = None,
    initial: RegistrationResult | None = None,
) -> RegistrationResult:
    """Register a follow-up CT (``moving``) to its baseline (``fixed``).

    Parameters
    ----------
    fixed, moving : 3-D CT images in HU; spacings and grids may differ.
    preset : ``"fast"`` (B-spline to 3 mm), ``"accurate"`` (B-spline to 1.5 mm), ``"demons"``, ``"syn"``
        (ANTs SyN) or ``"affine"`` (see ``PRESETS``).
    seed, threads : make the result reproducible (metric sampling seed, ITK and torch thread count).
    workdir : folder that receives the transform files (created if missing).
    fixed_mask : body mask on the fixed grid; thresholded from ``fixed`` when omitted.
    initial : a prior result (e.g. the previous follow-up's) whose affine starts the linear stage.
    """
    if preset not in PRESETS:
        raise MetatrackError(f"preset: unknown value {preset!r}; expected one of {', '.join(PRESETS)}")
    if threads < 1:
        raise MetatrackError(f"threads: must be >= 1, got {threads}")
    _check_image(fixed, "fixed")
    _check_image(moving, "moving")
    cfg = PRESETS[preset]
    backend = BACKENDS[cfg.deformable]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    start_wall = time.perf_counter()
    start_cpu = _cpu_seconds()
    stage_cpu: dict[str, float] = {}
    with _itk_threads(threads):
        fixed_c = _working_copy(intensity.clip_window(fixed))
        moving_c = _working_copy(intensity.clip_window(moving))
        if fixed_mask is None:
            mask = intensity.body_mask(fixed_c)
        else:
            mask = sitk.Resample(
                sitk.Cast(fixed_mask > 0, sitk.sitkUInt8), fixed_c, sitk.Transform(), sitk.sitkNearestNeighbor, 0
            )
        affine = _affine_stage(fixed_c, moving_c, mask, cfg, seed, initial)
        stage_cpu["linear_cpu_s"] = _cpu_seconds() - start_cpu

        store_shrink = shrink_factors((FIELD_STORE_SPACING_MM,), fixed_c.GetSpacing())[0]
        store_grid = sitk.Shrink(fixed_c, [store_shrink] * 3)
        inputs = DeformableInputs(fixed_c, moving_c, affine, mask, store_grid)
        disp = backend.displacement(inputs, cfg, threads=threads, seed=seed, workdir=workdir)
        if disp is not None:
            stage_cpu["deformable_cpu_s"] = _cpu_seconds() - start_cpu - stage_cpu["linear_cpu_s"]
            if disp.GetSize() != store_grid.GetSize():
                disp = sitk.Resample(disp, store_grid, sitk.Transform(), sitk.sitkLinear, 0.0, disp.GetPixelID())

        forward, inverse, disp = _write_transforms(affine, disp, workdir)
        before_quality = _cpu_seconds()
        metrics = _quality(fixed_c, moving_c, mask, affine, disp)
        stage_cpu["quality_cpu_s"] = _cpu_seconds() - before_quality
    metrics.update(
        {
            "preset": cfg.name,
            "seed": seed,
            "threads": threads,
            "engine": backend.engine,
            "initialised_from_prior": int(initial is not None),
            "runtime_s": time.perf_counter() - start_wall,
            "cpu_s": _cpu_seconds() - start_cpu,
        }
    )
    metrics.update(stage_cpu)
    metrics.update(_versions())
    reasons = quality.review(metrics)
    return RegistrationResult(forward, inverse, metrics, bool(reasons), reasons)


def _cpu_seconds() -> float:
    """CPU seconds of this process, all threads, and of its finished child processes (user + system)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)

"""Cubic B-spline free-form deformation in torch, fitted coarse to fine on affinely aligned, harmonised CT.

The displacement d(u) of a fixed-image point is a sum of cubic B-spline tensor grids (one per level, control
spacing halving level by level), evaluated separably as three small matrix products. Images are warped with
``grid_sample`` and compared by a body-masked mean squared difference of smoothed intensities; a discrete
bending penalty on the control coefficients keeps the field smooth. Every level runs a fixed number of Adam
iterations in float32 on one thread (or the CUDA device), so the result is reproducible for a seed.

Cost follows the image: a level's voxels are shrunk per axis towards its size in mm, a level that repeats the
previous one's grid and control spacing is dropped, and each iteration compares the images on a seeded random
sub-lattice of at most about ``BSplineSettings.sample_budget_voxels`` voxels (every stride-th voxel per axis).
On a 0.9 M voxel scan at 3 mm the 3 mm levels took 80 % of the time on all voxels; with the sub-lattice an
iteration costs the same on any level and the TRE on the simulator moved by 0.03 mm.

Coordinates: arrays are (z, y, x); displacements are computed in mm along the fixed image's index axes and
turned into LPS mm with the image direction only when the field is written out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import cast

import numpy as np
import SimpleITK as sitk

HU_SCALE = 1000.0
BOX_MARGIN_VOXELS = 2
LOSS_SCALE = 1e4
BSPLINE_SUPPORT = 2.0
# Torch runs on one CPU thread whatever the caller's count: its tensors (a sample budget, a 3 mm field) gain
# little from a second, and on a busy machine OpenMP threads spinning at every operation's barrier made the
# fit of a 0.9 M voxel scan take 15 CPU-s on two threads against 1.4 CPU-s on one.
TORCH_THREADS = 1


@dataclass(frozen=True)
class BSplineSettings:
    """Pyramid of the B-spline stage: image voxel size and control spacing per level (coarse first)."""

    image_levels_mm: tuple[float, ...] = (6.0, 6.0, 3.0)
    control_spacing_mm: tuple[float, ...] = (40.0, 20.0, 20.0)
    iterations: tuple[int, ...] = (100, 100, 60)
    step_mm: tuple[float, ...] = (2.0, 1.0, 0.3)
    bending_weight: float = 3.0
    presmooth_voxels: float = 0.5
    sample_budget_voxels: int = 2**16  # voxels compared per iteration, at most about (see ``sampling_stride``)


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    a = np.abs(t)
    out = np.zeros_like(a)
    inner = a < 1.0
    outer = (a >= 1.0) & (a < BSPLINE_SUPPORT)
    out[inner] = (4.0 - 6.0 * a[inner] ** 2 + 3.0 * a[inner] ** 3) / 6.0
    out[outer] = (BSPLINE_SUPPORT - a[outer]) ** 3 / 6.0
    return out


def control_count(extent_mm: float, spacing_mm: float) -> int:
    """Control points along an axis of ``extent_mm``: the first sits one spacing before 0."""
    return int(np.ceil(extent_mm / spacing_mm)) + 3


def basis_matrix(positions_mm: np.ndarray, spacing_mm: float, count: int) -> np.ndarray:
    """(len(positions), count) weights of control points at -spacing + j * spacing for each position."""
    knots = (np.arange(count) - 1.0) * spacing_mm
    return _cubic_bspline((positions_mm[:, None] - knots[None, :]) / spacing_mm)


def evaluate(coef, bz, by, bx):
    """Dense displacement (Z, Y, X, 3) from coefficients (nz, ny, nx, 3) and per-axis bases (n_out, n_ctrl)."""
    import torch

    nz, ny, nx, c = coef.shape
    t = torch.matmul(bx, coef.reshape(nz * ny, nx, c))  # (nz*ny, X, c)
    t = torch.matmul(by, t.reshape(nz, ny, -1))  # (nz, Y, X*c)
    t = bz @ t.reshape(nz, -1)  # (Z, Y*X*c)
    return t.reshape(bz.shape[0], by.shape[0], bx.shape[0], c)


def refinement(fine_positions_mm: np.ndarray, coarse: tuple[float, int], fine: tuple[float, int]) -> np.ndarray:
    """(n_fine, n_coarse) matrix that re-expresses a coarse B-spline on a nested finer control grid.

    The coarse knots are a subset of the fine ones, so the least-squares fit over the domain is exact.
    """
    b_fine = basis_matrix(fine_positions_mm, *fine)
    b_coarse = basis_matrix(fine_positions_mm, *coarse)
    return np.linalg.lstsq(b_fine, b_coarse, rcond=None)[0]


def bending(coef):
    """Mean squared second differences of control coefficients (a discrete bending energy)."""
    terms = []
    for axis in (0, 1, 2):
        n = coef.shape[axis]
        if n < 3:
            continue
        a = coef.narrow(axis, 0, n - 2)
        b = coef.narrow(axis, 1, n - 2)
        c = coef.narrow(axis, 2, n - 2)
        terms.append(((a - 2.0 * b + c) ** 2).mean())
    return sum(terms)


def _warp_function():
    """A grid_sample of an image whose backward uses the sampled image gradient (cheaper than autograd's)."""
    import torch
    import torch.nn.functional as F

    class Warp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, grid, stack):  # stack: (1, 4, Z, Y, X) = image and its d/dx_norm, d/dy_norm, d/dz_norm
            sampled = F.grid_sample(stack, grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
            ctx.save_for_backward(sampled[1:])
            return sampled[0]

        @staticmethod
        def backward(ctx, grad_out):
            (gradient,) = ctx.saved_tensors
            return (gradient * grad_out[None]).permute(1, 2, 3, 0)[None], None

    return Warp.apply


def _gradient_stack(m):
    """Image (1, 1, Z, Y, X) with its central-difference gradient in normalised (x, y, z) grid units."""
    import torch

    image = m[0, 0]
    parts = [image]
    for axis in (2, 1, 0):  # x, y, z
        n = image.shape[axis]
        g = torch.gradient(image, dim=axis)[0] * (max(n - 1, 1) / 2.0)
        parts.append(g)
    return torch.stack(parts)[None]


def _bounding_box(weight, margin: int) -> tuple[slice, slice, slice]:
    """Slices of the non-zero part of ``weight`` (Z, Y, X) widened by ``margin`` voxels."""
    nonzero = weight.nonzero()
    if nonzero.shape[0] == 0:
        return cast(tuple[slice, slice, slice], tuple(slice(0, n) for n in weight.shape))
    low = (nonzero.min(dim=0).values - margin).clamp(min=0).tolist()
    high = nonzero.max(dim=0).values.tolist()
    return cast(
        tuple[slice, slice, slice],
        tuple(slice(lo, min(hi + margin + 1, n)) for lo, hi, n in zip(low, high, weight.shape, strict=True)),
    )


def _level_image(image: sitk.Image, shrink: list[int], presmooth: float) -> sitk.Image:
    if presmooth > 0:
        sigma = [presmooth * k * sp for k, sp in zip(shrink, image.GetSpacing(), strict=True)]
        image = sitk.SmoothingRecursiveGaussian(image, sigma)
    return sitk.Shrink(image, shrink) if max(shrink) > 1 else image


def level_shrink(level_mm: float, spacing: tuple[float, ...]) -> list[int]:
    """Integer shrink factor per axis (x, y, z) that brings each voxel side of ``spacing`` near ``level_mm``."""
    return [max(1, round(level_mm / sp)) for sp in spacing]


def sampling_stride(voxels: int, budget: int) -> int:
    """Smallest stride per axis whose sub-lattice of a ``voxels`` box holds at most about ``budget`` voxels."""
    return max(1, math.ceil((voxels / budget) ** (1.0 / 3.0) - 1e-9))


def device():
    """The torch device of the B-spline stage: the first CUDA device when there is one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _axis_positions_mm(level: sitk.Image, reference: sitk.Image) -> list[np.ndarray]:
    """Per array axis (z, y, x), positions of ``level`` voxels in mm along ``reference`` index axes."""
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    offset = direction.T @ (np.asarray(level.GetOrigin()) - np.asarray(reference.GetOrigin()))
    out = []
    for axis_xyz in (2, 1, 0):
        n = level.GetSize()[axis_xyz]
        out.append(offset[axis_xyz] + np.arange(n) * level.GetSpacing()[axis_xyz])
    return out


def _levels(settings: BSplineSettings, spacing: tuple[float, ...]) -> list[tuple[list[int], float, int, float]]:
    """(shrink per axis, control spacing, iterations, step) per level, dropping a level that repeats the
    previous one's grid and control spacing (a 1.5 mm level on a 3 mm scan re-runs the 3 mm level)."""
    out: list[tuple[list[int], float, int, float]] = []
    for level_mm, control_mm, iterations, step_mm in zip(
        settings.image_levels_mm, settings.control_spacing_mm, settings.iterations, settings.step_mm, strict=True
    ):
        shrink = level_shrink(level_mm, spacing)
        if out and out[-1][0] == shrink and out[-1][1] == control_mm:
            continue
        out.append((shrink, control_mm, iterations, step_mm))
    return out


def fit(
    fixed: sitk.Image,
    moving: sitk.Image,
    mask: sitk.Image | None,
    settings: BSplineSettings,
    store_grid: sitk.Image,
    seed: int,
) -> sitk.Image:
    """Fit the B-spline deformation of ``moving`` onto ``fixed`` (same grid) and sample it on ``store_grid``.

    Returns a float64 displacement-field image on ``store_grid`` (LPS mm) so that p -> p + d(p) maps a fixed
    point to the matching point of ``moving``. Runs on ``device()`` (CUDA when present), same code either way.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read when CUDA starts
    import torch

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(TORCH_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    dev = device()
    try:
        spacing_zyx = np.asarray(fixed.GetSpacing())[::-1]
        extent_mm = (np.asarray(fixed.GetSize())[::-1] - 1) * spacing_zyx
        warp = _warp_function()
        offsets = torch.Generator().manual_seed(seed)
        coef: torch.Tensor | None = None
        counts: tuple[int, ...] = ()
        previous_control = 0.0
        level_images: dict[tuple[int, ...], tuple[sitk.Image, sitk.Image]] = {}
        for shrink, control_mm, iterations, step_mm in _levels(settings, fixed.GetSpacing()):
            key = tuple(shrink)
            if key not in level_images:  # the first two levels share their grid, at another control spacing
                level_images[key] = (
                    _level_image(fixed, shrink, settings.presmooth_voxels),
                    _level_image(moving, shrink, settings.presmooth_voxels),
                )
            f_img, m_img = level_images[key]
            f = torch.from_numpy(sitk.GetArrayFromImage(f_img) / HU_SCALE).float()
            m = torch.from_numpy(sitk.GetArrayFromImage(m_img) / HU_SCALE).float()[None, None]
            if mask is not None:
                mk = sitk.Resample(mask, f_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
                weight = torch.from_numpy((sitk.GetArrayFromImage(mk) > 0).astype(np.float32))
            else:
                weight = torch.ones_like(f)
            positions = _axis_positions_mm(f_img, fixed)
            box = _bounding_box(weight, BOX_MARGIN_VOXELS)
            new_counts = tuple(control_count(e, control_mm) for e in extent_mm)
            if coef is None:
                coef = torch.zeros((*new_counts, 3), dtype=torch.float32, device=dev)
            else:
                dense = [np.linspace(0.0, e, 4 * n) for e, n in zip(extent_mm, new_counts, strict=True)]
                mats = [
                    torch.from_numpy(
                        refinement(dense[a], (previous_control, counts[a]), (control_mm, new_counts[a]))
                    ).float()
                    for a in range(3)
                ]
                with torch.no_grad():
                    coef = evaluate(coef, *(mat.to(dev) for mat in mats))
            counts, previous_control = new_counts, control_mm
            coef = coef.detach().requires_grad_(True)
            bz, by, bx = (
                torch.from_numpy(basis_matrix(positions[a][box[a]], control_mm, counts[a])).float().to(dev)
                for a in range(3)
            )
            # Normalised grid_sample coordinates (x, y, z) of every level voxel (align_corners=True).
            sizes = np.asarray(f.shape)
            base_norm = [torch.linspace(-1.0, 1.0, int(n), dtype=torch.float32) for n in sizes]
            gz, gy, gx = torch.meshgrid(*base_norm, indexing="ij")
            identity = torch.stack((gx, gy, gz), dim=-1)[None][:, box[0], box[1], box[2]].contiguous().to(dev)
            m_spacing = np.asarray(m_img.GetSpacing())
            to_norm = torch.tensor(
                [2.0 / (m_spacing[a] * max(int(sizes[2 - a]) - 1, 1)) for a in range(3)], dtype=torch.float32
            ).to(dev)
            stack = _gradient_stack(m).to(dev)
            f, weight = f[box].contiguous().to(dev), weight[box].contiguous().to(dev)
            # Each iteration compares the images on a sub-lattice of the box (every stride-th voxel per axis, from
            # a seeded random offset): the cost of an iteration stays near the budget whatever the voxel count.
            stride = sampling_stride(f.numel(), settings.sample_budget_voxels)
            optimiser = torch.optim.Adam([coef], lr=step_mm)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=iterations)
            for _ in range(iterations):
                oz, oy, ox = torch.randint(stride, (3,), generator=offsets).tolist()
                lattice = (slice(oz, None, stride), slice(oy, None, stride), slice(ox, None, stride))
                bases = (bz[lattice[0]], by[lattice[1]], bx[lattice[2]])
                w = weight[lattice]
                optimiser.zero_grad()
                grid = identity[(slice(None), *lattice)] + evaluate(coef * to_norm, *bases)[None]  # coef: mm
                warped = warp(grid, stack)
                data = (w * (warped - f[lattice]) ** 2).sum() / w.sum().clamp(min=1.0)
                loss = LOSS_SCALE * data + settings.bending_weight * bending(coef)
                loss.backward()
                optimiser.step()
                schedule.step()
        assert coef is not None
        coef = coef.detach().cpu()

        positions = _axis_positions_mm(store_grid, fixed)
        bz, by, bx = (torch.from_numpy(basis_matrix(positions[a], previous_control, counts[a])) for a in range(3))
        with torch.no_grad():
            disp = evaluate(coef.double(), bz, by, bx).numpy()  # (Z, Y, X, 3), mm along x, y, z index axes
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
    direction = np.asarray(fixed.GetDirection()).reshape(3, 3)
    lps = disp @ direction.T
    field = sitk.GetImageFromArray(lps.astype(np.float64), isVector=True)
    field.CopyInformation(store_grid)
    return field

"""Cubic B-spline free-form deformation in torch, fitted coarse to fine on affinely aligned, harmonised CT.

The displacement d(u) of a fixed-image point is a sum of cubic B-spline tensor grids (one per level, control
spacing halving level by level), evaluated separably as three small matrix products. Images are warped with
``grid_sample`` and compared by a body-masked mean squared difference of smoothed intensities; a discrete
bending penalty on the control coefficients keeps the field smooth. Every level runs a fixed number of
L-BFGS iterations in float32 on a fixed thread count, so the result is reproducible for a thread count.

Coordinates: arrays are (z, y, x); displacements are computed in mm along the fixed image's index axes and
turned into LPS mm with the image direction only when the field is written out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import SimpleITK as sitk

HU_SCALE = 1000.0
BOX_MARGIN_VOXELS = 2
LOSS_SCALE = 1e4
BSPLINE_SUPPORT = 2.0


@dataclass(frozen=True)
class BSplineSettings:
    """Pyramid of the B-spline stage: image voxel size and control spacing per level (coarse first)."""

    image_levels_mm: tuple[float, ...] = (6.0, 6.0, 3.0)
    control_spacing_mm: tuple[float, ...] = (40.0, 20.0, 20.0)
    iterations: tuple[int, ...] = (100, 100, 60)
    step_mm: tuple[float, ...] = (2.0, 1.0, 0.3)
    bending_weight: float = 3.0
    presmooth_voxels: float = 0.5


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


def _level_image(image: sitk.Image, shrink: int, presmooth: float) -> sitk.Image:
    if presmooth > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [presmooth * max(shrink, 1) * s for s in image.GetSpacing()])
    return sitk.Shrink(image, [shrink] * image.GetDimension()) if shrink > 1 else image


def _axis_positions_mm(level: sitk.Image, reference: sitk.Image) -> list[np.ndarray]:
    """Per array axis (z, y, x), positions of ``level`` voxels in mm along ``reference`` index axes."""
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    offset = direction.T @ (np.asarray(level.GetOrigin()) - np.asarray(reference.GetOrigin()))
    out = []
    for axis_xyz in (2, 1, 0):
        n = level.GetSize()[axis_xyz]
        out.append(offset[axis_xyz] + np.arange(n) * level.GetSpacing()[axis_xyz])
    return out


def fit(
    fixed: sitk.Image,
    moving: sitk.Image,
    mask: sitk.Image | None,
    settings: BSplineSettings,
    store_grid: sitk.Image,
    threads: int,
    seed: int,
) -> sitk.Image:
    """Fit the B-spline deformation of ``moving`` onto ``fixed`` (same grid) and sample it on ``store_grid``.

    Returns a float64 displacement-field image on ``store_grid`` (LPS mm) so that p -> p + d(p) maps a fixed
    point to the matching point of ``moving``.
    """
    import torch

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        spacing_zyx = np.asarray(fixed.GetSpacing())[::-1]
        extent_mm = (np.asarray(fixed.GetSize())[::-1] - 1) * spacing_zyx
        finest = float(min(fixed.GetSpacing()))
        warp = _warp_function()
        coef: torch.Tensor | None = None
        counts: tuple[int, ...] = ()
        previous_control = 0.0
        for level_mm, control_mm, iterations, step_mm in zip(
            settings.image_levels_mm, settings.control_spacing_mm, settings.iterations, settings.step_mm, strict=True
        ):
            shrink = max(1, round(level_mm / finest))
            f_img = _level_image(fixed, shrink, settings.presmooth_voxels)
            m_img = _level_image(moving, shrink, settings.presmooth_voxels)
            f = torch.from_numpy(sitk.GetArrayFromImage(f_img) / HU_SCALE).float()
            m = torch.from_numpy(sitk.GetArrayFromImage(m_img) / HU_SCALE).float()[None, None]
            if mask is not None:
                mk = sitk.Resample(mask, f_img, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
                weight = torch.from_numpy((sitk.GetArrayFromImage(mk) > 0).astype(np.float32))
            else:
                weight = torch.ones_like(f)
            weight = weight / weight.sum().clamp(min=1.0)
            positions = _axis_positions_mm(f_img, fixed)
            box = _bounding_box(weight, BOX_MARGIN_VOXELS)
            new_counts = tuple(control_count(e, control_mm) for e in extent_mm)
            if coef is None:
                coef = torch.zeros((*new_counts, 3), dtype=torch.float32)
            else:
                dense = [np.linspace(0.0, e, 4 * n) for e, n in zip(extent_mm, new_counts, strict=True)]
                mats = [
                    torch.from_numpy(
                        refinement(dense[a], (previous_control, counts[a]), (control_mm, new_counts[a]))
                    ).float()
                    for a in range(3)
                ]
                with torch.no_grad():
                    coef = evaluate(coef, *mats)
            counts, previous_control = new_counts, control_mm
            coef = coef.detach().requires_grad_(True)
            bz, by, bx = (
                torch.from_numpy(basis_matrix(positions[a][box[a]], control_mm, counts[a])).float() for a in range(3)
            )
            # Normalised grid_sample coordinates (x, y, z) of every level voxel (align_corners=True).
            sizes = np.asarray(f.shape)
            base_norm = [torch.linspace(-1.0, 1.0, int(n), dtype=torch.float32) for n in sizes]
            gz, gy, gx = torch.meshgrid(*base_norm, indexing="ij")
            identity = torch.stack((gx, gy, gz), dim=-1)[None][:, box[0], box[1], box[2]].contiguous()
            m_spacing = np.asarray(m_img.GetSpacing())
            to_norm = torch.tensor(
                [2.0 / (m_spacing[a] * max(int(sizes[2 - a]) - 1, 1)) for a in range(3)], dtype=torch.float32
            )
            stack = _gradient_stack(m)
            f, weight = f[box].contiguous(), weight[box].contiguous()
            optimiser = torch.optim.Adam([coef], lr=step_mm)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=iterations)

            bases = (bz, by, bx)
            for _ in range(iterations):
                optimiser.zero_grad()
                grid = identity + evaluate(coef * to_norm, *bases)[None]  # coef: mm along x, y, z index axes
                warped = warp(grid, stack)
                loss = LOSS_SCALE * (weight * (warped - f) ** 2).sum() + settings.bending_weight * bending(coef)
                loss.backward()
                optimiser.step()
                schedule.step()
        assert coef is not None
        coef = coef.detach()

        positions = _axis_positions_mm(store_grid, fixed)
        bz, by, bx = (torch.from_numpy(basis_matrix(positions[a], previous_control, counts[a])) for a in range(3))
        bases = (bz, by, bx)
        with torch.no_grad():
            disp = evaluate(coef.double(), *bases).numpy()  # (Z, Y, X, 3), mm along x, y, z index axes
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
    direction = np.asarray(fixed.GetDirection()).reshape(3, 3)
    lps = disp @ direction.T
    field = sitk.GetImageFromArray(lps.astype(np.float64), isVector=True)
    field.CopyInformation(store_grid)
    return field

"""One scan: resample the anatomy through psi_k once, draw the lesions present at that day, add scanner noise.

The mask is the union of the lesions' analytic membership at psi_k(q) for each voxel centre q; its connected
components (26-connectivity) are labelled 1..k in a random order, and ``labels`` records which true lesion ids each
component holds (two ids for merged lesions, one id under two labels for a split lesion).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from scipy import ndimage

from tracker.simulator.anatomy import HU_AIR, NEAR_BODY_BIT, ORGAN_LIVER, ORGAN_LUNG, ORGAN_MASK, lesion_texture
from tracker.simulator.config import ScannerSpec
from tracker.simulator.grid import Grid
from tracker.simulator.lesions import (
    HET_HU,
    NECROTIC_HU,
    heterogeneity,
    lesion_extent,
    lesion_rho,
    necrosis,
    size_factor,
)
from tracker.simulator.motion import anatomy_coords_on_grid, to_scan

CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
STRETCH_MARGIN = 1.35  # bound on the local stretch of the non-rigid part when bounding lesions in scan space
NECROSIS_EDGE = 0.15  # width (normalised radius) of the viable-to-necrotic transition
PARTIAL_VOLUME_BAND = 0.3  # normalised radius outside the lesion where its edge still blends into the voxel
ORGAN_CODE = {"liver": ORGAN_LIVER, "lung": ORGAN_LUNG}
INT16_MIN, INT16_MAX = -32768, 32767


def scan_grid(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], scanner: ScannerSpec, vary: bool
) -> Grid:
    """The scanner's grid: same field of view, slice spacing scaled by the scanner's ``slice_factor``."""
    if not vary or scanner.slice_factor == 1.0:
        return Grid.centred(shape, spacing)
    sz = spacing[2] * scanner.slice_factor
    nz = max(round(shape[2] * spacing[2] / sz), 8)
    return Grid.centred((shape[0], shape[1], nz), (spacing[0], spacing[1], sz))


def _sample_linear(
    vol: np.ndarray, grid: Grid, px: np.ndarray, py: np.ndarray, pz: np.ndarray, fill: float
) -> np.ndarray:
    """Trilinear samples of ``vol`` at physical points; ``fill`` outside the grid."""
    coords = np.empty((3, *px.shape), dtype=np.float32)
    for axis, (pts, o, s) in enumerate(zip((pz, py, px), grid.origin[::-1], grid.spacing[::-1], strict=True)):
        np.subtract(pts, np.float32(o), out=coords[axis])
        coords[axis] *= np.float32(1.0 / s)
    return ndimage.map_coordinates(vol, coords, order=1, mode="nearest", prefilter=False, output=np.float32)


def _sample_nearest(vol: np.ndarray, grid: Grid, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    """Nearest-voxel samples of ``vol`` at physical points (clamped to the grid)."""
    flat = np.zeros(px.shape, dtype=np.int32)
    tmp = np.empty(px.shape, dtype=np.float32)
    stride = 1
    for pts, o, s, n in zip((px, py, pz), grid.origin, grid.spacing, grid.shape, strict=True):
        np.multiply(pts, np.float32(1.0 / s), out=tmp)
        tmp += np.float32(0.5 - o / s)  # + 0.5 then truncation = rounding (after clamping to >= 0)
        np.clip(tmp, 0.0, n - 1, out=tmp)
        flat += tmp.astype(np.int32) * np.int32(stride)
        stride *= n
    return np.take(vol.ravel(), flat)


def render_scan(
    anatomy: dict[str, np.ndarray],
    anatomy_grid: Grid,
    grid: Grid,
    motion: dict[str, Any],
    lesions: list[dict[str, Any]],
    centres: dict[str, np.ndarray],
    day: float,
    scanner: ScannerSpec,
    rng: np.random.Generator,
    identity: bool = False,
) -> dict[str, Any]:
    """Render scan arrays (z, y, x) and its label truth.

    Returns a dict with ``image`` (int16 HU), ``clean`` (float32 HU before noise and offset), ``mask`` (uint16
    labels), ``organs`` (uint8), ``labels`` ({label: [lesion ids]}), ``n_voxels`` ({lesion id: count}).
    """
    xs, ys, zs = grid.axes_mm()
    if identity and grid == anatomy_grid:
        hu = anatomy["hu"].copy()
        organs = anatomy["organ"].copy()
        z3, y3, x3 = np.broadcast_arrays(zs[:, None, None], ys[None, :, None], xs[None, None, :])
        px, py, pz = x3, y3, z3
    else:
        px, py, pz = anatomy_coords_on_grid(motion, xs, ys, zs)
        packed = _sample_nearest(anatomy["packed"], anatomy_grid, px, py, pz)
        organs = packed & ORGAN_MASK
        # air outside the body is constant: interpolate only near the body
        body = packed >= (1 << NEAR_BODY_BIT)
        hu = np.full(grid.array_shape, HU_AIR, dtype=np.float32)
        hu[body] = _sample_linear(anatomy["hu"], anatomy_grid, px[body], py[body], pz[body], HU_AIR)

    lesion_any = np.zeros(grid.array_shape, dtype=bool)
    members: dict[str, tuple[tuple[slice, slice, slice], np.ndarray]] = {}
    vox = min(grid.spacing)
    for les in lesions:
        ext = lesion_extent(les, day)
        if ext <= 0:
            continue
        centre_q = to_scan(motion, np.asarray(centres[les["id"]])[None, :])[0]
        reach = ext * STRETCH_MARGIN + 2 * max(grid.spacing)
        lo = np.floor(grid.physical_to_index(centre_q - reach)).astype(int)
        hi = np.ceil(grid.physical_to_index(centre_q + reach)).astype(int) + 1
        lo = np.clip(lo, 0, grid.shape)
        hi = np.clip(hi, 0, grid.shape)
        if np.any(hi <= lo):
            continue
        sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        sub_p = np.stack([px[sl].ravel(), py[sl].ravel(), pz[sl].ravel()], axis=1).astype(float)
        # cheap pre-selection: only points within the lesion's reach of its centre can be inside
        near = np.flatnonzero(np.sum((sub_p - centres[les["id"]]) ** 2, axis=1) <= ext * ext)
        rho = lesion_rho(les, centres[les["id"]], sub_p[near], day)
        hit = rho < 1.0
        if not hit.any():
            continue
        inside: np.ndarray = np.zeros(sub_p.shape[0], dtype=bool)
        inside[near[hit]] = True
        inside = inside.reshape(hu[sl].shape)
        members[les["id"]] = (sl, inside)
        lesion_any[sl] |= inside
        # intensity: texture + necrotic core, blended at the edge by an approximate partial-volume weight
        band = rho < 1.0 + PARTIAL_VOLUME_BAND
        idx, rho_b = near[band], rho[band]
        r_eff = float(les["d0_mm"]) / 2.0 * size_factor(les, day)
        w = np.clip(0.5 + (1.0 - rho_b) * r_eff / vox, 0.0, 1.0)
        tex = lesion_texture(cast(dict[str, np.ndarray], anatomy["lesion_texture"]), sub_p[idx])
        val = les["base_hu"] + HET_HU * float(heterogeneity(les, day)) * tex
        nec = float(necrosis(les, day))
        if nec > 0:
            core = np.clip((rho_b - nec) / NECROSIS_EDGE + 0.5, 0.0, 1.0)
            val = core * val + (1.0 - core) * (NECROTIC_HU[les["organ"]] + 0.3 * HET_HU * tex)
        block = hu[sl].reshape(-1)  # a copy when the slice is not contiguous: written back below
        block[idx] = (1.0 - w) * block[idx] + w * val
        hu[sl] = block.reshape(hu[sl].shape)
        organs[sl][inside] = ORGAN_CODE[les["organ"]]

    mask = np.zeros(grid.array_shape, dtype=np.uint16)
    if members:
        # connected components inside the bounding box of all lesion voxels (the rest is background)
        box = tuple(
            slice(min(sl[a].start for sl, _ in members.values()), max(sl[a].stop for sl, _ in members.values()))
            for a in range(3)
        )
        comp, n_comp = ndimage.label(lesion_any[box], structure=CONNECTIVITY)
        order = rng.permutation(n_comp) + 1  # component c gets label order[c-1]: the order says nothing of identity
        mask[box] = np.concatenate([[0], order]).astype(np.uint16)[comp]
    labels: dict[int, list[str]] = {}
    n_voxels: dict[str, int] = {}
    for lid, (sl, inside) in members.items():
        n_voxels[lid] = int(inside.sum())
        for lab in np.unique(mask[sl][inside]):
            labels.setdefault(int(lab), []).append(lid)
    labels = {k: sorted(v) for k, v in sorted(labels.items())}

    noisy = hu + scanner.hu_offset + scanner.noise_sd * rng.standard_normal(hu.shape, dtype=np.float32)
    image = np.clip(np.rint(noisy), INT16_MIN, INT16_MAX).astype(np.int16)
    return {"image": image, "clean": hu, "mask": mask, "organs": organs, "labels": labels, "n_voxels": n_voxels}

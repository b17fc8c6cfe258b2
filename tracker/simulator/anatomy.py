"""The patient's static anatomy: a CT-like HU volume and an organ label map in the baseline physical frame.

The layout is relative to the field of view (so small test grids hold a whole, smaller body); textures are
smooth random fields. LPS frame: +x patient left, +y posterior, +z superior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from scipy import ndimage

from tracker.simulator.grid import Grid

HU_AIR = -1000.0
HU_FAT = -100.0
HU_SOFT = 40.0
HU_LIVER = 60.0
HU_LUNG = -850.0
HU_VESSEL = 40.0
HU_BONE_CORTICAL = 900.0
HU_BONE_CANCELLOUS = 420.0

ORGAN_AIR, ORGAN_BODY, ORGAN_LIVER, ORGAN_LUNG, ORGAN_BONE, ORGAN_FAT = 0, 1, 2, 3, 4, 5
ORGAN_MASK = 0b111  # organ codes use the low 3 bits of the packed label volume
NEAR_BODY_BIT = 3
ORGAN_NAMES = {ORGAN_BODY: "body", ORGAN_LIVER: "liver", ORGAN_LUNG: "lung", ORGAN_BONE: "bone", ORGAN_FAT: "fat"}

TEXTURE_HU = {ORGAN_BODY: 8.0, ORGAN_LIVER: 6.0, ORGAN_FAT: 10.0}
VERTEBRA_PERIOD_MM = 27.0
DISC_MM = 5.0
CORTEX_MM = 2.5
LESION_TEXTURE_WAVES = 32
VESSEL_WIDTH = 0.25  # in units of the (unit-sd) vessel fields: sets the vessel volume fraction (~5 %)


@dataclass(frozen=True)
class Ellipsoid:
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]

    def norm2(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Squared normalised radius (broadcast over x, y, z arrays)."""
        return (
            ((x - self.centre[0]) / self.axes[0]) ** 2
            + ((y - self.centre[1]) / self.axes[1]) ** 2
            + ((z - self.centre[2]) / self.axes[2]) ** 2
        )


def sample_anatomy_params(rng: np.random.Generator) -> dict[str, float]:
    """Per-patient anatomical variation, as unitless factors (laid out in mm by ``anatomy_geometry``)."""
    return {
        "body_w": float(rng.uniform(0.36, 0.42)),
        "body_h": float(rng.uniform(0.26, 0.31)),
        "body_wave": float(rng.uniform(0.02, 0.06)),
        "body_phase": float(rng.uniform(0, 2 * np.pi)),
        "fat_mm": float(rng.uniform(8.0, 22.0)),
        "diaphragm": float(rng.uniform(-0.15, 0.05)),
        "lung_w": float(rng.uniform(0.30, 0.36)),
        "liver_w": float(rng.uniform(0.42, 0.5)),
        "texture_seed": int(rng.integers(0, 2**31 - 1)),
    }


def anatomy_geometry(params: dict[str, float], fov: tuple[float, float, float]) -> dict[str, Any]:
    """Organ geometry in mm for a field of view ``fov`` (x, y, z mm) centred on the origin."""
    fx, fy, fz = fov
    ax, ay = params["body_w"] * fx, params["body_h"] * fy
    yc = 0.03 * fy
    z_dia = params["diaphragm"] * fz / 2.0
    lung_ax = params["lung_w"] * ax
    lung_len = 0.75 * fz / 2.0
    lungs = [
        Ellipsoid((side * 0.5 * ax, yc - 0.05 * ay, z_dia + 0.9 * lung_len), (lung_ax, 0.62 * ay, lung_len))
        for side in (-1.0, 1.0)
    ]
    liver_len = 0.55 * fz / 2.0
    liver = Ellipsoid(
        (-0.3 * ax, yc - 0.1 * ay, z_dia - 0.55 * liver_len), (params["liver_w"] * ax, 0.62 * ay, liver_len)
    )
    spine_r = 0.12 * ax
    spine = (0.0, yc + ay - params["fat_mm"] - 2.2 * spine_r)
    return {
        "body_axes": (ax, ay),
        "body_yc": yc,
        "lungs": lungs,
        "liver": liver,
        "spine_centre": spine,
        "spine_r": spine_r,
        "z_diaphragm": z_dia,
        "fov": tuple(fov),
    }


def _smooth_field(rng: np.random.Generator, grid: Grid, sigma_mm: float, where: tuple[np.ndarray, ...]) -> np.ndarray:
    """Unit-sd smooth Gaussian random field at voxels ``where`` (np.nonzero of a (z, y, x) mask) of ``grid``.

    The field is smoothed white noise on a coarse grid (step sigma/2), linearly interpolated at the voxels
    asked for only: textures are needed inside the body or lungs, not in the air.
    """
    fine = np.asarray(grid.array_shape)
    spac = np.asarray(grid.spacing[::-1])
    factor = np.maximum(sigma_mm / 2.0 / spac, 1.0)
    cshape = np.maximum(np.ceil(fine / factor).astype(int) + 1, 4)
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(cshape)).astype(np.float32), 2.0, mode="wrap")
    field = (field - field.mean()) / max(float(field.std()), 1e-6)
    coords = np.stack(
        [
            idx.astype(np.float32) * np.float32((c - 1) / max(n - 1, 1))
            for idx, c, n in zip(where, cshape, fine, strict=True)
        ]
    )
    return ndimage.map_coordinates(field, coords, order=1, mode="nearest", prefilter=False, output=np.float32)


def lesion_texture_params(seed: int) -> dict[str, np.ndarray]:
    """Random plane waves defining the lesions' internal texture field (unit sd, wavelengths 4-10 mm)."""
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(LESION_TEXTURE_WAVES, 3))
    k *= (2 * np.pi / rng.uniform(4.0, 10.0, size=LESION_TEXTURE_WAVES) / np.linalg.norm(k, axis=1))[:, None]
    return {"k": k, "phase": rng.uniform(0, 2 * np.pi, size=LESION_TEXTURE_WAVES)}


def lesion_texture(params: dict[str, np.ndarray], pts: np.ndarray) -> np.ndarray:
    """Unit-sd texture at anatomical points (N, 3): a fixed sum of plane waves, so it moves with the anatomy."""
    return np.sqrt(2.0 / LESION_TEXTURE_WAVES) * np.cos(pts @ params["k"].T + params["phase"]).sum(axis=1)


def render_anatomy(params: dict[str, float], grid: Grid, fov: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Noise-free HU volume and organ labels on ``grid`` (arrays are z, y, x), and the lesion texture."""
    geo = anatomy_geometry(params, fov)
    rng = np.random.default_rng(cast(int, params["texture_seed"]))  # an integer seed stored among the float params
    xs, ys, zs = grid.axes_mm()
    x, y, z = xs[None, None, :], ys[None, :, None], zs[:, None, None]
    ax0, ay0 = geo["body_axes"]
    wave = 1.0 + params["body_wave"] * np.sin(2 * np.pi * z / fov[2] + params["body_phase"])
    ax, ay = ax0 * wave, ay0 * wave
    yrel = y - geo["body_yc"]
    body = (x / ax) ** 2 + (yrel / ay) ** 2 <= 1.0
    fat_mm = params["fat_mm"]
    inner = (x / (ax - fat_mm)) ** 2 + (yrel / (ay - 0.8 * fat_mm)) ** 2 <= 1.0

    organ = np.zeros(grid.array_shape, dtype=np.uint8)
    organ[body] = ORGAN_FAT
    organ[inner & body] = ORGAN_BODY
    liver = (geo["liver"].norm2(x, y, z) <= 1.0) & inner
    lung = np.zeros_like(liver)
    for lung_e in geo["lungs"]:
        lung |= lung_e.norm2(x, y, z) <= 1.0
    lung &= inner & (z > geo["z_diaphragm"])
    organ[liver] = ORGAN_LIVER
    organ[lung] = ORGAN_LUNG

    sx, sy = geo["spine_centre"]
    r = geo["spine_r"]
    rr = np.sqrt((x - sx) ** 2 + (y - sy) ** 2 / 1.1)
    arch = np.sqrt(((x - sx) / (0.8 * r)) ** 2 + ((y - sy - 1.6 * r) / (0.6 * r)) ** 2)
    zmod = np.mod(z - params["body_phase"] * 4.0, VERTEBRA_PERIOD_MM)
    not_disc = zmod > DISC_MM
    vert = ((rr <= r) | ((arch <= 1.0) & (arch >= 0.45))) & not_disc & inner
    cortex = vert & (
        (rr >= r - CORTEX_MM) | (arch <= 1.0) | (zmod < DISC_MM + CORTEX_MM) | (zmod > VERTEBRA_PERIOD_MM - CORTEX_MM)
    )
    organ[vert] = ORGAN_BONE

    hu = np.full(grid.array_shape, HU_AIR, dtype=np.float32)
    inside = organ > 0
    tex = np.zeros(grid.array_shape, dtype=np.float32)
    tex[inside] = _smooth_field(rng, grid, 12.0, np.nonzero(inside))
    for label, base in ((ORGAN_FAT, HU_FAT), (ORGAN_BODY, HU_SOFT), (ORGAN_LIVER, HU_LIVER)):
        sel = organ == label
        hu[sel] = base + TEXTURE_HU[label] * tex[sel]
    sel = organ == ORGAN_LUNG
    where = np.nonzero(sel)
    f1, f2 = _smooth_field(rng, grid, 6.0, where), _smooth_field(rng, grid, 6.0, where)
    vessel = np.exp(-(f1**2 + f2**2) / (2 * VESSEL_WIDTH**2))
    hu[where] = HU_LUNG + (HU_VESSEL - HU_LUNG) * vessel + 15.0 * tex[where]
    hu[vert] = HU_BONE_CANCELLOUS + 40.0 * tex[vert]
    hu[cortex] = HU_BONE_CORTICAL + 60.0 * tex[cortex]
    # bit NEAR_BODY_BIT marks voxels within one voxel of the body: a scan interpolates HU only there
    near_body = ndimage.maximum_filter(organ, size=3) > 0
    packed = organ | (near_body.astype(np.uint8) << NEAR_BODY_BIT)
    return {
        "hu": hu,
        "organ": organ,
        "packed": packed,
        "lesion_texture": lesion_texture_params(int(rng.integers(0, 2**31 - 1))),
    }


def lesion_centre_mm(geo: dict[str, Any], organ: str, side: float, u: np.ndarray) -> np.ndarray:
    """Physical centre of a lesion placed at unit-ball coordinate ``u`` inside its host organ."""
    if organ == "liver":
        e = geo["liver"]
        # keep liver lesions below the diaphragm and inside the organ
        pos = np.asarray(e.centre) + 0.7 * np.asarray(u) * np.asarray(e.axes)
        pos[2] = min(pos[2], geo["z_diaphragm"] - 8.0)
        return pos
    e = geo["lungs"][0 if side < 0 else 1]
    pos = np.asarray(e.centre) + 0.65 * np.asarray(u) * np.asarray(e.axes)
    pos[2] = float(np.clip(pos[2], geo["z_diaphragm"] + 0.35 * e.axes[2], 0.7 * geo["fov"][2] / 2.0))
    return pos

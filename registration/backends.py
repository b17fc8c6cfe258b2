"""Deformable stages of the registration: one table, ``BACKENDS``, from a preset's ``deformable`` name to a backend.

A backend gets the affinely aligned pair (``DeformableInputs``) and returns a displacement field d on the
store grid (float64 vector image, LPS mm) such that p -> p + d(p) maps a baseline (fixed) point to the
matching point of the affine-resampled follow-up; ``registration.engine.register`` composes it before the
affine, inverts it and writes both. ``None`` means affine only.

To add a backend: write a class with ``name``, ``engine`` and ``displacement`` (see ``DeformableBackend``),
add an instance to ``BACKENDS`` below and a preset naming it to ``registration.engine.PRESETS``; the shared
tests in ``tests/registration/test_backends.py`` then run it too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import SimpleITK as sitk

from registration import bspline, intensity
from tracker.errors import MetatrackError

if TYPE_CHECKING:
    from registration.engine import Preset

FOV_ERODE_VOXELS = 3


def shrink_factors(levels_mm: tuple[float, ...], spacing: tuple[float, ...]) -> list[int]:
    """Integer shrink factors that bring the finest axis of ``spacing`` near each target voxel size."""
    finest = min(spacing)
    return [max(1, round(level / finest)) for level in levels_mm]


@dataclass
class DeformableInputs:
    """What the linear stage hands to a deformable backend (all on the fixed grid unless said otherwise)."""

    fixed: sitk.Image  # baseline clipped to the HU window (float32)
    moving: sitk.Image  # follow-up clipped to the HU window, on its own grid
    affine: sitk.AffineTransform  # baseline point -> follow-up point, from the linear stage
    mask: sitk.Image  # baseline body mask (uint8)
    store_grid: sitk.Image  # grid of the stored field (fixed shrunk to about 3 mm)

    @cached_property
    def moved(self) -> sitk.Image:
        """The follow-up resampled onto the fixed grid through the affine and histogram-matched to it."""
        air = intensity.HU_WINDOW_LOW
        moved = sitk.Resample(self.moving, self.fixed, self.affine, sitk.sitkLinear, air, sitk.sitkFloat32)
        return intensity.match_histogram(moved, self.fixed)


class DeformableBackend(Protocol):
    """One deformable stage: ``name`` is the key in ``BACKENDS`` and a preset's ``deformable``; ``engine`` is
    written to the metrics; ``displacement`` returns the field on ``inputs.store_grid`` (or another grid,
    which ``register`` resamples onto the store grid) or ``None`` for affine only. Files a backend writes go
    to a folder under ``workdir`` that it removes again."""

    name: str
    engine: str

    def displacement(
        self, inputs: DeformableInputs, preset: Preset, *, threads: int, seed: int, workdir: Path
    ) -> sitk.Image | None: ...


class AffineOnly:
    name = "none"
    engine = "sitk-mi-affine"

    def displacement(
        self, inputs: DeformableInputs, preset: Preset, *, threads: int, seed: int, workdir: Path
    ) -> sitk.Image | None:
        return None


class BSplineBackend:
    """Coarse-to-fine cubic B-spline FFD in torch (``registration.bspline``), fitted inside the body mask."""

    name = "bspline"
    engine = "sitk-mi-affine+torch-bspline-ffd"

    def displacement(
        self, inputs: DeformableInputs, preset: Preset, *, threads: int, seed: int, workdir: Path
    ) -> sitk.Image | None:
        # Fixed voxels that the follow-up does not cover hold padding, not anatomy: leave them out.
        ones = sitk.Image(inputs.moving.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(inputs.moving)
        covered = sitk.Resample(ones, inputs.fixed, inputs.affine, sitk.sitkNearestNeighbor, 0)
        fit_mask = sitk.And(inputs.mask, sitk.BinaryErode(covered, [FOV_ERODE_VOXELS] * 3))
        return bspline.fit(inputs.fixed, inputs.moved, fit_mask, preset.bspline, inputs.store_grid, seed)


def _level(image: sitk.Image, shrink: int, presmooth: float) -> sitk.Image:
    if presmooth > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [presmooth * shrink * s for s in image.GetSpacing()])
    return sitk.Shrink(image, [shrink] * image.GetDimension()) if shrink > 1 else image


class DemonsBackend:
    """Multi-resolution symmetric-forces (or diffeomorphic) demons; the field comes on the finest level's grid."""

    name = "demons"
    engine = "sitk-mi-affine+symmetric-demons"

    def displacement(
        self, inputs: DeformableInputs, preset: Preset, *, threads: int, seed: int, workdir: Path
    ) -> sitk.Image | None:
        fixed, moving = inputs.fixed, inputs.moved
        disp: sitk.Image | None = None
        shrinks = shrink_factors(preset.demons_levels_mm, fixed.GetSpacing())
        for shrink, iterations in zip(shrinks, preset.demons_iterations, strict=True):
            fixed_l = _level(fixed, shrink, preset.presmooth_voxels)
            moving_l = _level(moving, shrink, preset.presmooth_voxels)
            filt: Any
            if preset.diffeomorphic:
                filt = sitk.DiffeomorphicDemonsRegistrationFilter()
            else:
                filt = sitk.FastSymmetricForcesDemonsRegistrationFilter()
            filt.SetNumberOfIterations(iterations)
            filt.SetStandardDeviations(preset.field_sigma_voxels)
            filt.SetSmoothDisplacementField(True)
            if disp is None:
                disp = filt.Execute(fixed_l, moving_l)
            else:
                start = sitk.Resample(disp, fixed_l, sitk.Transform(), sitk.sitkLinear, 0.0, disp.GetPixelID())
                disp = filt.Execute(fixed_l, moving_l, start)
        if disp is None:
            return None
        return sitk.Cast(disp, sitk.sitkVectorFloat64)


@dataclass(frozen=True)
class SynSettings:
    """ANTs SyN after our affine, on the 3 mm store grid.

    The schedule is the one the benchmark's ANTs SyN peer gets from antspyx's defaults on 1.5 mm CT
    (``reg_iterations=(40, 20, 0)``: 40 iterations at 6 mm, 20 at 3 mm, none at full resolution), but run on
    the store grid (smoothed, about 3 mm whatever the scan's spacing) so that it does the same on 1 mm and
    3 mm scans; the peer's idle full-resolution level is dropped, the field is stored at 3 mm anyway. Step 0.2
    and update/total field sigmas 3/0 voxels are ANTs' defaults (the peer's too), and so is the metric,
    Mattes MI with 32 bins. Neighbourhood CC (radius 2), ANTs' usual SyN metric, took 3-8 times as long in
    antspyx 0.6: no lower TRE on the phantom, lower on a simulator case (1.41 mm against 2.00, 77 s against
    22 s); mean squares did worse on the phantom despite the histogram matching. A third, 12 mm level
    (100/70/40 iterations) helped one simulator case and hurt the other, so the peer's schedule stays.
    """

    iterations: tuple[int, ...] = (40, 20)  # per level, coarse first; antspyx halves the grid per level
    grad_step: float = 0.2
    flow_sigma: float = 3.0
    total_sigma: float = 0.0
    metric: str = "mattes"
    metric_param: int = 32  # MI bins (the CC radius for "CC")
    presmooth_voxels: float = 0.5


# Runs in a fresh interpreter: antspyx's ITK reads ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS once per process, when
# ``ants`` is imported, so a count set later in a long-lived process would be silently ignored.
_ANTS_CHILD = """
import json, sys
import numpy as np
import ants
job = json.load(open(sys.argv[1]))
grid = {"origin": job["origin"], "spacing": job["spacing"], "direction": np.asarray(job["direction"])}
images = [ants.from_numpy(np.load(job[k]), **grid) for k in ("fixed", "moved")]
ants.config._random_seed = job["seed"]
reg = ants.registration(
    *images, type_of_transform="SyNOnly", initial_transform="Identity", outprefix=job["prefix"], **job["options"]
)
print(json.dumps(reg["fwdtransforms"]))
"""
ANTS_ERROR_TAIL_CHARS = 2000


def _ants_syn(fixed: sitk.Image, moved: sitk.Image, cfg: SynSettings, threads: int, seed: int, tmp: Path) -> str:
    """SyNOnly from identity of ``moved`` onto ``fixed`` (one grid) in a child process; the forward warp's path."""
    job = {
        "fixed": str(tmp / "fixed.npy"),
        "moved": str(tmp / "moved.npy"),
        "origin": list(fixed.GetOrigin()),
        "spacing": list(fixed.GetSpacing()),
        "direction": np.asarray(fixed.GetDirection()).reshape(3, 3).tolist(),
        "seed": seed,
        "prefix": str(tmp / "syn_"),
        "options": {
            "syn_metric": cfg.metric,
            "syn_sampling": cfg.metric_param,
            "grad_step": cfg.grad_step,
            "flow_sigma": cfg.flow_sigma,
            "total_sigma": cfg.total_sigma,
            "reg_iterations": list(cfg.iterations),
        },
    }
    for key, image in (("fixed", fixed), ("moved", moved)):
        np.save(str(job[key]), sitk.GetArrayFromImage(image).transpose(2, 1, 0))  # ants wants (x, y, z)
    (tmp / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-c", _ANTS_CHILD, str(tmp / "job.json")], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise MetatrackError(f"ANTs SyN failed (exit {done.returncode}): {done.stderr[-ANTS_ERROR_TAIL_CHARS:]}")
    written = json.loads(done.stdout.strip().splitlines()[-1])
    warps = [p for p in written if p.endswith("Warp.nii.gz")]  # the other file is the identity initial transform
    if len(warps) != 1:
        raise MetatrackError(f"ANTs SyN wrote {written}, expected one forward warp")
    return warps[0]


class SynBackend:
    """ANTs symmetric normalisation (antspyx ``SyNOnly``, identity initial transform) on our affine-aligned,
    histogram-matched pair, at ``preset.syn`` (see ``SynSettings``).

    ANTs' forward warp maps a point of its fixed image to the matching point of its moving image (ITK
    convention, LPS mm), i.e. a baseline point to the affine-resampled follow-up: exactly our field, read as
    is. Its inverse warp is not used: ``register`` inverts every backend's field alike (fixed-point
    iteration to 0.1 mm), so all presets share one inverse and one check of it. ANTs runs in a child
    process started with ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS = ``threads`` (see ``_ANTS_CHILD``; about 2 s
    to start) and ``--random-seed`` from ``seed``; its inputs and warp files go to a temporary folder under
    ``workdir`` that is removed afterwards.
    """

    name = "syn"
    engine = "sitk-mi-affine+ants-syn"

    def displacement(
        self, inputs: DeformableInputs, preset: Preset, *, threads: int, seed: int, workdir: Path
    ) -> sitk.Image | None:
        cfg = preset.syn
        grid = inputs.store_grid
        sigma = [cfg.presmooth_voxels * s for s in grid.GetSpacing()]

        def on_grid(image: sitk.Image) -> sitk.Image:
            smooth = sitk.SmoothingRecursiveGaussian(image, sigma)
            return sitk.Resample(smooth, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)

        tmp = Path(tempfile.mkdtemp(prefix="ants_syn_", dir=workdir))
        try:
            # ANTs wants a nonzero seed (0 means "wall clock"), as the linear stage
            warp = _ants_syn(on_grid(inputs.fixed), on_grid(inputs.moved), cfg, threads, seed + 1, tmp)
            arr = sitk.GetArrayFromImage(sitk.ReadImage(warp)).astype(np.float64)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if arr.shape != (*grid.GetSize()[::-1], 3):
            raise MetatrackError(f"ANTs warp has shape {arr.shape}, expected the store grid's {grid.GetSize()[::-1]}")
        field = sitk.GetImageFromArray(arr, isVector=True)
        field.CopyInformation(grid)  # the NIfTI header holds the grid in float32: take it exact from ours
        return field


BACKENDS: dict[str, DeformableBackend] = {
    backend.name: backend for backend in (BSplineBackend(), DemonsBackend(), AffineOnly(), SynBackend())
}

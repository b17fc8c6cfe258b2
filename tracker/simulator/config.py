"""Configuration of the synthetic cohort simulator: scanners/sites and the cohort-level settings."""

from __future__ import annotations

from dataclasses import dataclass

from tracker.errors import MetatrackError


@dataclass(frozen=True)
class ScannerSpec:
    """One scanner/site: its noise, HU calibration offset and slice spacing.

    Parameters
    ----------
    name
        Identifier written to the manifest (``scanner`` column).
    noise_sd
        Standard deviation of the additive Gaussian noise, HU.
    hu_offset
        Calibration offset added to every voxel, HU.
    slice_factor
        Slice spacing of this scanner relative to ``SimulationConfig.spacing[2]``; the number of slices is
        adapted so that the field of view stays the same (when ``SimulationConfig.vary_grid`` is true).
    """

    name: str
    noise_sd: float
    hu_offset: float
    slice_factor: float = 1.0


DEFAULT_SCANNERS: tuple[ScannerSpec, ...] = (
    ScannerSpec("SITE-A_CT64", noise_sd=12.0, hu_offset=0.0, slice_factor=1.0),
    ScannerSpec("SITE-B_CT16", noise_sd=22.0, hu_offset=12.0, slice_factor=1.25),
    ScannerSpec("SITE-C_CT128", noise_sd=8.0, hu_offset=-8.0, slice_factor=0.75),
)


@dataclass(frozen=True)
class SimulationConfig:
    """Settings of one simulated cohort. ``shape`` and ``spacing`` are (x, y, z), as SimpleITK gives them.

    The same ``seed`` gives the same patients (latent trajectories, outcomes, motion, noise) whatever the
    ``shape``/``spacing``: anatomy is laid out relative to the field of view, lesion sizes are in mm.
    """

    n_patients: int = 20
    seed: int = 0
    shape: tuple[int, int, int] = (160, 160, 112)
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    min_followups: int = 2
    max_followups: int = 6
    interval_days: tuple[float, float] = (42.0, 112.0)
    baseline_date_range: tuple[str, str] = ("2020-01-01", "2023-12-31")
    study_end_date: str = "2026-06-30"
    dropout_rate_per_year: float = 0.25
    #: baseline hazard of metastatic progression (per day) when all dynamic covariates are zero
    base_hazard_per_day: float = 5e-5
    lesions_per_patient: tuple[int, int] = (1, 5)
    new_lesion_rate_per_year: float = 1.2
    scanners: tuple[ScannerSpec, ...] = DEFAULT_SCANNERS
    max_scanners_per_patient: int = 3
    vary_grid: bool = True
    rigid_translation_mm: float = 8.0
    rigid_rotation_deg: float = 4.0
    nonrigid_max_mm: float = 10.0
    large_motion_prob: float = 0.15
    hard_case_prob: float = 0.5
    n_landmarks: int = 240
    workers: int = 2
    modality: str = "CT"

    def __post_init__(self) -> None:
        if self.n_patients < 1:
            raise MetatrackError(f"SimulationConfig.n_patients: {self.n_patients} (expected >= 1)")
        if len(self.shape) != 3 or min(self.shape) < 16:
            raise MetatrackError(f"SimulationConfig.shape: {self.shape} (expected 3 sizes >= 16, x,y,z)")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise MetatrackError(f"SimulationConfig.spacing: {self.spacing} (expected 3 positive mm, x,y,z)")
        if not 1 <= self.min_followups <= self.max_followups:
            raise MetatrackError(
                f"SimulationConfig.min_followups/max_followups: {self.min_followups}/{self.max_followups} "
                "(expected 1 <= min <= max)"
            )
        if not self.scanners:
            raise MetatrackError("SimulationConfig.scanners: empty (expected at least one ScannerSpec)")
        if self.interval_days[0] <= 0 or self.interval_days[1] < self.interval_days[0]:
            raise MetatrackError(f"SimulationConfig.interval_days: {self.interval_days} (expected 0 < lo <= hi)")

    @property
    def fov_mm(self) -> tuple[float, float, float]:
        """Field of view (x, y, z) in mm."""
        return tuple(float(n * s) for n, s in zip(self.shape, self.spacing, strict=True))  # type: ignore[return-value]

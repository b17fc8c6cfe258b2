"""RECIST 1.1 target selection and response assessment (Eisenhauer et al., Eur J Cancer 2009).

Pure computation on per-track diameters. Rules implemented:

- Measurable at baseline: non-nodal lesions with longest diameter >= 10 mm; lymph nodes (organ
  ``"lymph_node"``) with short axis >= 15 mm. Targets: at most 5 in total and 2 per organ, largest first
  (by the diameter that enters the sum); all other lesions are non-targets.
- Sum of diameters: longest diameter for non-nodal targets, short axis for nodal targets. A target whose track
  vanished counts 0 mm; a target still present but measured below 5 mm counts 5 mm ("too small to measure").
- CR: every non-nodal target gone and every nodal target < 10 mm short axis (the sum need not be 0).
- PD: sum >= 20 % above the nadir (smallest sum on study, baseline included) and >= 5 mm above it in absolute
  terms; or an unequivocal new lesion; or unequivocal non-target progression (optional input).
- PR: sum >= 30 % below the baseline sum. SD: otherwise.
- Without any target lesion the response is PD (new lesion / non-target progression) or NE (not evaluable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tracker.errors import MetatrackError

if TYPE_CHECKING:
    from tracker.lesions import MeasuredLesion

Response = Literal["CR", "PR", "SD", "PD", "NE"]
NODAL_ORGAN = "lymph_node"
MAX_TARGETS = 5
MAX_TARGETS_PER_ORGAN = 2
MEASURABLE_LONG_AXIS_MM = 10.0
MEASURABLE_NODE_SHORT_AXIS_MM = 15.0
NORMAL_NODE_SHORT_AXIS_MM = 10.0
TOO_SMALL_TO_MEASURE_MM = 5.0
PR_DECREASE_FRACTION = 0.30
PD_INCREASE_FRACTION = 0.20
PD_MIN_INCREASE_MM = 5.0
# Tolerance for the "at least" thresholds, so that exactly 20 % / 30 % / 5 mm are not lost to rounding.
_TOL_MM = 1e-6


@dataclass(frozen=True)
class RecistLesion:
    """A lesion as RECIST sees it: its track, organ and two diameters (mm)."""

    track_id: int
    organ: str | None
    long_axis_mm: float
    short_axis_mm: float

    @classmethod
    def from_lesion(cls, track_id: int, lesion: MeasuredLesion) -> RecistLesion:
        """The RECIST view of a measured lesion (``tracker.lesions.MeasuredLesion``) on a track."""
        return cls(track_id, lesion.organ, lesion.long_axis_mm, lesion.short_axis_mm)

    @property
    def is_nodal(self) -> bool:
        return self.organ == NODAL_ORGAN

    @property
    def sum_diameter_mm(self) -> float:
        """The diameter that enters the sum: short axis for nodes, longest diameter otherwise."""
        return self.short_axis_mm if self.is_nodal else self.long_axis_mm

    @property
    def is_measurable(self) -> bool:
        if self.is_nodal:
            return self.short_axis_mm >= MEASURABLE_NODE_SHORT_AXIS_MM
        return self.long_axis_mm >= MEASURABLE_LONG_AXIS_MM


@dataclass(frozen=True)
class TargetSelection:
    """Baseline targets and non-targets, and the baseline sum of target diameters (mm)."""

    targets: tuple[RecistLesion, ...]
    non_targets: tuple[RecistLesion, ...]
    baseline_sum_mm: float

    @property
    def target_ids(self) -> tuple[int, ...]:
        return tuple(t.track_id for t in self.targets)


@dataclass(frozen=True)
class Measurement:
    """Diameters (mm) of a target lesion at one follow-up."""

    long_axis_mm: float
    short_axis_mm: float

    @classmethod
    def from_lesion(cls, lesion: MeasuredLesion) -> Measurement:
        return cls(lesion.long_axis_mm, lesion.short_axis_mm)


@dataclass(frozen=True)
class VisitMeasurements:
    """One follow-up: target diameters by track id (None or absent: the track vanished), new-lesion flags."""

    diameters: Mapping[int, Measurement | None] = field(default_factory=dict)
    new_lesion: bool = False
    non_target_progression: bool = False


@dataclass(frozen=True)
class VisitAssessment:
    """RECIST result of one follow-up (the outcome of its ``VisitMeasurements``; stored as the row
    ``db.models.RecistAssessment``). Percent changes are None when their reference sum is 0."""

    sum_mm: float
    change_from_baseline_pct: float | None
    change_from_nadir_pct: float | None
    nadir_mm: float
    response: Response


def _check_lesion(lesion: RecistLesion) -> None:
    for name in ("long_axis_mm", "short_axis_mm"):
        value = getattr(lesion, name)
        if not value >= 0:
            raise MetatrackError(f"track {lesion.track_id}: {name} must be >= 0 mm, got {value}")


def select_targets(baseline: Sequence[RecistLesion], override: Sequence[int] | None = None) -> TargetSelection:
    """Choose baseline target lesions (or take the user's choice) and the baseline sum.

    Parameters
    ----------
    baseline
        Every lesion at baseline.
    override
        Track ids the user chose as targets. They must exist, be measurable and respect the RECIST limits
        (5 in total, 2 per organ).
    """
    lesions = list(baseline)
    for lesion in lesions:
        _check_lesion(lesion)
    by_id = {lesion.track_id: lesion for lesion in lesions}
    if len(by_id) != len(lesions):
        raise MetatrackError("baseline: duplicate track ids among baseline lesions")
    if override is None:
        ranked = sorted(
            (les for les in lesions if les.is_measurable),
            key=lambda les: (-les.sum_diameter_mm, les.track_id),
        )
        chosen: list[RecistLesion] = []
        per_organ: dict[str | None, int] = {}
        for lesion in ranked:
            if len(chosen) == MAX_TARGETS:
                break
            if per_organ.get(lesion.organ, 0) < MAX_TARGETS_PER_ORGAN:
                chosen.append(lesion)
                per_organ[lesion.organ] = per_organ.get(lesion.organ, 0) + 1
    else:
        chosen = _validated_override(override, by_id)
    ids = {t.track_id for t in chosen}
    non_targets = tuple(les for les in sorted(lesions, key=lambda les: les.track_id) if les.track_id not in ids)
    return TargetSelection(tuple(chosen), non_targets, float(sum(t.sum_diameter_mm for t in chosen)))


def _validated_override(override: Sequence[int], by_id: Mapping[int, RecistLesion]) -> list[RecistLesion]:
    ids = list(override)
    if len(set(ids)) != len(ids):
        raise MetatrackError(f"target override: duplicate track ids in {ids}")
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise MetatrackError(f"target override: track ids {unknown} are not baseline lesions {sorted(by_id)}")
    if len(ids) > MAX_TARGETS:
        raise MetatrackError(f"target override: {len(ids)} targets given, RECIST 1.1 allows at most {MAX_TARGETS}")
    chosen = [by_id[i] for i in ids]
    per_organ: dict[str | None, int] = {}
    for lesion in chosen:
        if not lesion.is_measurable:
            raise MetatrackError(
                f"target override: track {lesion.track_id} is not measurable "
                f"(long {lesion.long_axis_mm:.1f} mm, short {lesion.short_axis_mm:.1f} mm, "
                f"organ {lesion.organ})"
            )
        per_organ[lesion.organ] = per_organ.get(lesion.organ, 0) + 1
        if per_organ[lesion.organ] > MAX_TARGETS_PER_ORGAN:
            raise MetatrackError(
                f"target override: more than {MAX_TARGETS_PER_ORGAN} targets in organ {lesion.organ!r}"
            )
    return chosen


def _target_diameter(target: RecistLesion, measurement: Measurement | None) -> float:
    if measurement is None:
        return 0.0
    value = measurement.short_axis_mm if target.is_nodal else measurement.long_axis_mm
    if not value >= 0:
        raise MetatrackError(f"track {target.track_id}: diameter must be >= 0 mm, got {value}")
    return max(value, TOO_SMALL_TO_MEASURE_MM)


def _is_complete_response(selection: TargetSelection, visit: VisitMeasurements) -> bool:
    for target in selection.targets:
        m = visit.diameters.get(target.track_id)
        if m is None:
            continue
        if not target.is_nodal or m.short_axis_mm >= NORMAL_NODE_SHORT_AXIS_MM:
            return False
    return True


def _pct(value: float, reference: float) -> float | None:
    return None if reference <= 0 else 100.0 * (value - reference) / reference


def assess(selection: TargetSelection, visit: VisitMeasurements, nadir_mm: float) -> VisitAssessment:
    """RECIST 1.1 response at one follow-up, given the nadir (smallest sum so far, baseline included)."""
    sum_mm = float(sum(_target_diameter(t, visit.diameters.get(t.track_id)) for t in selection.targets))
    increase = sum_mm - nadir_mm
    progression = visit.new_lesion or visit.non_target_progression
    if not selection.targets:
        response: Response = "PD" if progression else "NE"
    elif progression or (
        increase >= PD_INCREASE_FRACTION * nadir_mm - _TOL_MM and increase >= PD_MIN_INCREASE_MM - _TOL_MM
    ):
        response = "PD"
    elif _is_complete_response(selection, visit):
        response = "CR"
    elif selection.baseline_sum_mm - sum_mm >= PR_DECREASE_FRACTION * selection.baseline_sum_mm - _TOL_MM:
        response = "PR"
    else:
        response = "SD"
    return VisitAssessment(
        sum_mm=sum_mm,
        change_from_baseline_pct=_pct(sum_mm, selection.baseline_sum_mm),
        change_from_nadir_pct=_pct(sum_mm, nadir_mm),
        nadir_mm=float(nadir_mm),
        response=response,
    )


def recist_timeline(selection: TargetSelection, visits: Sequence[VisitMeasurements]) -> list[VisitAssessment]:
    """Assess follow-ups in date order, tracking the nadir (which starts at the baseline sum)."""
    nadir = selection.baseline_sum_mm
    out: list[VisitAssessment] = []
    for visit in visits:
        assessment = assess(selection, visit, nadir)
        out.append(assessment)
        nadir = min(nadir, assessment.sum_mm)
    return out

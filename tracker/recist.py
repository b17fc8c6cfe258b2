"""RECIST 1.1 target selection and response assessment (Eisenhauer et al., Eur J Cancer 2009;45:228-47, with the
update and clarifications of Schwartz et al., Eur J Cancer 2016;62:132-7).

Pure computation on per-track measurements. Rules implemented:

- Baseline: non-nodal lesions with longest diameter >= 10 mm and lymph nodes (organ ``"lymph_node"``) with short
  axis >= 15 mm are measurable. Targets: at most 5 in total and 2 per organ, largest first (by the diameter that
  enters the sum). Nodes with short axis < 10 mm are normal and not followed; every other lesion is a non-target.
- Sum of diameters: longest diameter for non-nodal targets, short axis for nodal targets. A target gone counts 0 mm;
  one present but measured below 5 mm counts 5 mm ("too small to measure"). A target that split: its fragments'
  diameters are summed. Targets that coalesced: the merged lesion counts once (on the first of them in selection
  order), the others 0 mm; a non-target that coalesced with a target is measured with the target.
- Target response: PD when the sum is >= 20 % and >= 5 mm above the nadir (smallest sum on study, baseline
  included); CR when every non-nodal target is gone and every nodal target (each fragment) is < 10 mm short axis
  (the sum need not be 0); PR when the sum is >= 30 % below the baseline sum; SD otherwise. A target that could not
  be measured makes it NE, unless the targets measured already make PD (the missing ones could only add); a partial
  sum never becomes the nadir.
- Non-target response: NE when one could not be assessed; PD on unequivocal progression, by the stated
  ``NonTargetRule`` (their total volume >= ``volume_ratio`` x its nadir and >= ``min_increase_mm3`` above it) or by
  a reader's call; CR when every non-target is gone and every nodal one is < 10 mm short axis; else Non-CR/Non-PD.
- Overall response (RECIST 1.1 Tables 4 and 5, :func:`overall_response`): a new lesion, target PD or non-target PD
  is PD. With targets: target CR is CR only with non-targets CR (or none), else PR; PR, SD and NE stay as they are.
  Without targets the non-target response is the overall one; with no lesion at all a follow-up is NE.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tracker.errors import MetatrackError

if TYPE_CHECKING:
    from tracker.lesions import MeasuredLesion

Response = Literal["CR", "PR", "SD", "PD", "NE", "Non-CR/Non-PD"]
NON_CR_NON_PD: Response = "Non-CR/Non-PD"
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
# Defaults of the non-target progression rule: the volume doubled (a sphere's diameter +26 %, beyond the targets'
# +20 %) and grown by at least a 10 mm sphere's volume (524 mm3), so that small lesions' noise is not "unequivocal".
NON_TARGET_PD_VOLUME_RATIO = 2.0
NON_TARGET_PD_MIN_INCREASE_MM3 = 500.0
# Tolerance for the "at least" thresholds, so that exactly 20 % / 30 % / 5 mm are not lost to rounding.
_TOL_MM = 1e-6


class RecistRole(enum.StrEnum):
    """What a track is to RECIST (stored as ``LesionTrack.recist_role``)."""

    TARGET = "target"
    NON_TARGET = "non-target"
    NORMAL_NODE = "normal-node"  # a node < 10 mm short axis at baseline: not pathological, not followed
    NEW = "new"  # first seen at a follow-up


def inherited_role(roles: Mapping[int, str], parent: int | None) -> str:
    """The role of a track first seen at a follow-up: a fragment split from a track takes that track's role (its
    diameter joins the sum), any other is new."""
    return roles.get(parent, str(RecistRole.NEW)) if parent is not None else str(RecistRole.NEW)


@dataclass(frozen=True)
class RecistLesion:
    """A lesion as RECIST sees it: its track, organ, two diameters (mm) and volume (mm3)."""

    track_id: int
    organ: str | None
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float = 0.0

    @classmethod
    def from_lesion(cls, track_id: int, lesion: MeasuredLesion) -> RecistLesion:
        """The RECIST view of a measured lesion (``tracker.lesions.MeasuredLesion``) on a track."""
        return cls(track_id, lesion.organ, lesion.long_axis_mm, lesion.short_axis_mm, lesion.volume_mm3)

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

    @property
    def is_normal_node(self) -> bool:
        return self.is_nodal and self.short_axis_mm < NORMAL_NODE_SHORT_AXIS_MM


@dataclass(frozen=True)
class NonTargetRule:
    """Unequivocal progression of the non-target lesions: their total volume at least ``volume_ratio`` times its
    nadir (smallest total on study, baseline included) and at least ``min_increase_mm3`` above it."""

    volume_ratio: float = NON_TARGET_PD_VOLUME_RATIO
    min_increase_mm3: float = NON_TARGET_PD_MIN_INCREASE_MM3

    def __post_init__(self) -> None:
        if not self.volume_ratio > 1.0:
            raise MetatrackError(f"non-target progression volume ratio must be > 1, got {self.volume_ratio}")
        if not self.min_increase_mm3 >= 0.0:
            raise MetatrackError(
                f"non-target progression minimum increase must be >= 0 mm3, got {self.min_increase_mm3}"
            )

    def progressed(self, volume_mm3: float, nadir_mm3: float) -> bool:
        increase = volume_mm3 - nadir_mm3
        return increase >= self.min_increase_mm3 - _TOL_MM and volume_mm3 >= self.volume_ratio * nadir_mm3 - _TOL_MM


@dataclass(frozen=True)
class TargetSelection:
    """Baseline targets, non-targets and normal nodes, and the baseline sum of target diameters (mm)."""

    targets: tuple[RecistLesion, ...]
    non_targets: tuple[RecistLesion, ...]
    baseline_sum_mm: float
    normal_nodes: tuple[RecistLesion, ...] = ()

    @property
    def target_ids(self) -> tuple[int, ...]:
        return tuple(t.track_id for t in self.targets)

    @property
    def non_target_volume_mm3(self) -> float:
        """The non-targets' total volume at baseline: the first nadir of the non-target progression rule."""
        return float(sum(les.volume_mm3 for les in self.non_targets))

    def roles(self) -> dict[int, RecistRole]:
        """Track id -> role of every baseline lesion."""
        out = {les.track_id: RecistRole.NORMAL_NODE for les in self.normal_nodes}
        out.update({les.track_id: RecistRole.NON_TARGET for les in self.non_targets})
        out.update({les.track_id: RecistRole.TARGET for les in self.targets})
        return out


@dataclass(frozen=True)
class Measurement:
    """One lesion at a follow-up: diameters (mm) and volume (mm3)."""

    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float = 0.0

    @classmethod
    def from_lesion(cls, lesion: MeasuredLesion) -> Measurement:
        return cls(lesion.long_axis_mm, lesion.short_axis_mm, lesion.volume_mm3)


@dataclass(frozen=True)
class VisitMeasurements:
    """One follow-up: the lesions measured (by label) and which of them each baseline track is.

    ``tracks`` maps a target or non-target track id to the labels of its lesion at this visit: () when it is gone,
    one label, or several for the fragments of a split lesion; a label under several tracks is the lesion they
    coalesced into. A target or non-target missing from ``tracks`` could not be measured (not evaluable).
    ``non_target_progression`` is a reader's call on the non-targets; None leaves it to the ``NonTargetRule``.
    """

    lesions: Mapping[int, Measurement] = field(default_factory=dict)
    tracks: Mapping[int, Sequence[int]] = field(default_factory=dict)
    new_lesion: bool = False
    non_target_progression: bool | None = None

    @classmethod
    def by_track(
        cls,
        measured: Mapping[int, Measurement | Sequence[Measurement] | None],
        new_lesion: bool = False,
        non_target_progression: bool | None = None,
    ) -> VisitMeasurements:
        """A visit from each track's lesion (a measurement, its fragments, or None when gone); no coalescence."""
        lesions: dict[int, Measurement] = {}
        tracks: dict[int, tuple[int, ...]] = {}
        for track_id, m in measured.items():
            pieces = () if m is None else (m,) if isinstance(m, Measurement) else tuple(m)
            labels = tuple(range(len(lesions) + 1, len(lesions) + 1 + len(pieces)))
            lesions.update(zip(labels, pieces, strict=True))
            tracks[track_id] = labels
        return cls(lesions, tracks, new_lesion, non_target_progression)


@dataclass(frozen=True)
class VisitAssessment:
    """RECIST result of one follow-up (the outcome of its ``VisitMeasurements``; stored as the row
    ``db.models.RecistAssessment``). Percent changes are None when their reference sum is 0; the non-target volume
    is None when a non-target could not be assessed (or there is none)."""

    sum_mm: float
    change_from_baseline_pct: float | None
    change_from_nadir_pct: float | None
    nadir_mm: float
    response: Response
    target_response: Response | None = None  # None: no target lesions
    non_target_response: Response | None = None  # None: no non-target lesions
    non_target_volume_mm3: float | None = None
    non_target_nadir_mm3: float | None = None
    target_diameters_mm: Mapping[int, float] = field(default_factory=dict)  # what each measured target adds
    new_lesion: bool = False
    reasons: tuple[str, ...] = ()


def lineage_labels(
    followed: Iterable[int], labels: Mapping[int, Sequence[int]], successors: Mapping[int, Sequence[int]]
) -> dict[int, tuple[int, ...]]:
    """Each followed track's lesion labels at a visit, through what the track became: its own lesion, the fragments
    it split into and the lesion it merged into (``VisitMeasurements.tracks``).

    Parameters
    ----------
    followed
        The baseline target and non-target tracks.
    labels
        Track -> the labels of its lesion at this visit (no entry or () when it is gone).
    successors
        Track -> the tracks split from it and the track it merged into, up to this visit.
    """
    out: dict[int, tuple[int, ...]] = {}
    for track in followed:
        seen, todo, found = {track}, [track], set[int]()
        while todo:
            current = todo.pop()
            found.update(labels.get(current, ()))
            for nxt in successors.get(current, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        out[track] = tuple(sorted(found))
    return out


def _check_lesion(lesion: RecistLesion) -> None:
    for name in ("long_axis_mm", "short_axis_mm", "volume_mm3"):
        value = getattr(lesion, name)
        if not value >= 0:
            raise MetatrackError(f"track {lesion.track_id}: {name} must be >= 0, got {value}")


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
    rest = [les for les in sorted(lesions, key=lambda les: les.track_id) if les.track_id not in ids]
    return TargetSelection(
        targets=tuple(chosen),
        non_targets=tuple(les for les in rest if not les.is_normal_node),
        baseline_sum_mm=float(sum(t.sum_diameter_mm for t in chosen)),
        normal_nodes=tuple(les for les in rest if les.is_normal_node),
    )


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


def _measurement(visit: VisitMeasurements, track_id: int, label: int) -> Measurement:
    m = visit.lesions.get(label)
    if m is None:
        raise MetatrackError(f"track {track_id}: lesion label {label} has no measurement")
    for name in ("long_axis_mm", "short_axis_mm", "volume_mm3"):
        value = getattr(m, name)
        if not value >= 0:
            raise MetatrackError(f"track {track_id}: {name} must be >= 0, got {value}")
    return m


def _is_gone(lesion: RecistLesion, pieces: Sequence[Measurement]) -> bool:
    """Gone as RECIST counts it: no piece left, or for a node every piece < 10 mm short axis."""
    if lesion.is_nodal:
        return all(m.short_axis_mm < NORMAL_NODE_SHORT_AXIS_MM for m in pieces)
    return not pieces


def _pct(value: float, reference: float) -> float | None:
    return None if reference <= 0 else 100.0 * (value - reference) / reference


def _is_sum_pd(sum_mm: float, nadir_mm: float) -> bool:
    increase = sum_mm - nadir_mm
    return increase >= PD_INCREASE_FRACTION * nadir_mm - _TOL_MM and increase >= PD_MIN_INCREASE_MM - _TOL_MM


def _assess_targets(
    selection: TargetSelection, visit: VisitMeasurements, nadir_mm: float, counted: set[int], reasons: list[str]
) -> tuple[Response | None, float, dict[int, float]]:
    """(target response, sum, what each measured target adds); `counted` collects the labels the targets hold."""
    diameters: dict[int, float] = {}
    missing: list[int] = []
    gone = True
    for target in selection.targets:
        if target.track_id not in visit.tracks:
            missing.append(target.track_id)
            continue
        labels = list(visit.tracks[target.track_id])
        pieces = [_measurement(visit, target.track_id, label) for label in labels]
        gone = gone and _is_gone(target, pieces)
        added = 0.0
        for label, m in zip(labels, pieces, strict=True):
            if label not in counted:  # a coalesced lesion counts once, on the first target holding it
                counted.add(label)
                added += max(m.short_axis_mm if target.is_nodal else m.long_axis_mm, TOO_SMALL_TO_MEASURE_MM)
        diameters[target.track_id] = added
    sum_mm = float(sum(diameters.values()))
    if not selection.targets:
        return None, sum_mm, diameters
    change = f"target sum {sum_mm:.1f} mm (baseline {selection.baseline_sum_mm:.1f}, nadir {nadir_mm:.1f})"
    response: Response
    if _is_sum_pd(sum_mm, nadir_mm):
        response = "PD"
        reasons.append(f"{change}: >= {PD_INCREASE_FRACTION:.0%} and >= {PD_MIN_INCREASE_MM:g} mm above the nadir")
        if missing:
            reasons.append(f"targets {missing} not measured: PD already without them")
    elif missing:
        response = "NE"
        reasons.append(f"targets {missing} could not be measured")
    elif gone:
        response = "CR"
        reasons.append("every target gone (nodes < 10 mm short axis)")
    elif selection.baseline_sum_mm - sum_mm >= PR_DECREASE_FRACTION * selection.baseline_sum_mm - _TOL_MM:
        response = "PR"
        reasons.append(f"{change}: >= {PR_DECREASE_FRACTION:.0%} below the baseline sum")
    else:
        response = "SD"
        reasons.append(f"{change}: neither PR nor PD")
    return response, sum_mm, diameters


def _assess_non_targets(
    selection: TargetSelection,
    visit: VisitMeasurements,
    nadir_mm3: float | None,
    counted: set[int],
    rule: NonTargetRule,
    reasons: list[str],
) -> tuple[Response | None, float | None]:
    """(non-target response, their total volume when every one was assessed)."""
    if not selection.non_targets:
        return None, None
    missing = [les.track_id for les in selection.non_targets if les.track_id not in visit.tracks]
    volume, gone = None, True
    if not missing:
        own: set[int] = set()  # labels not measured with a target
        for les in selection.non_targets:
            labels = [label for label in visit.tracks[les.track_id] if label not in counted]
            gone = gone and _is_gone(les, [_measurement(visit, les.track_id, label) for label in labels])
            own.update(labels)
        volume = float(sum(visit.lesions[label].volume_mm3 for label in own))
    if visit.non_target_progression:
        reasons.append("non-targets: unequivocal progression (reader's call)")
        return "PD", volume
    if volume is None:
        reasons.append(f"non-targets {missing} could not be assessed")
        return "NE", None
    reference = selection.non_target_volume_mm3 if nadir_mm3 is None else nadir_mm3
    if visit.non_target_progression is None and rule.progressed(volume, reference):
        reasons.append(
            f"non-target volume {volume:.0f} mm3 >= {rule.volume_ratio:g} x its nadir {reference:.0f} mm3 and "
            f">= {rule.min_increase_mm3:g} mm3 above it: unequivocal progression"
        )
        return "PD", volume
    if gone:
        reasons.append("every non-target gone (nodes < 10 mm short axis)")
        return "CR", volume
    return NON_CR_NON_PD, volume


def uncounted_new_lesions(candidates: Mapping[int, float | None], min_confidence: float) -> dict[int, float]:
    """The new tracks that do not count as RECIST new lesions: found by the segmentation model (not drawn) with a
    confidence below `min_confidence`. RECIST 1.1 asks a new lesion to be unequivocal; a drawn lesion (confidence
    None) always counts.

    Parameters
    ----------
    candidates
        New track number -> its lesion's confidence (None: drawn by a reader).
    min_confidence
        The stated confidence from which a found lesion counts (``Settings.new_lesion_min_confidence``).
    """
    return {n: float(c) for n, c in candidates.items() if c is not None and c < min_confidence}


def uncounted_reason(uncounted: Mapping[int, float], min_confidence: float) -> str:
    """What the assessment says of the candidates `uncounted_new_lesions` left out."""
    shown = ", ".join(f"T{n} ({c:.2f})" for n, c in sorted(uncounted.items()))
    return f"new lesion candidate(s) {shown} below confidence {min_confidence:.2f}: not counted as new lesions"


def overall_response(target: Response | None, non_target: Response | None, new_lesion: bool) -> Response:
    """RECIST 1.1 overall response from the target and non-target responses (None: there are none) and new lesions
    (Eisenhauer 2009, Table 4 with targets, Table 5 without)."""
    if new_lesion or target == "PD" or non_target == "PD":
        return "PD"
    if target is None:
        return non_target or "NE"
    if target == "CR":
        return "CR" if non_target in (None, "CR") else "PR"
    return target


def assess(
    selection: TargetSelection,
    visit: VisitMeasurements,
    nadir_mm: float,
    non_target_nadir_mm3: float | None = None,
    rule: NonTargetRule | None = None,
) -> VisitAssessment:
    """RECIST 1.1 response at one follow-up, given the nadirs so far (baseline included).

    Parameters
    ----------
    selection
        The baseline targets and non-targets.
    visit
        This follow-up's lesions.
    nadir_mm
        Smallest target sum so far.
    non_target_nadir_mm3
        Smallest total non-target volume so far (None: the baseline's).
    rule
        Unequivocal non-target progression (default ``NonTargetRule()``).
    """
    reasons: list[str] = []
    counted: set[int] = set()
    target, sum_mm, diameters = _assess_targets(selection, visit, nadir_mm, counted, reasons)
    non_target, volume = _assess_non_targets(
        selection, visit, non_target_nadir_mm3, counted, rule or NonTargetRule(), reasons
    )
    if visit.new_lesion:
        reasons.append("new lesion")
    response = overall_response(target, non_target, visit.new_lesion)
    if target == "CR" and response == "PR":
        reasons.append(f"targets CR but non-targets {non_target}: PR")
    if target is None and non_target is None and not visit.new_lesion:
        reasons.append("no target or non-target lesion at baseline")
    nt_nadir = selection.non_target_volume_mm3 if non_target_nadir_mm3 is None else non_target_nadir_mm3
    return VisitAssessment(
        sum_mm=sum_mm,
        change_from_baseline_pct=_pct(sum_mm, selection.baseline_sum_mm),
        change_from_nadir_pct=_pct(sum_mm, nadir_mm),
        nadir_mm=float(nadir_mm),
        response=response,
        target_response=target,
        non_target_response=non_target,
        non_target_volume_mm3=volume,
        non_target_nadir_mm3=nt_nadir if selection.non_targets else None,
        target_diameters_mm=diameters,
        new_lesion=visit.new_lesion,
        reasons=tuple(reasons),
    )


def next_nadirs(
    assessment: VisitAssessment, nadir_mm: float, non_target_nadir_mm3: float | None
) -> tuple[float, float | None]:
    """The nadirs after a follow-up: a partial target sum (NE) or an unassessed non-target volume leaves them."""
    if assessment.target_response not in (None, "NE"):
        nadir_mm = min(nadir_mm, assessment.sum_mm)
    if assessment.non_target_volume_mm3 is not None and assessment.non_target_nadir_mm3 is not None:
        non_target_nadir_mm3 = min(assessment.non_target_nadir_mm3, assessment.non_target_volume_mm3)
    return nadir_mm, non_target_nadir_mm3


def recist_timeline(
    selection: TargetSelection, visits: Sequence[VisitMeasurements], rule: NonTargetRule | None = None
) -> list[VisitAssessment]:
    """Assess follow-ups in date order, tracking the nadirs (which start at the baseline's)."""
    nadir, nt_nadir = selection.baseline_sum_mm, None
    out: list[VisitAssessment] = []
    for visit in visits:
        assessment = assess(selection, visit, nadir, nt_nadir, rule)
        out.append(assessment)
        nadir, nt_nadir = next_nadirs(assessment, nadir, nt_nadir)
    return out

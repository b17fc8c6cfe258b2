"""Plain records shared by the pipeline, the workflows and `db/`: what a scan's processing reads and produces.

No behaviour and no heavy imports: `db/` imports these, never the pipeline. The enums are the domain's words
(the ORM stores their values).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracker.recist import NON_TARGET_PD_MIN_INCREASE_MM3, NON_TARGET_PD_VOLUME_RATIO

if TYPE_CHECKING:
    from registration import RegistrationResult
    from tracker.deltas import FeatureChange
    from tracker.lesions import MeasuredLesion
    from tracker.recist import TargetSelection, VisitAssessment


class ScanRole(enum.StrEnum):
    BASELINE = "baseline"
    FOLLOW_UP = "follow-up"


class ScanState(enum.StrEnum):
    """Processing state of a scan: processing (registration, lesions, tracks, RECIST, features) is one unit."""

    INGESTED = "ingested"
    PROCESSED = "processed"
    FAILED = "failed"


class LesionSource(enum.StrEnum):
    """Where a lesion came from: drawn by a reader, carried from an earlier scan, or found by the segmentation model."""

    GIVEN = "given"
    PROPAGATED = "propagated"
    DETECTED = "detected"


class ChangeClass(enum.StrEnum):
    PERSISTENT = "persistent"
    NEW = "new"
    VANISHED = "vanished"
    MERGED = "merged"
    SPLIT = "split"


@dataclass(frozen=True)
class Settings:
    """How scans are processed; stored with every processed scan."""

    preset: str = "accurate"
    threads: int = 2
    seed: int = 0
    min_lesion_mm3: float = 10.0
    feature_config: str = "ct_default"
    shell_mm: float = 5.0  # peritumoral shell width; 0 disables shell features
    features: bool = True
    # RECIST 1.1 unequivocal non-target progression (`tracker.recist.NonTargetRule`): the non-targets' total volume
    # at least this many times its nadir and at least this many mm3 above it
    recist_non_target_volume_ratio: float = NON_TARGET_PD_VOLUME_RATIO
    recist_non_target_min_increase_mm3: float = NON_TARGET_PD_MIN_INCREASE_MM3
    # a scan without a given mask: carry open tracks' lesions into it (propagation) and/or run the promoted
    # segmentation model; a new lesion the model found counts for RECIST only from `new_lesion_min_confidence` on
    propagation: bool = True
    segmentation_model: bool = True
    new_lesion_min_confidence: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ScanFiles:
    """One scan of the patient as the pipeline sees it (files in the store)."""

    scan_id: int
    index: int  # position in the patient's date order, baseline = 0
    scan_date: date
    modality: str
    image: Path
    mask: Path | None  # the lesion mask its lesions are measured on (the scan to process: a given mask only)
    organs: Path | None = None
    organ_names: dict[int, str] | None = None
    forward: list[Path] = field(default_factory=list)  # baseline points -> this scan's points
    inverse: list[Path] = field(default_factory=list)  # this scan's points -> baseline points
    needs_review: bool = False


@dataclass(frozen=True)
class SegmentationRef:
    """The promoted segmentation model: its registry row and its file in the store."""

    model_version_id: int
    path: Path


@dataclass
class OpenTrack:
    """A track that can still continue: where it was last seen and the features it had then and first."""

    number: int
    last_scan_index: int
    last_label: int
    last_volume_mm3: float
    last_centroid: tuple[float, float, float]  # in the last scan's frame
    last_features: dict[str, float | None]
    last_date: date
    last_scan_id: int
    first_features: dict[str, float | None]
    first_date: date
    first_scan_id: int


@dataclass
class PatientContext:
    """What processing the next scan needs to know of the patient's earlier, processed scans."""

    external_id: str  # the patient's pseudonym (``Patient.external_id``)
    scans: list[ScanFiles]  # processed scans in date order, then the scan to process last
    open_tracks: list[OpenTrack]
    next_track_number: int
    targets: dict[int, tuple[str | None, float, float]]  # baseline target track -> (organ, long, short axis)
    # baseline non-target track -> (organ, long axis, short axis, volume_mm3)
    non_targets: dict[int, tuple[str | None, float, float, float]]
    nadir_mm: float | None
    baseline_sum_mm: float | None
    previous_patient_features: dict[str, float | None] | None
    baseline_patient_features: dict[str, float | None] | None
    non_target_nadir_mm3: float | None = None  # smallest total non-target volume so far
    recist_roles: dict[int, str] = field(default_factory=dict)  # every track's RECIST role
    # where tracks went: track -> the tracks split from it and the track it merged into
    successors: dict[int, list[int]] = field(default_factory=dict)
    segmentation: SegmentationRef | None = None  # finds lesions on a scan without a mask


@dataclass
class LinkOut:
    track_number: int
    lesion_label: int | None
    change: ChangeClass
    score: float
    related_track_number: int | None = None


@dataclass
class ScanOutcome:
    """Everything processing one scan produced, ready to be written in one transaction."""

    is_baseline: bool
    registration: RegistrationResult | None
    lesions: list[MeasuredLesion]
    links: list[LinkOut]
    new_tracks: dict[int, int | None]  # track number -> parent track number (splits)
    lesion_track: dict[int, int]  # lesion label -> track number it belongs to
    recist: VisitAssessment | None
    recist_roles: dict[int, str]  # new tracks' `tracker.recist.RecistRole` by track number
    baseline_sum_mm: float | None
    new_lesion: bool
    features: dict[int, dict[str, dict[str, float | None]]]  # lesion label -> region -> tag -> value
    feature_errors: dict[tuple[int, str], str]
    feature_runtime_s: dict[tuple[int, str], float]
    feature_config: dict[str, Any] | None
    engine_version: str | None
    # (track number, reference scan id, reference, changes)
    deltas: list[tuple[int, int, str, dict[str, FeatureChange]]]
    patient_features: dict[str, float | None]
    timings: dict[str, float]
    recist_baseline: TargetSelection | None = None  # baseline only
    # a scan without a given mask: the label map processing built (a file in the work folder) and, per lesion
    # label, where it came from and its confidence; lesions missing here were given
    derived_mask: Path | None = None
    lesion_sources: dict[int, tuple[LesionSource, float | None]] = field(default_factory=dict)
    segmentation_model_id: int | None = None  # the model version that took part in finding the lesions
    review_reasons: list[str] = field(default_factory=list)  # why a reader should look at this scan

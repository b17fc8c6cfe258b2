"""SQLAlchemy 2 ORM models: the whole metatrack schema.

One patient has scans (baseline first, then follow-ups); a scan has a mask, a registration to the baseline,
lesions and a RECIST assessment; lesions belong to persistent tracks whose links carry a change class; lesions
carry radiomics feature values, tracks and patients carry delta features; patients carry clinical events and
risk scores from registered model versions; jobs drive re-scoring. Timestamps are UTC. Patient identifiers are the
pseudonyms users give; no names or other direct identifiers are stored.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.types import JSONType, UTCDateTime, utcnow
from tracker.records import ChangeClass, ScanRole, ScanState

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
HASH_LEN = 64  # hex sha256


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONType, list[Any]: JSONType}  # noqa: RUF012


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    """A portable enum column: VARCHAR plus a CHECK constraint, values stored as their strings."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class EventKind(enum.StrEnum):
    METASTASIS = "metastasis"
    PROGRESSION = "progression"
    DEATH = "death"
    CENSORED = "censored"


class ModelState(enum.StrEnum):
    TRAINED = "trained"
    PROMOTED = "promoted"
    RETIRED = "retired"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Blob(Base):
    """A file in the content-addressed store; `sha256` is the hash of the source content."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(HASH_LEN), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # image | mask | transform | model
    suffix: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    scans: Mapped[list[Scan]] = relationship(back_populates="patient", order_by="Scan.scan_date")


class Scan(Base):
    __tablename__ = "scans"
    __table_args__ = (UniqueConstraint("patient_id", "scan_date"), Index(None, "state"))

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    scan_date: Mapped[date] = mapped_column(Date)
    role: Mapped[ScanRole] = mapped_column(_enum(ScanRole, "scan_role"))
    modality: Mapped[str] = mapped_column(String(8))
    scanner: Mapped[str | None] = mapped_column(String(64))
    site: Mapped[str | None] = mapped_column(String(64))
    image_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), unique=True)
    source_format: Mapped[str] = mapped_column(String(16))  # nifti | nrrd | mha | dicom
    # not the file or folder name (it may name the patient): a DICOM series' SeriesInstanceUID, else "sha256:<16 hex>"
    source_name: Mapped[str] = mapped_column(String(255))
    size_xyz: Mapped[list[Any]] = mapped_column()
    spacing_xyz: Mapped[list[Any]] = mapped_column()
    origin_xyz: Mapped[list[Any]] = mapped_column()
    direction: Mapped[list[Any]] = mapped_column()
    state: Mapped[ScanState] = mapped_column(_enum(ScanState, "scan_state"), default=ScanState.INGESTED)
    error: Mapped[str | None] = mapped_column(Text)
    ingested_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column()
    processing: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # step timings, versions, settings
    # DICOM sources only (None otherwise): study/series/frame-of-reference/SOP class UIDs, sop_instance_uids (element
    # k: the source instance of slice k of the stored image), modality, manufacturer, manufacturer_model_name,
    # convolution_kernel, slice_thickness, study_date (ISO); never a name, birth date, ID, accession or institution
    dicom: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # why a reader should look at this scan (propagated or detected lesions, ...); None: nothing to review
    review_reasons: Mapped[list[Any] | None] = mapped_column(JSONType)

    patient: Mapped[Patient] = relationship(back_populates="scans")
    masks: Mapped[list[Mask]] = relationship(back_populates="scan", cascade="all, delete-orphan")
    lesions: Mapped[list[Lesion]] = relationship(
        back_populates="scan", cascade="all, delete-orphan", order_by="Lesion.label"
    )


class Mask(Base):
    """A label map of a scan on its grid: the lesion mask, or an organ map (organ names in `label_names`)."""

    __tablename__ = "masks"
    __table_args__ = (UniqueConstraint("scan_id", "mask_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="lesions")  # lesions | organs
    mask_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    source_format: Mapped[str] = mapped_column(String(16))  # nifti | nrrd | dicom-seg | rtstruct
    labels: Mapped[list[Any]] = mapped_column()
    label_names: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    voxel_count: Mapped[int] = mapped_column(BigInteger)
    is_empty: Mapped[bool] = mapped_column(Boolean)
    # given: ingested by the user; derived: built by processing (propagation/detection), replaced by `process --from`
    source: Mapped[str] = mapped_column(String(16), default="given", server_default="given")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    scan: Mapped[Scan] = relationship(back_populates="masks")


class Registration(Base):
    """The transforms that bring a (moving) follow-up into its (fixed) reference scan's frame."""

    __tablename__ = "registrations"
    __table_args__ = (UniqueConstraint("moving_scan_id", "fixed_scan_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    moving_scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    fixed_scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    preset: Mapped[str] = mapped_column(String(32))
    forward_sha256: Mapped[list[Any]] = mapped_column()  # fixed-frame points -> moving-frame points
    inverse_sha256: Mapped[list[Any]] = mapped_column()  # moving-frame points -> fixed-frame points
    similarity_before: Mapped[float | None] = mapped_column(Float)
    similarity_after: Mapped[float | None] = mapped_column(Float)
    jacobian_min: Mapped[float | None] = mapped_column(Float)
    folding_fraction: Mapped[float | None] = mapped_column(Float)
    runtime_s: Mapped[float | None] = mapped_column(Float)
    threads: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column()
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    review_reasons: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LesionTrack(Base):
    """A lesion's identity over time within one patient; `number` is the stable ID users see (T1, T2, ...)."""

    __tablename__ = "lesion_tracks"
    # first_scan_id, parent_track_id: process --from deletes tracks by first scan, and deleting one checks children
    __table_args__ = (
        UniqueConstraint("patient_id", "number"),
        Index(None, "first_scan_id"),
        Index(None, "parent_track_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    first_scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    parent_track_id: Mapped[int | None] = mapped_column(ForeignKey("lesion_tracks.id", ondelete="SET NULL"))
    recist_role: Mapped[str | None] = mapped_column(String(16))  # tracker.recist.RecistRole
    recist_override: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lesion(Base):
    """One lesion (connected component / label) of one scan's mask, with its measurements."""

    __tablename__ = "lesions"
    __table_args__ = (UniqueConstraint("scan_id", "label"), Index(None, "track_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    mask_id: Mapped[int] = mapped_column(ForeignKey("masks.id", ondelete="CASCADE"))
    label: Mapped[int] = mapped_column(Integer)
    voxels: Mapped[int] = mapped_column(Integer)
    volume_mm3: Mapped[float] = mapped_column(Float)
    centroid_x: Mapped[float] = mapped_column(Float)
    centroid_y: Mapped[float] = mapped_column(Float)
    centroid_z: Mapped[float] = mapped_column(Float)
    long_axis_mm: Mapped[float | None] = mapped_column(Float)
    short_axis_mm: Mapped[float | None] = mapped_column(Float)
    max_diameter_mm: Mapped[float | None] = mapped_column(Float)
    organ: Mapped[str | None] = mapped_column(String(32))
    track_id: Mapped[int | None] = mapped_column(ForeignKey("lesion_tracks.id", ondelete="SET NULL"))
    # given (drawn), propagated (carried from an earlier scan) or detected (segmentation model); confidence 0-1
    # (None for given lesions) and the segmentation model version that took part
    source: Mapped[str] = mapped_column(String(16), default="given", server_default="given")
    confidence: Mapped[float | None] = mapped_column(Float)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    scan: Mapped[Scan] = relationship(back_populates="lesions")


class TrackLink(Base):
    """What happened to a track at a scan: the lesion it continues in (none when vanished) and the change."""

    __tablename__ = "track_links"
    # lesion_id, related_track_id: deleting a lesion or track (process --from) looks its links up by these
    __table_args__ = (
        UniqueConstraint("track_id", "scan_id"),
        Index(None, "scan_id"),
        Index(None, "lesion_id"),
        Index(None, "related_track_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("lesion_tracks.id", ondelete="CASCADE"))
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    lesion_id: Mapped[int | None] = mapped_column(ForeignKey("lesions.id", ondelete="CASCADE"))
    change: Mapped[ChangeClass] = mapped_column(_enum(ChangeClass, "change_class"))
    related_track_id: Mapped[int | None] = mapped_column(ForeignKey("lesion_tracks.id", ondelete="SET NULL"))
    score: Mapped[float | None] = mapped_column(Float)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RecistAssessment(Base):
    __tablename__ = "recist_assessments"

    id: Mapped[int] = mapped_column(primary_key=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), unique=True)
    sum_mm: Mapped[float] = mapped_column(Float)
    baseline_sum_mm: Mapped[float] = mapped_column(Float)
    nadir_mm: Mapped[float] = mapped_column(Float)
    change_from_baseline_pct: Mapped[float | None] = mapped_column(Float)
    change_from_nadir_pct: Mapped[float | None] = mapped_column(Float)
    new_lesions: Mapped[bool] = mapped_column(Boolean, default=False)
    response: Mapped[str] = mapped_column(String(16))  # CR | PR | SD | PD | NE | Non-CR/Non-PD (baseline: "BL")
    # RECIST 1.1 in full (`tracker.recist.VisitAssessment`); None on rows written before migration 0003
    target_response: Mapped[str | None] = mapped_column(String(16))  # None: no target lesions
    non_target_response: Mapped[str | None] = mapped_column(String(16))  # None: no non-target lesions
    non_target_volume_mm3: Mapped[float | None] = mapped_column(Float)  # None: not every non-target assessed
    non_target_nadir_mm3: Mapped[float | None] = mapped_column(Float)
    target_diameters: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # track number -> mm in the sum
    reasons: Mapped[list[Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeatureConfig(Base):
    """A radiomics extraction configuration, stored once by the hash of its canonical JSON."""

    __tablename__ = "feature_configs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    config_sha256: Mapped[str] = mapped_column(String(HASH_LEN), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column()
    engine: Mapped[str] = mapped_column(String(32))
    engine_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeatureExtraction(Base):
    """One extraction run for one lesion region: its status, so one failure is recorded, not fatal."""

    __tablename__ = "feature_extractions"
    __table_args__ = (UniqueConstraint("lesion_id", "config_id", "region"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    lesion_id: Mapped[int] = mapped_column(ForeignKey("lesions.id", ondelete="CASCADE"))
    config_id: Mapped[int] = mapped_column(ForeignKey("feature_configs.id", ondelete="CASCADE"))
    region: Mapped[str] = mapped_column(String(16))  # lesion | shell
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    runtime_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FeatureValue(Base):
    __tablename__ = "feature_values"
    __table_args__ = (
        UniqueConstraint("lesion_id", "config_id", "region", "tag"),
        Index(None, "scan_id", "tag"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    lesion_id: Mapped[int] = mapped_column(ForeignKey("lesions.id", ondelete="CASCADE"))
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    config_id: Mapped[int] = mapped_column(ForeignKey("feature_configs.id", ondelete="CASCADE"))
    region: Mapped[str] = mapped_column(String(16))
    tag: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    harmonised: Mapped[float | None] = mapped_column(Float)


class TrackDelta(Base):
    """Delta-radiomics along a track: change of a feature at a scan against a reference scan."""

    __tablename__ = "track_deltas"
    # (scan_id, tag): the timeline reads a patient's deltas by scan and tag (a full scan without it)
    __table_args__ = (
        UniqueConstraint("track_id", "scan_id", "config_id", "reference", "tag"),
        Index(None, "scan_id", "tag"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    track_id: Mapped[int] = mapped_column(ForeignKey("lesion_tracks.id", ondelete="CASCADE"))
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    reference_scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    config_id: Mapped[int] = mapped_column(ForeignKey("feature_configs.id", ondelete="CASCADE"))
    reference: Mapped[str] = mapped_column(String(16))  # previous | baseline
    tag: Mapped[str] = mapped_column(String(64))
    abs_change: Mapped[float | None] = mapped_column(Float)
    rel_change: Mapped[float | None] = mapped_column(Float)
    change_per_30d: Mapped[float | None] = mapped_column(Float)


class PatientFeature(Base):
    """Patient-level value at a scan (tumour burden, lesion counts, RECIST sum, aggregates and their deltas)."""

    __tablename__ = "patient_features"
    __table_args__ = (UniqueConstraint("scan_id", "tag"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"), index=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(String(96))
    value: Mapped[float | None] = mapped_column(Float)


class HarmonisationModel(Base):
    """A fitted harmonisation (ComBat, Nyul): applied to new scans, never refitted silently."""

    __tablename__ = "harmonisation_models"
    __table_args__ = (UniqueConstraint("name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    config_id: Mapped[int | None] = mapped_column(ForeignKey("feature_configs.id", ondelete="SET NULL"))
    params: Mapped[dict[str, Any]] = mapped_column()
    fitted_on: Mapped[dict[str, Any]] = mapped_column()
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClinicalEvent(Base):
    __tablename__ = "clinical_events"
    __table_args__ = (UniqueConstraint("patient_id", "kind", "event_date"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    kind: Mapped[EventKind] = mapped_column(_enum(EventKind, "event_kind"))
    event_date: Mapped[date] = mapped_column(Date)
    source: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """A registered risk model; one promoted model per endpoint scores new data."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        Index(
            "uq_model_versions_promoted_endpoint",
            "endpoint",
            unique=True,
            sqlite_where=text("state = 'promoted'"),
            postgresql_where=text("state = 'promoted'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    endpoint: Mapped[str] = mapped_column(String(32))
    state: Mapped[ModelState] = mapped_column(_enum(ModelState, "model_state"), default=ModelState.TRAINED)
    file_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    data_fingerprint: Mapped[str] = mapped_column(String(HASH_LEN))
    features: Mapped[list[Any]] = mapped_column()
    hyperparameters: Mapped[dict[str, Any]] = mapped_column()
    metrics: Mapped[dict[str, Any]] = mapped_column()
    versions: Mapped[dict[str, Any]] = mapped_column()
    seed: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column()


class RiskScore(Base):
    """A risk of the endpoint within `horizon_months` as of a date (usually a scan's), from one model version."""

    __tablename__ = "risk_scores"
    __table_args__ = (
        UniqueConstraint("patient_id", "as_of_date", "model_version_id", "horizon_months"),
        Index(None, "model_version_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    scan_id: Mapped[int | None] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    as_of_date: Mapped[date] = mapped_column(Date)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    horizon_months: Mapped[int] = mapped_column(Integer)
    risk: Mapped[float] = mapped_column(Float)
    curve: Mapped[list[Any] | None] = mapped_column(JSONType)
    # the 90 % interval of `risk` and of `curve` (None: scored before intervals were kept)
    risk_lower: Mapped[float | None] = mapped_column(Float)
    risk_upper: Mapped[float | None] = mapped_column(Float)
    curve_lower: Mapped[list[Any] | None] = mapped_column(JSONType)
    curve_upper: Mapped[list[Any] | None] = mapped_column(JSONType)
    input_fingerprint: Mapped[str] = mapped_column(String(HASH_LEN))
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)


class RiskScoreChange(Base):
    """A stored risk that rescore replaced (migration 0005): old and new value and model, why (`db.alerts`)."""

    __tablename__ = "risk_score_history"
    __table_args__ = (Index(None, "patient_id", "as_of_date", "horizon_months"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    scan_id: Mapped[int | None] = mapped_column(ForeignKey("scans.id", ondelete="SET NULL"))
    as_of_date: Mapped[date] = mapped_column(Date)
    horizon_months: Mapped[int] = mapped_column(Integer)
    old_model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    new_model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    old_risk: Mapped[float] = mapped_column(Float)
    new_risk: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(16))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class RecistSeen(Base):
    """The RECIST response `metatrack alerts` saw for a patient's scan date; a later different one is a change."""

    __tablename__ = "recist_history"
    __table_args__ = (Index(None, "patient_id", "scan_date"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    scan_date: Mapped[date] = mapped_column(Date)
    old_response: Mapped[str | None] = mapped_column(String(16))  # None: the first response seen
    response: Mapped[str] = mapped_column(String(16))
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A unit of background work (re-scoring a patient, processing a scan), claimed by one worker at a time."""

    __tablename__ = "jobs"
    __table_args__ = (Index(None, "state", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column()
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

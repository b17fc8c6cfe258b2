"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 21:11:28.379662
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("suffix", sa.String(length=16), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_blobs")),
    )
    op.create_table(
        "feature_configs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("config_sha256", sa.String(length=64), nullable=False),
        sa.Column(
            "config", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("engine", sa.String(length=32), nullable=False),
        sa.Column("engine_version", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_configs")),
        sa.UniqueConstraint("config_sha256", name=op.f("uq_feature_configs_config_sha256")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("dedupe_key", sa.String(length=255), nullable=False),
        sa.Column(
            "payload", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "state",
            sa.Enum(
                "queued",
                "running",
                "done",
                "failed",
                name="job_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_jobs_dedupe_key")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_state_kind"), ["state", "kind"], unique=False)

    op.create_table(
        "patients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
        sa.UniqueConstraint("external_id", name=op.f("uq_patients_external_id")),
    )
    op.create_table(
        "clinical_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "metastasis",
                "progression",
                "death",
                "censored",
                name="event_kind",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("event_date", sa.Date(), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_clinical_events_patient_id_patients"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clinical_events")),
        sa.UniqueConstraint(
            "patient_id", "kind", "event_date", name=op.f("uq_clinical_events_patient_id_kind_event_date")
        ),
    )
    op.create_table(
        "harmonisation_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("config_id", sa.Integer(), nullable=True),
        sa.Column(
            "params", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "fitted_on", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["config_id"],
            ["feature_configs.id"],
            name=op.f("fk_harmonisation_models_config_id_feature_configs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_harmonisation_models")),
        sa.UniqueConstraint("name", name=op.f("uq_harmonisation_models_name")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "trained",
                "promoted",
                "retired",
                name="model_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("file_sha256", sa.String(length=64), nullable=False),
        sa.Column("data_fingerprint", sa.String(length=64), nullable=False),
        sa.Column(
            "features", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "hyperparameters",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "metrics", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "versions", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["file_sha256"], ["blobs.sha256"], name=op.f("fk_model_versions_file_sha256_blobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_model_versions_name_version")),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(
            "uq_model_versions_promoted_endpoint",
            ["endpoint"],
            unique=True,
            sqlite_where=sa.text("state = 'promoted'"),
            postgresql_where=sa.text("state = 'promoted'"),
        )

    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("scan_date", sa.Date(), nullable=False),
        sa.Column(
            "role",
            sa.Enum("baseline", "follow-up", name="scan_role", native_enum=False, create_constraint=True, length=16),
            nullable=False,
        ),
        sa.Column("modality", sa.String(length=8), nullable=False),
        sa.Column("scanner", sa.String(length=64), nullable=True),
        sa.Column("site", sa.String(length=64), nullable=True),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("source_format", sa.String(length=16), nullable=False),
        sa.Column("source_name", sa.String(length=255), nullable=False),
        sa.Column(
            "size_xyz", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "spacing_xyz", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "origin_xyz", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "direction", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "state",
            sa.Enum(
                "ingested",
                "processed",
                "failed",
                name="scan_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "processing", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.ForeignKeyConstraint(["image_sha256"], ["blobs.sha256"], name=op.f("fk_scans_image_sha256_blobs")),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_scans_patient_id_patients"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
        sa.UniqueConstraint("image_sha256", name=op.f("uq_scans_image_sha256")),
        sa.UniqueConstraint("patient_id", "scan_date", name=op.f("uq_scans_patient_id_scan_date")),
    )
    with op.batch_alter_table("scans", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_scans_state"), ["state"], unique=False)

    op.create_table(
        "lesion_tracks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("first_scan_id", sa.Integer(), nullable=False),
        sa.Column("parent_track_id", sa.Integer(), nullable=True),
        sa.Column("recist_role", sa.String(length=16), nullable=True),
        sa.Column("recist_override", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["first_scan_id"], ["scans.id"], name=op.f("fk_lesion_tracks_first_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_track_id"],
            ["lesion_tracks.id"],
            name=op.f("fk_lesion_tracks_parent_track_id_lesion_tracks"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_lesion_tracks_patient_id_patients"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lesion_tracks")),
        sa.UniqueConstraint("patient_id", "number", name=op.f("uq_lesion_tracks_patient_id_number")),
    )
    op.create_table(
        "masks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("mask_sha256", sa.String(length=64), nullable=False),
        sa.Column("source_format", sa.String(length=16), nullable=False),
        sa.Column(
            "labels", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "label_names", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("voxel_count", sa.BigInteger(), nullable=False),
        sa.Column("is_empty", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["mask_sha256"], ["blobs.sha256"], name=op.f("fk_masks_mask_sha256_blobs")),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_masks_scan_id_scans"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_masks")),
        sa.UniqueConstraint("scan_id", "mask_sha256", name=op.f("uq_masks_scan_id_mask_sha256")),
    )
    op.create_table(
        "patient_features",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=96), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_patient_features_patient_id_patients"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_patient_features_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_features")),
        sa.UniqueConstraint("scan_id", "tag", name=op.f("uq_patient_features_scan_id_tag")),
    )
    with op.batch_alter_table("patient_features", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_patient_features_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "recist_assessments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("sum_mm", sa.Float(), nullable=False),
        sa.Column("baseline_sum_mm", sa.Float(), nullable=False),
        sa.Column("nadir_mm", sa.Float(), nullable=False),
        sa.Column("change_from_baseline_pct", sa.Float(), nullable=True),
        sa.Column("change_from_nadir_pct", sa.Float(), nullable=True),
        sa.Column("new_lesions", sa.Boolean(), nullable=False),
        sa.Column("response", sa.String(length=4), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_recist_assessments_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recist_assessments")),
        sa.UniqueConstraint("scan_id", name=op.f("uq_recist_assessments_scan_id")),
    )
    op.create_table(
        "registrations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("moving_scan_id", sa.Integer(), nullable=False),
        sa.Column("fixed_scan_id", sa.Integer(), nullable=False),
        sa.Column("preset", sa.String(length=32), nullable=False),
        sa.Column(
            "forward_sha256",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "inverse_sha256",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("similarity_before", sa.Float(), nullable=True),
        sa.Column("similarity_after", sa.Float(), nullable=True),
        sa.Column("jacobian_min", sa.Float(), nullable=True),
        sa.Column("folding_fraction", sa.Float(), nullable=True),
        sa.Column("runtime_s", sa.Float(), nullable=True),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column(
            "metrics", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("needs_review", sa.Boolean(), nullable=False),
        sa.Column(
            "review_reasons",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["fixed_scan_id"], ["scans.id"], name=op.f("fk_registrations_fixed_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["moving_scan_id"], ["scans.id"], name=op.f("fk_registrations_moving_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registrations")),
        sa.UniqueConstraint(
            "moving_scan_id", "fixed_scan_id", name=op.f("uq_registrations_moving_scan_id_fixed_scan_id")
        ),
    )
    op.create_table(
        "risk_scores",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=True),
        sa.Column("as_of_date", sa.Date(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("horizon_months", sa.Integer(), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column(
            "curve", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("input_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_risk_scores_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_risk_scores_patient_id_patients"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_risk_scores_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_scores")),
        sa.UniqueConstraint(
            "patient_id",
            "as_of_date",
            "model_version_id",
            "horizon_months",
            name=op.f("uq_risk_scores_patient_id_as_of_date_model_version_id_horizon_months"),
        ),
    )
    with op.batch_alter_table("risk_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_risk_scores_model_version_id"), ["model_version_id"], unique=False)

    op.create_table(
        "lesions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("mask_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("voxels", sa.Integer(), nullable=False),
        sa.Column("volume_mm3", sa.Float(), nullable=False),
        sa.Column("centroid_x", sa.Float(), nullable=False),
        sa.Column("centroid_y", sa.Float(), nullable=False),
        sa.Column("centroid_z", sa.Float(), nullable=False),
        sa.Column("long_axis_mm", sa.Float(), nullable=True),
        sa.Column("short_axis_mm", sa.Float(), nullable=True),
        sa.Column("max_diameter_mm", sa.Float(), nullable=True),
        sa.Column("organ", sa.String(length=32), nullable=True),
        sa.Column("track_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["mask_id"], ["masks.id"], name=op.f("fk_lesions_mask_id_masks"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name=op.f("fk_lesions_scan_id_scans"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["track_id"], ["lesion_tracks.id"], name=op.f("fk_lesions_track_id_lesion_tracks"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lesions")),
        sa.UniqueConstraint("scan_id", "label", name=op.f("uq_lesions_scan_id_label")),
    )
    with op.batch_alter_table("lesions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lesions_track_id"), ["track_id"], unique=False)

    op.create_table(
        "track_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("reference_scan_id", sa.Integer(), nullable=False),
        sa.Column("config_id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(length=16), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("abs_change", sa.Float(), nullable=True),
        sa.Column("rel_change", sa.Float(), nullable=True),
        sa.Column("change_per_30d", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["config_id"],
            ["feature_configs.id"],
            name=op.f("fk_track_deltas_config_id_feature_configs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["reference_scan_id"],
            ["scans.id"],
            name=op.f("fk_track_deltas_reference_scan_id_scans"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_track_deltas_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["track_id"], ["lesion_tracks.id"], name=op.f("fk_track_deltas_track_id_lesion_tracks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_track_deltas")),
        sa.UniqueConstraint(
            "track_id",
            "scan_id",
            "config_id",
            "reference",
            "tag",
            name=op.f("uq_track_deltas_track_id_scan_id_config_id_reference_tag"),
        ),
    )
    op.create_table(
        "feature_extractions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lesion_id", sa.Integer(), nullable=False),
        sa.Column("config_id", sa.Integer(), nullable=False),
        sa.Column("region", sa.String(length=16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("runtime_s", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["config_id"],
            ["feature_configs.id"],
            name=op.f("fk_feature_extractions_config_id_feature_configs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["lesion_id"], ["lesions.id"], name=op.f("fk_feature_extractions_lesion_id_lesions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_extractions")),
        sa.UniqueConstraint(
            "lesion_id", "config_id", "region", name=op.f("uq_feature_extractions_lesion_id_config_id_region")
        ),
    )
    op.create_table(
        "feature_values",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("lesion_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("config_id", sa.Integer(), nullable=False),
        sa.Column("region", sa.String(length=16), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("harmonised", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["config_id"],
            ["feature_configs.id"],
            name=op.f("fk_feature_values_config_id_feature_configs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["lesion_id"], ["lesions.id"], name=op.f("fk_feature_values_lesion_id_lesions"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_feature_values_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_values")),
        sa.UniqueConstraint(
            "lesion_id", "config_id", "region", "tag", name=op.f("uq_feature_values_lesion_id_config_id_region_tag")
        ),
    )
    with op.batch_alter_table("feature_values", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feature_values_scan_id_tag"), ["scan_id", "tag"], unique=False)

    op.create_table(
        "track_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("lesion_id", sa.Integer(), nullable=True),
        sa.Column(
            "change",
            sa.Enum(
                "persistent",
                "new",
                "vanished",
                "merged",
                "split",
                name="change_class",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("related_track_id", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("needs_review", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["lesion_id"], ["lesions.id"], name=op.f("fk_track_links_lesion_id_lesions"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["related_track_id"],
            ["lesion_tracks.id"],
            name=op.f("fk_track_links_related_track_id_lesion_tracks"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_track_links_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["track_id"], ["lesion_tracks.id"], name=op.f("fk_track_links_track_id_lesion_tracks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_track_links")),
        sa.UniqueConstraint("track_id", "scan_id", name=op.f("uq_track_links_track_id_scan_id")),
    )
    with op.batch_alter_table("track_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_track_links_scan_id"), ["scan_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("track_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_track_links_scan_id"))

    op.drop_table("track_links")
    with op.batch_alter_table("feature_values", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feature_values_scan_id_tag"))

    op.drop_table("feature_values")
    op.drop_table("feature_extractions")
    op.drop_table("track_deltas")
    with op.batch_alter_table("lesions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lesions_track_id"))

    op.drop_table("lesions")
    with op.batch_alter_table("risk_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_risk_scores_model_version_id"))

    op.drop_table("risk_scores")
    op.drop_table("registrations")
    op.drop_table("recist_assessments")
    with op.batch_alter_table("patient_features", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_features_patient_id"))

    op.drop_table("patient_features")
    op.drop_table("masks")
    op.drop_table("lesion_tracks")
    with op.batch_alter_table("scans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scans_state"))

    op.drop_table("scans")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_model_versions_promoted_endpoint",
            sqlite_where=sa.text("state = 'promoted'"),
            postgresql_where=sa.text("state = 'promoted'"),
        )

    op.drop_table("model_versions")
    op.drop_table("harmonisation_models")
    op.drop_table("clinical_events")
    op.drop_table("patients")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_state_kind"))

    op.drop_table("jobs")
    op.drop_table("feature_configs")
    op.drop_table("blobs")

"""risk score history and alerts

`risk_score_history` keeps every stored risk that rescore replaced: the old and new value, the old and new model
version and the reason (new-model, new-scan, re-processing); `risk_scores` itself keeps only the current value per
key. `recist_history` is what `metatrack alerts` has seen of each scan date's RECIST response: a row per response
seen, with the one it replaced (NULL for the first), so a category changed by re-processing or a correction is an
alert once. See docs/scheduling.md.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 12:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "risk_score_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=True),
        sa.Column("as_of_date", sa.Date(), nullable=False),
        sa.Column("horizon_months", sa.Integer(), nullable=False),
        sa.Column("old_model_version_id", sa.Integer(), nullable=True),
        sa.Column("new_model_version_id", sa.Integer(), nullable=False),
        sa.Column("old_risk", sa.Float(), nullable=False),
        sa.Column("new_risk", sa.Float(), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_risk_score_history_patient_id_patients"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_risk_score_history_scan_id_scans"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["old_model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_risk_score_history_old_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["new_model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_risk_score_history_new_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_risk_score_history")),
    )
    op.create_index(
        op.f("ix_risk_score_history_patient_id_as_of_date_horizon_months"),
        "risk_score_history",
        ["patient_id", "as_of_date", "horizon_months"],
        unique=False,
    )
    op.create_table(
        "recist_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("scan_date", sa.Date(), nullable=False),
        sa.Column("old_response", sa.String(length=16), nullable=True),
        sa.Column("response", sa.String(length=16), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_recist_history_patient_id_patients"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recist_history")),
    )
    op.create_index(
        op.f("ix_recist_history_patient_id_scan_date"), "recist_history", ["patient_id", "scan_date"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_recist_history_patient_id_scan_date"), table_name="recist_history")
    op.drop_table("recist_history")
    op.drop_index(op.f("ix_risk_score_history_patient_id_as_of_date_horizon_months"), table_name="risk_score_history")
    op.drop_table("risk_score_history")

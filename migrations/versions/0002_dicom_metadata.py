"""DICOM header metadata on scans; source names no longer kept

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 12:20:00

`scans.dicom` holds a DICOM source's UIDs and acquisition headers (None for other sources). `scans.source_name`
held the file or folder base name, which may name the patient: existing rows get "sha256:" and the first 16 hex
digits of their image hash, what ingest now stores for non-DICOM sources (the old names are not kept, so a
downgrade cannot bring them back).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scans", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "dicom", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
            )
        )
    op.execute("UPDATE scans SET source_name = 'sha256:' || substr(image_sha256, 1, 16)")


def downgrade() -> None:
    with op.batch_alter_table("scans", schema=None) as batch_op:
        batch_op.drop_column("dicom")

"""lesion provenance: where each lesion came from, derived masks, scans to review

A follow-up can arrive without a lesion mask (issue 14): its lesions are then propagated from earlier scans
through the registration or detected by the promoted segmentation model. `lesions.source` says which (`given`,
`propagated`, `detected`), with `confidence` (0-1, NULL for given lesions) and the segmentation model version that
took part. `masks.source` is `given` for a mask the user ingested and `derived` for the label map processing
built (deleted again by `process --from`; a given mask always wins). `scans.review_reasons` lists why a scan
needs a reader's look (NULL: none).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("lesions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=16), nullable=False, server_default="given"))
        batch_op.add_column(sa.Column("confidence", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("model_version_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_lesions_model_version_id_model_versions"),
            "model_versions",
            ["model_version_id"],
            ["id"],
            ondelete="SET NULL",
        )
    with op.batch_alter_table("masks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=16), nullable=False, server_default="given"))
    with op.batch_alter_table("scans", schema=None) as batch_op:
        batch_op.add_column(sa.Column("review_reasons", _json(), nullable=True))


def downgrade() -> None:
    # derived masks and the lesions measured on them have no place in the old schema: processing made them
    op.execute("DELETE FROM lesions WHERE mask_id IN (SELECT id FROM masks WHERE source = 'derived')")
    op.execute("DELETE FROM masks WHERE source = 'derived'")
    with op.batch_alter_table("scans", schema=None) as batch_op:
        batch_op.drop_column("review_reasons")
    with op.batch_alter_table("masks", schema=None) as batch_op:
        batch_op.drop_column("source")
    with op.batch_alter_table("lesions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_lesions_model_version_id_model_versions"), type_="foreignkey")
        batch_op.drop_column("model_version_id")
        batch_op.drop_column("confidence")
        batch_op.drop_column("source")

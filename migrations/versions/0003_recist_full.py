"""full RECIST 1.1

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 12:20:00

`recist_assessments` keeps what a reader needs of RECIST 1.1 in full (`tracker.recist.VisitAssessment`): the
target and non-target responses, the non-targets' total volume and its nadir (the unequivocal-progression rule),
what each target adds to the sum, and the reasons; `response` widens to hold "Non-CR/Non-PD". Rows written before
keep NULL there. `lesion_tracks.recist_role` may now also be "normal-node" or "new" (same column).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("recist_assessments", schema=None) as batch_op:
        batch_op.alter_column(
            "response", existing_type=sa.String(length=4), type_=sa.String(length=16), existing_nullable=False
        )
        batch_op.add_column(sa.Column("target_response", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("non_target_response", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("non_target_volume_mm3", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("non_target_nadir_mm3", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("target_diameters", _json(), nullable=True))
        batch_op.add_column(sa.Column("reasons", _json(), nullable=True))


def downgrade() -> None:
    # "Non-CR/Non-PD" does not fit the old width: such rows become "NE" (not evaluable by the old rules)
    op.execute("UPDATE recist_assessments SET response = 'NE' WHERE length(response) > 4")
    with op.batch_alter_table("recist_assessments", schema=None) as batch_op:
        for column in (
            "reasons",
            "target_diameters",
            "non_target_nadir_mm3",
            "non_target_volume_mm3",
            "non_target_response",
            "target_response",
        ):
            batch_op.drop_column(column)
        batch_op.alter_column(
            "response", existing_type=sa.String(length=16), type_=sa.String(length=4), existing_nullable=False
        )

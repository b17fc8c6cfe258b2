"""risk intervals: a 90 % interval beside every stored risk and survival curve

`risk_lower`/`risk_upper` bound `risk` and `curve_lower`/`curve_upper` bound `curve` (NULL for rows scored
before this revision). How the interval is made is the model kind's (`tracker.survival`), see docs/architecture.md.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("risk_scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("risk_lower", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("risk_upper", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("curve_lower", _json(), nullable=True))
        batch_op.add_column(sa.Column("curve_upper", _json(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("risk_scores", schema=None) as batch_op:
        for column in ("curve_upper", "curve_lower", "risk_upper", "risk_lower"):
            batch_op.drop_column(column)

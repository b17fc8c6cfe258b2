"""indexes for cohort-scale reads

The timeline reads a patient's track deltas by scan and tag (without an index, a full scan of track_deltas:
234 ms of a 10,000-patient cohort's 976,710 rows on PostgreSQL, 0.08 ms with it). `process --from` deletes tracks
by their first scan, and each deleted lesion or track has its links and child tracks looked up by the foreign
keys below (without indexes, 40 ms a lesion and 48 ms a track of sequential scans at that size).
See benchmarks/scale.py.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 12:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("track_deltas", ("scan_id", "tag")),
    ("track_links", ("lesion_id",)),
    ("track_links", ("related_track_id",)),
    ("lesion_tracks", ("first_scan_id",)),
    ("lesion_tracks", ("parent_track_id",)),
)


def _name(table: str, columns: Sequence[str]) -> str:
    return f"ix_{table}_{'_'.join(columns)}"


def upgrade() -> None:
    for table, columns in INDEXES:
        op.create_index(_name(table, columns), table, list(columns), unique=False)


def downgrade() -> None:
    for table, columns in reversed(INDEXES):
        op.drop_index(_name(table, columns), table_name=table)

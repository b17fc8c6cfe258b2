"""Risk score rows: what is stored per patient and input fingerprint, and the bulk upsert of new scores."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.jobs import db_timestamp, executemany
from db.models import ModelVersion, RiskScore


def row_stats(session: Session, model_version_id: int | None = None) -> tuple[int, int, datetime | None]:
    """(rows, distinct keys, newest computed_at) of the stored scores (of one model version, or all)."""
    where = [RiskScore.model_version_id == model_version_id] if model_version_id else []
    keys = select(
        RiskScore.patient_id, RiskScore.as_of_date, RiskScore.model_version_id, RiskScore.horizon_months
    ).where(*where)
    return (
        int(session.scalar(select(func.count()).select_from(RiskScore).where(*where)) or 0),
        int(session.scalar(select(func.count()).select_from(keys.distinct().subquery())) or 0),
        session.scalar(select(func.max(RiskScore.computed_at)).where(*where)),
    )


def model_version(session: Session, model_version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, model_version_id)


def stored_counts(session: Session, model_version_id: int, db_ids: list[int] | None) -> dict[tuple[int, str], int]:
    """Stored score rows per (patient, input fingerprint) of a model version (of some patients, or all)."""
    q = (
        select(RiskScore.patient_id, RiskScore.input_fingerprint, func.count())
        .where(RiskScore.model_version_id == model_version_id)
        .group_by(RiskScore.patient_id, RiskScore.input_fingerprint)
    )
    if db_ids is not None:
        q = q.where(RiskScore.patient_id.in_(db_ids))
    return {(int(p), f): int(n) for p, f, n in session.execute(q)}


SCORE_COLUMNS = (
    "patient_id",
    "scan_id",
    "as_of_date",
    "model_version_id",
    "horizon_months",
    "risk",
    "curve",
    "input_fingerprint",
    "computed_at",
)
UPSERT_SQLITE = (
    f"INSERT INTO risk_scores ({', '.join(SCORE_COLUMNS)}) VALUES ({', '.join('?' * len(SCORE_COLUMNS))}) "
    "ON CONFLICT (patient_id, as_of_date, model_version_id, horizon_months) DO UPDATE SET scan_id = excluded.scan_id, "
    "risk = excluded.risk, curve = excluded.curve, input_fingerprint = excluded.input_fingerprint, "
    "computed_at = excluded.computed_at WHERE risk_scores.input_fingerprint <> excluded.input_fingerprint"
)
UPSERT_POSTGRES = (
    f"INSERT INTO risk_scores ({', '.join(SCORE_COLUMNS)}) "
    "SELECT p, s, d, m, h, r, c::jsonb, f, %(now)s FROM unnest(%(p)b::bigint[], %(s)b::bigint[], %(d)b::date[], "
    "%(m)b::bigint[], %(h)b::int[], %(r)b::float8[], %(c)b::text[], %(f)b::text[]) AS t(p, s, d, m, h, r, c, f) "
    "ON CONFLICT (patient_id, as_of_date, model_version_id, horizon_months) DO UPDATE SET scan_id = excluded.scan_id, "
    "risk = excluded.risk, curve = excluded.curve, input_fingerprint = excluded.input_fingerprint, "
    "computed_at = excluded.computed_at WHERE risk_scores.input_fingerprint <> excluded.input_fingerprint"
)


def upsert_scores(session: Session, rows: pd.DataFrame, computed_at: datetime) -> None:
    """Insert score rows; a row with the same key and another fingerprint is replaced, an identical one kept.

    Raw driver calls (one unnest() statement on PostgreSQL, executemany on SQLite): per-row ORM/Core parameter
    processing would cost more than the scoring itself.
    """
    if rows.empty:
        return
    scan = [None if v is None else int(v) for v in rows["scan_id"]]
    if session.get_bind().dialect.name == "postgresql":
        params = {
            "p": rows["patient_id"].tolist(),
            "s": scan,
            "d": rows["as_of_date"].tolist(),
            "m": rows["model_version_id"].tolist(),
            "h": rows["horizon_months"].tolist(),
            "r": rows["risk"].tolist(),
            "c": rows["curve"].tolist(),
            "f": rows["input_fingerprint"].tolist(),
            "now": computed_at,
        }
        cursor = session.connection().connection.cursor()  # same transaction
        try:  # binary parameters (%(x)b): no per-element quoting of the text arrays
            cursor.execute(UPSERT_POSTGRES, params)
        finally:
            cursor.close()
        return
    now = db_timestamp(session, computed_at)
    days = [d.isoformat() for d in rows["as_of_date"]]
    executemany(
        session,
        UPSERT_SQLITE,
        list(
            zip(
                rows["patient_id"].tolist(),
                scan,
                days,
                rows["model_version_id"].tolist(),
                rows["horizon_months"].tolist(),
                rows["risk"].tolist(),
                rows["curve"].tolist(),
                rows["input_fingerprint"].tolist(),
                [now] * len(rows),
                strict=True,
            )
        ),
    )

"""Risk score rows: what is stored per patient and input fingerprint, and the bulk upsert of new scores."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.jobs import db_timestamp, executemany
from db.models import ModelVersion, Registration, RiskScore, Scan
from db.visits import SQL_IN_CHUNK


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


def scans_needing_review(session: Session, scan_ids: list[int]) -> set[int]:
    """The scans among ``scan_ids`` that need review: review reasons of their own (low-confidence lesions, ...)
    or a registration into their reference frame flagged for review."""
    if not scan_ids:
        return set()
    flagged: set[int] = set()
    for chunk in range(0, len(scan_ids), SQL_IN_CHUNK):
        ids = scan_ids[chunk : chunk + SQL_IN_CHUNK]
        flagged |= {
            int(i)
            for i, reasons in session.execute(select(Scan.id, Scan.review_reasons).where(Scan.id.in_(ids)))
            if reasons
        }
        flagged |= {
            int(i)
            for (i,) in session.execute(
                select(Registration.moving_scan_id).where(
                    Registration.moving_scan_id.in_(ids), Registration.needs_review.is_(True)
                )
            )
        }
    return flagged


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
# the 90 % interval of risk and of curve (curve_lower/curve_upper on the curve's row only); rows without them (the
# synthetic loader's) leave them NULL
INTERVAL_COLUMNS = ("risk_lower", "risk_upper", "curve_lower", "curve_upper")
_UPSERT_COLUMNS = (*SCORE_COLUMNS, *INTERVAL_COLUMNS)
_ON_CONFLICT = (
    "ON CONFLICT (patient_id, as_of_date, model_version_id, horizon_months) DO UPDATE SET scan_id = excluded.scan_id, "
    "risk = excluded.risk, curve = excluded.curve, risk_lower = excluded.risk_lower, "
    "risk_upper = excluded.risk_upper, curve_lower = excluded.curve_lower, curve_upper = excluded.curve_upper, "
    "input_fingerprint = excluded.input_fingerprint, "
    "computed_at = excluded.computed_at WHERE risk_scores.input_fingerprint <> excluded.input_fingerprint"
)
UPSERT_SQLITE = (
    f"INSERT INTO risk_scores ({', '.join(_UPSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_UPSERT_COLUMNS))}) "
    + _ON_CONFLICT
)
UPSERT_POSTGRES = (
    f"INSERT INTO risk_scores ({', '.join(_UPSERT_COLUMNS)}) "
    "SELECT p, s, d, m, h, r, c::jsonb, f, %(now)s, rl, ru, cl::jsonb, cu::jsonb FROM unnest(%(p)b::bigint[], "
    "%(s)b::bigint[], %(d)b::date[], %(m)b::bigint[], %(h)b::int[], %(r)b::float8[], %(c)b::text[], %(f)b::text[], "
    "%(rl)b::float8[], %(ru)b::float8[], %(cl)b::text[], %(cu)b::text[]) "
    "AS t(p, s, d, m, h, r, c, f, rl, ru, cl, cu) " + _ON_CONFLICT
)


def upsert_scores(session: Session, rows: pd.DataFrame, computed_at: datetime) -> None:
    """Insert score rows; a row with the same key and another fingerprint is replaced, an identical one kept.

    ``rows`` has the SCORE_COLUMNS but computed_at, and may have the INTERVAL_COLUMNS (missing ones: NULL).

    Raw driver calls (one unnest() statement on PostgreSQL, executemany on SQLite): per-row ORM/Core parameter
    processing would cost more than the scoring itself.
    """
    if rows.empty:
        return
    scan = [None if v is None else int(v) for v in rows["scan_id"]]
    interval = {
        c: ([None if v is None or v != v else v for v in rows[c].tolist()] if c in rows.columns else [None] * len(rows))
        for c in INTERVAL_COLUMNS
    }
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
            "rl": interval["risk_lower"],
            "ru": interval["risk_upper"],
            "cl": interval["curve_lower"],
            "cu": interval["curve_upper"],
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
                *(interval[c] for c in INTERVAL_COLUMNS),
                strict=True,
            )
        ),
    )

"""Risk score history and what `metatrack alerts` reads: replaced scores, scan risks, RECIST responses seen.

rescore calls :func:`record_score_changes` in each batch's transaction, before the upsert replaces the rows; the
alerts use case reads :func:`scan_risks` and :func:`recist_changes` after :func:`record_recist` has noted the
RECIST responses it had not seen.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, insert, select
from sqlalchemy.orm import Session

from db.jobs import db_timestamp, executemany
from db.models import ModelVersion, Patient, RecistAssessment, RecistSeen, RiskScore, RiskScoreChange, Scan
from db.registry import promoted_models
from db.types import table_of
from db.visits import SQL_IN_CHUNK

INSERT_HISTORY = (
    "INSERT INTO risk_score_history (patient_id, scan_id, as_of_date, horizon_months, old_model_version_id, "
    "new_model_version_id, old_risk, new_risk, reason, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SCAN_PROCESSED = "scan-processed"  # an alert's reason when no change of its score is recorded: the scan's own score
INSERT_HISTORY_POSTGRES = (
    "INSERT INTO risk_score_history (patient_id, scan_id, as_of_date, horizon_months, old_model_version_id, "
    "new_model_version_id, old_risk, new_risk, reason, changed_at) SELECT p, s, d, h, o, m, r, n, c, %(t)s "
    "FROM unnest(%(p)b::bigint[], %(s)b::bigint[], %(d)b::date[], %(h)b::int[], %(o)b::bigint[], %(m)b::bigint[], "
    "%(r)b::float8[], %(n)b::float8[], %(c)b::text[]) AS t(p, s, d, h, o, m, r, n, c)"
)
# Re-scoring the same inputs in another batch moves a float32 model's risks by ~1e-7: not a change.
RISK_TOLERANCE = 1e-6


class ScoreChangeReason(enum.StrEnum):
    """Why rescore replaced a stored risk."""

    NEW_MODEL = "new-model"  # another model version was promoted for the endpoint
    NEW_SCAN = "new-scan"  # a calendar tick moved onto a scan ingested since
    REPROCESSING = "re-processing"  # the same model, other inputs: features re-computed, harmonised or corrected


def _existing_scores(session: Session, patient_ids: list[int], mv_ids: list[int]) -> pd.DataFrame:
    """Stored score rows of these patients under these model versions (plain columns: no timestamps to parse)."""
    cols = ["patient_id", "as_of_date", "horizon_months", "model_version_id", "risk", "fp"]
    parts = []
    for i in range(0, len(patient_ids), SQL_IN_CHUNK):
        q = select(
            RiskScore.patient_id,
            RiskScore.as_of_date,
            RiskScore.horizon_months,
            RiskScore.model_version_id,
            RiskScore.risk,
            RiskScore.input_fingerprint,
        ).where(RiskScore.patient_id.in_(patient_ids[i : i + SQL_IN_CHUNK]), RiskScore.model_version_id.in_(mv_ids))
        parts.append(pd.DataFrame(session.execute(q).all(), columns=cols))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def _tick_computed(session: Session, mv_id: int, patient_ids: list[int]) -> pd.DataFrame:
    """(patient_id, as_of_date, computed_at) of these patients' stored calendar ticks under one model version."""
    q = select(RiskScore.patient_id, RiskScore.as_of_date, RiskScore.computed_at).where(
        RiskScore.model_version_id == mv_id, RiskScore.scan_id.is_(None), RiskScore.patient_id.in_(patient_ids)
    )
    return pd.DataFrame(session.execute(q.distinct()).all(), columns=["patient_id", "as_of_date", "computed_at"])


def _scan_ingests(session: Session, patient_ids: list[int]) -> pd.DataFrame:
    """(patient_id, scan_date, ingested_at) of these patients' scans."""
    rows: list[Any] = []
    for i in range(0, len(patient_ids), SQL_IN_CHUNK):
        q = select(Scan.patient_id, Scan.scan_date, Scan.ingested_at).where(
            Scan.patient_id.in_(patient_ids[i : i + SQL_IN_CHUNK])
        )
        rows += session.execute(q).all()
    return pd.DataFrame(rows, columns=["patient_id", "scan_date", "ingested_at"])


def record_score_changes(session: Session, rows: pd.DataFrame, changed_at: datetime) -> int:
    """Write a `risk_score_history` row for every stored risk that the score rows `rows` are about to replace.

    Under the same model version a row with another input fingerprint is replaced by the upsert: recorded when
    the risk moves by more than :data:`RISK_TOLERANCE` (reason new-scan for a calendar tick when a scan dated
    before it was ingested after the old score, else re-processing). The first score of a key under a newly
    promoted model version supersedes the newest score of another version of the endpoint: always recorded
    (new-model). A row already stored with the same fingerprint (a retried write) records nothing. Returns the
    number of history rows written.
    """
    if rows.empty:
        return 0
    mv_ids = sorted({int(m) for m in rows["model_version_id"]})
    endpoint_of = dict(
        session.execute(select(ModelVersion.id, ModelVersion.endpoint).where(ModelVersion.id.in_(mv_ids))).all()
    )
    versions = dict(
        session.execute(
            select(ModelVersion.id, ModelVersion.endpoint).where(ModelVersion.endpoint.in_(set(endpoint_of.values())))
        ).all()
    )
    patients = sorted({int(p) for p in rows["patient_id"]})
    old = _existing_scores(session, patients, sorted(versions))
    if old.empty:
        return 0
    old["endpoint"] = old["model_version_id"].map(versions)
    cols = ["patient_id", "scan_id", "as_of_date", "horizon_months", "model_version_id", "risk", "input_fingerprint"]
    new = rows[cols].assign(endpoint=rows["model_version_id"].map(endpoint_of))
    key = ["patient_id", "as_of_date", "horizon_months"]
    same = new.merge(old.drop(columns="endpoint"), on=[*key, "model_version_id"], how="left", suffixes=("", "_old"))
    first = new[same["fp"].isna().to_numpy()]  # no row of this version yet: a newly promoted model's first score
    same = same[same["fp"].notna() & (same["fp"] != same["input_fingerprint"])]
    same = same[(same["risk"] - same["risk_old"]).abs() > RISK_TOLERANCE]
    same = same.assign(old_model_version_id=same["model_version_id"], reason=ScoreChangeReason.REPROCESSING.value)
    ticks = same[same["scan_id"].isna()]
    for mv_id, group in ticks.groupby("model_version_id"):
        pids = sorted({int(p) for p in group["patient_id"]})
        hit = group.reset_index().merge(_tick_computed(session, int(mv_id), pids), on=["patient_id", "as_of_date"])
        hit = hit.merge(_scan_ingests(session, pids), on="patient_id")
        hit = hit[(hit["scan_date"] < hit["as_of_date"]) & (hit["ingested_at"] > hit["computed_at"])]
        same.loc[sorted(set(hit["index"])), "reason"] = ScoreChangeReason.NEW_SCAN.value
    # the newest other version (highest id) that scored the key is the one replaced
    others = old.rename(columns={"model_version_id": "old_model_version_id", "risk": "risk_old"})
    moved = first.merge(others, on=[*key, "endpoint"])
    moved = moved[moved["old_model_version_id"] != moved["model_version_id"]]
    moved = moved.sort_values("old_model_version_id", kind="stable").drop_duplicates(key, keep="last")
    moved = moved.assign(reason=ScoreChangeReason.NEW_MODEL.value)
    out = pd.concat([same, moved], ignore_index=True)
    if out.empty:
        return 0
    columns = [
        out["patient_id"].astype(int).tolist(),
        [None if pd.isna(v) else int(v) for v in out["scan_id"]],
        out["as_of_date"].tolist(),
        out["horizon_months"].astype(int).tolist(),
        out["old_model_version_id"].astype(int).tolist(),
        out["model_version_id"].astype(int).tolist(),
        out["risk_old"].astype(float).tolist(),
        out["risk"].astype(float).tolist(),
        out["reason"].astype(str).tolist(),
    ]
    # raw driver calls, as db.scores.upsert_scores: Core's per-row parameter processing would cost seconds
    if session.get_bind().dialect.name == "postgresql":
        params = dict(zip("psdhomrnc", columns, strict=True)) | {"t": changed_at}
        cursor = session.connection().connection.cursor()  # same transaction
        try:
            cursor.execute(INSERT_HISTORY_POSTGRES, params)
        finally:
            cursor.close()
    else:
        columns[2] = [d.isoformat() for d in columns[2]]
        when = db_timestamp(session, changed_at)
        executemany(session, INSERT_HISTORY, list(zip(*columns, [when] * len(out), strict=True)))
    return len(out)


def score_changes(session: Session, patient_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """The `risk_score_history` rows (of some patients, or all), oldest first, with the patient's pseudonym."""
    q = (
        select(
            Patient.external_id,
            RiskScoreChange.patient_id,
            RiskScoreChange.scan_id,
            RiskScoreChange.as_of_date,
            RiskScoreChange.horizon_months,
            RiskScoreChange.old_model_version_id,
            RiskScoreChange.new_model_version_id,
            RiskScoreChange.old_risk,
            RiskScoreChange.new_risk,
            RiskScoreChange.reason,
            RiskScoreChange.changed_at,
        )
        .join(Patient, Patient.id == RiskScoreChange.patient_id)
        .order_by(RiskScoreChange.id)
    )
    if patient_ids is not None:
        q = q.where(RiskScoreChange.patient_id.in_(list(patient_ids)))
    res = session.execute(q)
    return pd.DataFrame(res.all(), columns=list(res.keys()))


def scan_risks(session: Session, endpoint: str | None, horizon_months: int) -> pd.DataFrame:
    """Risk at each scored scan under each promoted model (one endpoint, or all), sorted by endpoint, patient, date.

    Columns: endpoint, model_version_id, external_id, patient_id, scan_id, as_of_date, risk, known_at (when the
    value became what it is: the newest change recorded for the row, else the earlier of when the scan was
    processed and when the row was computed), reason (of that change; :data:`SCAN_PROCESSED` when none is recorded).
    """
    cols = [
        "endpoint",
        "model_version_id",
        "external_id",
        "patient_id",
        "scan_id",
        "as_of_date",
        "risk",
        "known_at",
        "reason",
    ]
    parts = []
    for mv in promoted_models(session, endpoint):
        last = (
            select(
                RiskScoreChange.patient_id,
                RiskScoreChange.as_of_date,
                func.max(RiskScoreChange.id).label("change_id"),
            )
            .where(RiskScoreChange.new_model_version_id == mv.id, RiskScoreChange.horizon_months == horizon_months)
            .group_by(RiskScoreChange.patient_id, RiskScoreChange.as_of_date)
            .subquery()
        )
        q = (
            select(
                Patient.external_id,
                RiskScore.patient_id,
                RiskScore.scan_id,
                RiskScore.as_of_date,
                RiskScore.risk,
                Scan.processed_at,
                RiskScore.computed_at,
                RiskScoreChange.changed_at,
                RiskScoreChange.reason,
            )
            .join(Patient, Patient.id == RiskScore.patient_id)
            .join(Scan, Scan.id == RiskScore.scan_id)
            .outerjoin(last, and_(last.c.patient_id == RiskScore.patient_id, last.c.as_of_date == RiskScore.as_of_date))
            .outerjoin(RiskScoreChange, RiskScoreChange.id == last.c.change_id)
            .where(RiskScore.model_version_id == mv.id, RiskScore.horizon_months == horizon_months)
            .order_by(RiskScore.patient_id, RiskScore.as_of_date)
        )
        df = pd.DataFrame(
            session.execute(q).all(),
            columns=[
                "external_id",
                "patient_id",
                "scan_id",
                "as_of_date",
                "risk",
                "processed",
                "computed",
                "changed",
                "reason",
            ],
        )
        if df.empty:
            continue
        # re-processing moves processed_at; a score it left unchanged was known since it was first computed
        first_known = [
            c if p is None or pd.isna(p) or (c is not None and c < p) else p
            for p, c in zip(df["processed"], df["computed"], strict=True)
        ]
        changed = df["changed"].notna().to_numpy()
        df["known_at"] = np.where(changed, df["changed"], first_known)
        df["reason"] = df["reason"].where(changed, SCAN_PROCESSED)
        parts.append(df.assign(endpoint=mv.endpoint, model_version_id=mv.id)[cols])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def record_recist(session: Session, seen_at: datetime) -> int:
    """Note every scan date's RECIST response not seen before, or seen with another value; returns rows added.

    Keyed by patient and scan date (scan rows may be re-created); a response seen for the first time is recorded
    with no old value (not a change).
    """
    current = session.execute(
        select(Scan.patient_id, Scan.scan_date, RecistAssessment.response).join(
            RecistAssessment, RecistAssessment.scan_id == Scan.id
        )
    ).all()
    newest = (
        select(func.max(RecistSeen.id).label("id")).group_by(RecistSeen.patient_id, RecistSeen.scan_date).subquery()
    )
    seen = {
        (p, d): r
        for p, d, r in session.execute(
            select(RecistSeen.patient_id, RecistSeen.scan_date, RecistSeen.response).join(
                newest, newest.c.id == RecistSeen.id
            )
        )
    }
    rows = [
        {"patient_id": p, "scan_date": d, "old_response": seen.get((p, d)), "response": r, "seen_at": seen_at}
        for p, d, r in current
        if seen.get((p, d)) != r
    ]
    if rows:
        session.execute(insert(table_of(RecistSeen)), rows)
    return len(rows)


def recist_changes(session: Session, since: datetime | None) -> pd.DataFrame:
    """RECIST responses that replaced another one for the same scan date (seen at or after `since`)."""
    q = (
        select(
            Patient.external_id,
            RecistSeen.scan_date,
            RecistSeen.old_response,
            RecistSeen.response,
            RecistSeen.seen_at,
        )
        .join(Patient, Patient.id == RecistSeen.patient_id)
        .where(RecistSeen.old_response.is_not(None))
        .order_by(Patient.external_id, RecistSeen.scan_date, RecistSeen.id)
    )
    if since is not None:
        q = q.where(RecistSeen.seen_at >= since)
    res = session.execute(q)
    return pd.DataFrame(res.all(), columns=list(res.keys()))

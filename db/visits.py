"""The longitudinal visit table and the clinical events, read from (and, for events, written to) the database.

One visit is one PROCESSED scan; times are days since the patient's baseline (the patient's earliest scan).
Reads are Core selects plus a pandas pivot, so a 10,000-patient cohort loads in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import ClinicalEvent, EventKind, Patient, Scan, ScanState
from tracker.errors import MetatrackError

VISIT_KEY_COLUMNS = ("patient_id", "db_patient_id", "scan_id", "scan_date", "time_days")
MODEL_SKIP_COLUMNS = ("db_patient_id", "scan_id", "scan_date")  # bookkeeping, never model features
SQL_IN_CHUNK = 5000  # ids per IN (...) list, well under SQLite's variable limit


def _chunks(values: Sequence, size: int = SQL_IN_CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _patient_filter(session: Session, patient_ids: Iterable[int | str] | None) -> list[int] | None:
    """DB ids for a list of DB ids (ints) or pseudonyms (strings); None = every patient."""
    if patient_ids is None:
        return None
    ids = list(patient_ids)
    if not ids or all(isinstance(i, int | np.integer) for i in ids):
        return [int(i) for i in ids]
    out: list[int] = []
    for part in _chunks([str(i) for i in ids]):
        out += list(session.scalars(select(Patient.id).where(Patient.external_id.in_(part))))
    return out


def _raw_rows(session: Session, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """Plain tuples straight from the driver, on the session's connection (same transaction)."""
    if session.get_bind().dialect.name != "sqlite":
        sql = sql.replace("?", "%s")
    cursor = session.connection().connection.cursor()
    try:
        cursor.execute(sql, tuple(params))
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _in_ids(session: Session, column: str, db_ids: Sequence[int], params: list[Any]) -> str:
    """`column IN (...)`: one array parameter on PostgreSQL, an inline list of ints on SQLite (no 999-variable
    limit; ints only, so inlining is safe). Appends to `params` as needed."""
    if session.get_bind().dialect.name == "postgresql":
        params.append([int(i) for i in db_ids])
        return f"{column} = ANY(?::int[])"
    return f"{column} IN ({', '.join(str(int(i)) for i in db_ids) or 'NULL'})"


def _scan_rows(session: Session, db_ids: Sequence[int] | None) -> list[tuple]:
    """(pseudonym, patient id, scan id, scan date, state) of every scan of the patients (no state filter: on
    SQLite that would walk the state index over every scan instead of the patients' own)."""
    sql = (
        "SELECT p.external_id, s.patient_id, s.id, s.scan_date, s.state FROM scans s "
        "JOIN patients p ON p.id = s.patient_id"
    )
    params: list[Any] = []
    if db_ids is not None:
        sql += " WHERE " + _in_ids(session, "s.patient_id", db_ids, params)
    return _raw_rows(session, sql, params)


def _feature_rows(session: Session, db_ids: Sequence[int] | None, tags: Sequence[str] | None) -> list[tuple]:
    """(scan_id, tag, value) rows as plain tuples straight from the driver (the bulk of a visit table's data)."""
    if tags is not None and not tags:
        return []
    where: list[str] = []
    params: list[Any] = []
    if db_ids is not None:
        where.append(_in_ids(session, "patient_id", db_ids, params))
    if tags is not None:
        where.append(f"tag IN ({', '.join('?' * len(tags))})")
        params += [str(t) for t in tags]
    sql = "SELECT scan_id, tag, value FROM patient_features" + (" WHERE " + " AND ".join(where) if where else "")
    return _raw_rows(session, sql, params)


def baseline_dates(session: Session, db_ids: list[int] | None = None) -> pd.Series:
    """Baseline date (earliest scan of any state) per DB patient id."""
    q = select(Scan.patient_id, func.min(Scan.scan_date)).group_by(Scan.patient_id)
    rows: list = []
    if db_ids is None:
        rows = list(session.execute(q))
    else:
        for part in _chunks(db_ids):
            rows += list(session.execute(q.where(Scan.patient_id.in_(part))))
    return pd.Series({int(p): d for p, d in rows}, dtype=object)


def visit_table(
    session: Session, patient_ids: Iterable[int | str] | None = None, tags: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per processed scan: patient_id (pseudonym), db_patient_id, scan_id, scan_date, time_days, features.

    Parameters
    ----------
    patient_ids : DB ids (ints) or pseudonyms (strings) to restrict to; None = every patient.
    tags : patient_features tags to return as columns (missing ones are all-NaN columns); None = every tag.

    Rows are sorted by patient and date; feature columns are sorted by name.
    """
    db_ids = _patient_filter(session, patient_ids)
    scan_rows: list = []
    feat_rows: list = []
    for part in [None] if db_ids is None else _chunks(db_ids):
        scan_rows += _scan_rows(session, part)
        feat_rows += _feature_rows(session, part, tags)
    scans = pd.DataFrame.from_records(
        scan_rows, columns=["patient_id", "db_patient_id", "scan_id", "scan_date", "state"]
    )
    stamps = pd.to_datetime(scans["scan_date"])
    scans["scan_date"] = stamps.dt.date
    first = stamps.groupby(scans["db_patient_id"]).transform("min")
    scans["time_days"] = (stamps - first).dt.days.astype(float)
    scans = scans[scans["state"] == ScanState.PROCESSED.value].drop(columns="state")
    feats = pd.DataFrame.from_records(feat_rows, columns=["scan_id", "tag", "value"])
    if len(feats):
        wide = feats.pivot(index="scan_id", columns="tag", values="value").astype(float)
        wide = wide[sorted(wide.columns)]
        wide.columns.name = None
        out = scans.merge(wide, left_on="scan_id", right_index=True, how="left")
    else:
        out = scans
    for t in tags or ():
        if t not in out.columns:
            out[t] = np.nan
    out = out.sort_values(["patient_id", "time_days"], kind="stable").reset_index(drop=True)
    out["db_patient_id"] = out["db_patient_id"].astype(np.int64)
    out["scan_id"] = out["scan_id"].astype(np.int64)
    return out


def model_inputs(visits: pd.DataFrame) -> pd.DataFrame:
    """A visit table without the bookkeeping columns (scan ids, dates), as the risk model reads it."""
    return visits.drop(columns=[c for c in MODEL_SKIP_COLUMNS if c in visits.columns])


def first_event_dates(
    session: Session, endpoint: str, db_ids: list[int] | None = None, on_or_before: date | None = None
) -> dict[int, date]:
    """Date of each patient's first event of kind `endpoint` (optionally only events on/before a date)."""
    kind = _event_kind(endpoint, "endpoint")
    q = (
        select(ClinicalEvent.patient_id, func.min(ClinicalEvent.event_date))
        .where(ClinicalEvent.kind == kind)
        .group_by(ClinicalEvent.patient_id)
    )
    if on_or_before is not None:
        q = q.where(ClinicalEvent.event_date <= on_or_before)
    rows: list = []
    if db_ids is None:
        rows = list(session.execute(q))
    else:
        for part in _chunks(db_ids):
            rows += list(session.execute(q.where(ClinicalEvent.patient_id.in_(part))))
    return {int(p): d for p, d in rows}


def event_table(session: Session, endpoint: str = "metastasis") -> pd.DataFrame:
    """patient_id (pseudonym), time_days, event: the first `endpoint` event, else censoring.

    Censoring is at the later of the last processed scan and the last "censored" event. Times are days since the
    baseline scan; patients without scans, and patients whose event precedes their baseline, are left out.
    """
    kind = _event_kind(endpoint, "endpoint")
    if kind is EventKind.CENSORED:
        raise MetatrackError("endpoint 'censored' is not an event; use metastasis, progression or death")
    base = baseline_dates(session)
    last_scan = dict(
        session.execute(
            select(Scan.patient_id, func.max(Scan.scan_date))
            .where(Scan.state == ScanState.PROCESSED)
            .group_by(Scan.patient_id)
        ).all()
    )
    last_censor = dict(
        session.execute(
            select(ClinicalEvent.patient_id, func.max(ClinicalEvent.event_date))
            .where(ClinicalEvent.kind == EventKind.CENSORED)
            .group_by(ClinicalEvent.patient_id)
        ).all()
    )
    first_event = first_event_dates(session, kind.value)
    names = dict(session.execute(select(Patient.id, Patient.external_id)).all())
    rows = []
    for pid, b in base.items():
        if pid in first_event:
            end, flag = first_event[pid], 1
        else:
            cands = [d for d in (last_scan.get(pid), last_censor.get(pid)) if d is not None]
            if not cands:
                continue
            end, flag = max(cands), 0
        days = (end - b).days
        if days < 0:
            continue
        rows.append((names[pid], float(days), flag))
    out = pd.DataFrame(rows, columns=["patient_id", "time_days", "event"])
    out["event"] = out["event"].astype(int)
    return out.sort_values("patient_id", kind="stable").reset_index(drop=True)


def _event_kind(value: str, what: str) -> EventKind:
    try:
        return EventKind(str(value).strip().lower())
    except ValueError as exc:
        allowed = ", ".join(k.value for k in EventKind)
        raise MetatrackError(f"{what} {value!r} is not an event kind ({allowed})") from exc


def event_row_date(row: pd.Series, line: int, base: date | None) -> date:
    """An events row's date: `event_date` or `date`, else `time_days` after `base`; `line` names the CSV line."""
    for col in ("event_date", "date"):
        if col in row.index and pd.notna(row[col]):
            try:
                return pd.Timestamp(str(row[col])).date()
            except (ValueError, TypeError) as exc:
                raise MetatrackError(f"events row {line}: unreadable {col} {row[col]!r}") from exc
    if "time_days" in row.index and pd.notna(row["time_days"]):
        try:
            days = float(row["time_days"])
        except (ValueError, TypeError) as exc:
            raise MetatrackError(f"events row {line}: time_days {row['time_days']!r} is not a number") from exc
        if base is None:
            raise MetatrackError(f"events row {line}: time_days needs a baseline scan, patient has no scans")
        return base + timedelta(days=round(days))
    raise MetatrackError(f"events row {line}: needs event_date, date or time_days")


def import_events(
    session: Session, table: pd.DataFrame, endpoint: str = "metastasis", source: str | None = None
) -> int:
    """Add clinical events from a table; returns the number of new rows (rows already present are skipped).

    Columns: patient_id, then `kind` or `event` (1 -> `endpoint`, 0 -> censored), then `event_date`/`date` or
    `time_days` (days since the patient's baseline scan). Any bad row raises naming it (line numbers count the
    CSV header as line 1); the caller's transaction then rolls everything back.
    """
    if "patient_id" not in table.columns:
        raise MetatrackError(f"events: missing column 'patient_id' (have {list(table.columns)})")
    if "kind" not in table.columns and "event" not in table.columns:
        raise MetatrackError("events: need a 'kind' column or an 'event' column (0/1)")
    if not {"event_date", "date", "time_days"} & set(table.columns):
        raise MetatrackError("events: need an 'event_date', 'date' or 'time_days' column")
    default_kind = _event_kind(endpoint, "--endpoint")
    names = sorted({str(p) for p in table["patient_id"]})
    ids: dict[str, int] = {}
    for part in _chunks(names):
        ids.update(session.execute(select(Patient.external_id, Patient.id).where(Patient.external_id.in_(part))).all())
    base = baseline_dates(session, sorted(ids.values())) if ids else pd.Series(dtype=object)
    existing: set[tuple[Any, ...]] = set(
        session.execute(
            select(ClinicalEvent.patient_id, ClinicalEvent.kind, ClinicalEvent.event_date).where(
                ClinicalEvent.patient_id.in_(list(ids.values()) or [-1])
            )
        ).all()
    )
    new: list[ClinicalEvent] = []
    for i, (_, row) in enumerate(table.iterrows()):
        line = i + 2
        name = str(row["patient_id"])
        if name not in ids:
            raise MetatrackError(f"events row {line}: unknown patient {name!r}")
        pid = ids[name]
        if "kind" in table.columns and pd.notna(row["kind"]):
            kind = _event_kind(row["kind"], f"events row {line}: kind")
        else:
            flag = row.get("event")
            if flag not in (0, 1, "0", "1", True, False):
                raise MetatrackError(f"events row {line}: event must be 0 or 1, got {flag!r}")
            kind = default_kind if int(flag) == 1 else EventKind.CENSORED
        day = event_row_date(row, line, base.get(pid))
        key = (pid, kind, day)
        if key in existing:
            continue
        existing.add(key)
        new.append(ClinicalEvent(patient_id=pid, kind=kind, event_date=day, source=source))
    session.add_all(new)
    session.flush()
    return len(new)

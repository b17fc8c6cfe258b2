"""Alerts: patients whose risk crossed a threshold or rose since their previous scan, or whose RECIST response
changed after re-processing or a correction (`metatrack alerts`).

Risk alerts are a pure query over the stored scores of the promoted models: an alert at a scan is known from the
moment its risk became what it is (the scan's processing, or the newest recorded change of that score:
`db.alerts.scan_risks`), and `since` keeps those known on or after that day. RECIST changes need a memory: each
call first notes the responses it has not seen (`recist_history`), and a response that replaced another one is an
alert from the moment it was first seen. So the same call twice lists the same alerts. A scheduled job that must
list each alert once passes `--since-file`: the check time of each run is the next run's `since`.
"""

from __future__ import annotations

import enum
import os
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tracker.errors import MetatrackError

if TYPE_CHECKING:
    from sqlalchemy import Engine

DEFAULT_HORIZON_MONTHS = 12


class AlertKind(enum.StrEnum):
    """What an alert says."""

    RISK_ABOVE = "risk-above"  # the risk is above the threshold, and was not at the previous scan (or none)
    RISE = "rise"  # the risk rose by more than the given amount since the previous scan
    RECIST = "recist"  # a scan's RECIST response changed (re-processing or a target correction)


@dataclass(frozen=True)
class Alert:
    """One alert: the patient's pseudonym, the scan date it is about and the values before and after."""

    patient: str
    kind: AlertKind
    scan_date: date
    previous_date: date | None  # the previous scan (risk alerts); None for RECIST
    old: float | str | None  # previous scan's risk, or the RECIST response before
    new: float | str
    endpoint: str | None
    horizon_months: int | None
    reason: str  # scan-processed, or the recorded change (re-processing, new-model, new-scan), or recist-changed
    known_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"kind": self.kind.value}


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def risk_alerts(
    table: pd.DataFrame, risk_above: float | None, rise_above: float | None, horizon_months: int
) -> list[Alert]:
    """Threshold crossings and rises between consecutive scans of `db.alerts.scan_risks`' table (pure).

    A crossing is a risk above `risk_above` at a scan whose previous scan (if any) was at or below it; a rise is a
    risk more than `rise_above` above the previous scan's.
    """
    if table.empty or (risk_above is None and rise_above is None):
        return []
    t = table.sort_values(["endpoint", "patient_id", "as_of_date"], kind="stable").reset_index(drop=True)
    risk = t["risk"].to_numpy(dtype=np.float64)
    group = list(zip(t["endpoint"], t["patient_id"], strict=True))
    has_prev = np.array([i > 0 and group[i] == group[i - 1] for i in range(len(t))], dtype=bool)
    prev = np.where(has_prev, np.r_[np.nan, risk[:-1]], np.nan)
    out: list[Alert] = []
    for i in range(len(t)):
        kinds = []
        if risk_above is not None and risk[i] > risk_above and not (has_prev[i] and prev[i] > risk_above):
            kinds.append(AlertKind.RISK_ABOVE)
        if rise_above is not None and has_prev[i] and risk[i] - prev[i] > rise_above:
            kinds.append(AlertKind.RISE)
        for kind in kinds:
            out.append(
                Alert(
                    patient=str(t.at[i, "external_id"]),
                    kind=kind,
                    scan_date=t.at[i, "as_of_date"],
                    previous_date=t.at[i - 1, "as_of_date"] if has_prev[i] else None,
                    old=float(prev[i]) if has_prev[i] else None,
                    new=float(risk[i]),
                    endpoint=str(t.at[i, "endpoint"]),
                    horizon_months=horizon_months,
                    reason=str(t.at[i, "reason"]),
                    known_at=_as_utc(pd.Timestamp(t.at[i, "known_at"]).to_pydatetime()),
                )
            )
    return out


def list_alerts(
    engine: Engine,
    since: date | datetime | None = None,
    risk_above: float | None = None,
    rise_above: float | None = None,
    endpoint: str | None = None,
    horizon_months: int = DEFAULT_HORIZON_MONTHS,
) -> tuple[list[Alert], datetime]:
    """Note the RECIST responses not seen before, then list the alerts known on or after `since` (a UTC day, or
    a time) and before this call's check time; returns them and that time (the next call's `since` for a job
    that lists each alert once: :func:`read_since_file`).

    Sorted by patient, scan date and kind. `endpoint` restricts the risk alerts to that endpoint's model.
    """
    from db.alerts import recist_changes, record_recist, scan_risks
    from db.session import session_scope

    if risk_above is not None and not 0.0 <= risk_above < 1.0:
        raise MetatrackError(f"--risk-above {risk_above}: a risk between 0 and 1 is expected")
    if rise_above is not None and not 0.0 <= rise_above < 1.0:
        raise MetatrackError(f"--rise-above {rise_above}: a risk difference between 0 and 1 is expected")
    if isinstance(since, datetime):
        start: datetime | None = _as_utc(since)
    else:
        start = datetime.combine(since, time.min, tzinfo=UTC) if since is not None else None
    with session_scope(engine) as s:
        record_recist(s, datetime.now(UTC))
    checked_at = datetime.now(UTC)  # after the responses just noted, before the reads
    with session_scope(engine) as s:
        table = scan_risks(s, endpoint, horizon_months)
        recist = recist_changes(s, start)
    if endpoint is not None and table.empty:
        from tracker.workflows.models import has_promoted

        if not has_promoted(engine, endpoint):
            raise MetatrackError(f"--endpoint {endpoint}: no promoted model for this endpoint")
    alerts = risk_alerts(table, risk_above, rise_above, horizon_months)
    alerts += [
        Alert(
            patient=str(r.external_id),
            kind=AlertKind.RECIST,
            scan_date=r.scan_date,
            previous_date=None,
            old=str(r.old_response),
            new=str(r.response),
            endpoint=None,
            horizon_months=None,
            reason="recist-changed",
            known_at=_as_utc(r.seen_at),
        )
        for r in recist.itertuples(index=False)
    ]
    alerts = [a for a in alerts if (start is None or a.known_at >= start) and a.known_at < checked_at]
    order = {k: i for i, k in enumerate(AlertKind)}
    return sorted(alerts, key=lambda a: (a.patient, a.scan_date, order[a.kind], a.endpoint or "")), checked_at


def read_since_file(path: Path) -> datetime | None:
    """The check time a previous run wrote to `path` (:func:`write_since_file`); None when there is no file yet."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MetatrackError(f"--since-file {path}: cannot be read ({exc.strerror})") from exc
    try:
        return _as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise MetatrackError(f"--since-file {path}: holds {text[:40]!r}, not an ISO time written by alerts") from None


def write_since_file(path: Path, checked_at: datetime) -> None:
    """Write the check time to `path` (private, replaced whole: a killed run leaves the previous time)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(checked_at.isoformat() + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MetatrackError(f"--since-file {path}: cannot be written ({exc.strerror})") from exc

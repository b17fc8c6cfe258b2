"""`metatrack alerts`: patients whose risk crossed a threshold or rose since their previous scan, or whose RECIST
response changed (registered on the root app in cli/main.py)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer

from cli import output
from cli.risk import JsonOpt, _state, parse_horizon
from tracker.errors import MetatrackError


def alerts(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only alerts known from this UTC day (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM:SSZ) on."
        ),
    ] = None,
    since_file: Annotated[
        Path | None,
        typer.Option(
            "--since-file",
            help="Only alerts known since the time this file holds (none: all), then write this run's check time "
            "there: a scheduled job lists each alert once.",
        ),
    ] = None,
    risk_above: Annotated[
        float | None, typer.Option("--risk-above", help="Alert when the risk crosses above this value (0-1).")
    ] = None,
    rise_above: Annotated[
        float | None,
        typer.Option("--rise-above", help="Alert when the risk rose by more than this since the previous scan."),
    ] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="Only this endpoint's risk.")] = None,
    horizon: Annotated[str, typer.Option("--horizon", help="Risk horizon: 12, 12m or 1y.")] = "12",
    as_json: JsonOpt = False,
) -> None:
    """List risk and RECIST alerts (idempotent: the same call lists the same alerts; see docs/scheduling.md)."""
    from tracker.workflows.alerts import list_alerts, read_since_file, write_since_file

    if since is not None and since_file is not None:
        raise typer.BadParameter("give --since or --since-file, not both")
    start = _parse_since(since) if since else read_since_file(since_file) if since_file else None
    found, checked_at = list_alerts(
        _state(ctx).engine(),
        since=start,
        risk_above=risk_above,
        rise_above=rise_above,
        endpoint=endpoint,
        horizon_months=parse_horizon(horizon),
    )
    rows = [a.as_dict() for a in found]
    if as_json:
        output.print_json(rows)
    elif not rows:
        output.log("no alerts")
    else:
        output.print_table(
            [r | {"old": _fmt(r["old"]), "new": _fmt(r["new"])} for r in rows],
            ["patient", "kind", "scan_date", "previous_date", "old", "new", "endpoint", "reason", "known_at"],
        )
    if since_file is not None:
        write_since_file(since_file, checked_at)  # after the output: a failed print lists them again next time


def _parse_since(value: str) -> date | datetime:
    """--since: a day YYYY-MM-DD (as everywhere), or an ISO time (UTC unless it carries an offset)."""
    from tracker.workflows.ingest import parse_date

    if "T" not in value:
        return parse_date(value, "--since")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise MetatrackError(f"--since {value!r}: not an ISO day (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM:SSZ)") from None


def _fmt(value: float | str | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else value

"""`metatrack alerts`: patients whose risk crossed a threshold or rose since their previous scan, or whose RECIST
response changed (registered on the root app in cli/main.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import output
from cli.risk import JsonOpt, _state, parse_horizon


def alerts(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option("--since", help="Only alerts known on or after this day, YYYY-MM-DD (UTC).")
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
    from tracker.workflows.alerts import list_alerts
    from tracker.workflows.ingest import parse_date

    day = parse_date(since, "--since") if since else None
    found = list_alerts(
        _state(ctx).engine(),
        since=day,
        risk_above=risk_above,
        rise_above=rise_above,
        endpoint=endpoint,
        horizon_months=parse_horizon(horizon),
    )
    rows = [a.as_dict() for a in found]
    if as_json:
        output.print_json(rows)
        return
    if not rows:
        output.log("no alerts")
        return
    output.print_table(
        [r | {"old": _fmt(r["old"]), "new": _fmt(r["new"])} for r in rows],
        ["patient", "kind", "scan_date", "previous_date", "old", "new", "endpoint", "reason", "known_at"],
    )


def _fmt(value: float | str | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else value

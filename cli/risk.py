"""Risk commands: `model ...` (train/predict/list/show/promote/retire/evaluate), `jobs ...`, `events import`,
and the top-level `train` (from the database) and `rescore`.

Registered on the root app in cli/main.py. torch, pandas and the survival package are imported inside commands.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli import output
from tracker.errors import MetatrackError

if TYPE_CHECKING:
    import pandas as pd

    from cli.context import AppState

model_app = typer.Typer(help="Risk models: train, predict, register, promote.", no_args_is_help=True)
jobs_app = typer.Typer(help="Background jobs (re-scoring).", no_args_is_help=True)
events_app = typer.Typer(help="Clinical events (metastasis, progression, death, censoring).", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
EndpointOpt = Annotated[str, typer.Option("--endpoint", help="Event kind the model predicts.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (same data + seed, same model).")]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", min=1, help="Maximum training epochs.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Model name (default: <kind>-<endpoint>).")]
KindOpt = Annotated[
    str,
    typer.Option(
        "--kind",
        help="Model kind: rnn (GRU ensemble), landmark-cox, blend (both, weight by inner CV) or auto (picked by "
        "inner CV).",
    ),
]
MONTHS_PER_YEAR = 12


def _state(ctx: typer.Context) -> AppState:
    return ctx.find_root().obj


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_csv(path)
    except FileNotFoundError as exc:
        raise MetatrackError(f"{what} file {path} does not exist") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MetatrackError(f"{what} file {path}: not a readable CSV ({exc})".splitlines()[0]) from exc


def parse_horizon(value: str) -> int:
    """'12', '12m' or '1y' -> months."""
    v = value.strip().lower()
    try:
        if v.endswith("y"):
            months = int(float(v[:-1]) * MONTHS_PER_YEAR)
        else:
            months = int(v[:-1] if v.endswith("m") else v)
    except ValueError as exc:
        raise MetatrackError(f"--horizon {value!r}: use months like 12, 12m or 1y") from exc
    if months <= 0:
        raise MetatrackError(f"--horizon {value!r} must be positive")
    return months


def _config(epochs: int | None, **extra: Any):
    from tracker.survival import SurvivalModelConfig

    kwargs: dict[str, Any] = dict(extra)
    if epochs is not None:
        kwargs.update(max_epochs=epochs, min_epochs=min(epochs, SurvivalModelConfig.min_epochs))
    return SurvivalModelConfig(**kwargs)


def _train_and_register(
    state: AppState,
    visits: pd.DataFrame,
    events: pd.DataFrame,
    endpoint: str,
    name: str | None,
    seed: int,
    epochs: int | None,
    as_json: bool,
    kind: str,
) -> None:
    from tracker.survival.data import check_user_tables
    from tracker.survival.kinds import model_kind
    from tracker.workflows import models

    model_kind(kind)  # an unknown kind fails before any training
    cfg = _config(epochs)
    check_user_tables(visits, events, cfg)
    steps = cfg.n_ensemble * cfg.max_epochs if kind == "rnn" else 0
    with output.progress("train", steps, state.progress and steps > 0) as advance:
        info = models.train(
            state.engine(),
            state.store(),
            visits,
            events,
            cfg,
            endpoint=endpoint,
            name=name,
            seed=seed,
            kind=kind,
            progress=lambda e, n, loss: advance(),
        )
    if as_json:
        output.print_json(info)
    else:
        output.print_table([{k: v for k, v in info.items() if k != "features"}])
        output.log(f"registered {info['model']} (state trained); `metatrack model promote {info['model']}` to use it")


@model_app.command("train")
def model_train(
    ctx: typer.Context,
    visits: Annotated[Path, typer.Option("--visits", help="CSV: patient_id, time_days or date, features.")],
    events: Annotated[
        Path, typer.Option("--events", help="CSV: patient_id, time_days or event_date/date, event (0/1).")
    ],
    endpoint: EndpointOpt = "metastasis",
    name: NameOpt = None,
    seed: SeedOpt = 0,
    epochs: EpochsOpt = None,
    kind: KindOpt = "rnn",
    as_json: JsonOpt = False,
) -> None:
    """Train a risk model on generic visit/event tables and register it."""
    _train_and_register(
        _state(ctx),
        _read_csv(visits, "visits"),
        _read_csv(events, "events"),
        endpoint,
        name,
        seed,
        epochs,
        as_json,
        kind,
    )


def train(
    ctx: typer.Context,
    endpoint: EndpointOpt = "metastasis",
    name: NameOpt = None,
    seed: SeedOpt = 0,
    epochs: EpochsOpt = None,
    kind: KindOpt = "rnn",
    as_json: JsonOpt = False,
) -> None:
    """Train a risk model on the database (processed scans' patient features and clinical events), register it."""
    from tracker.workflows import models

    state = _state(ctx)
    visits, events = models.database_tables(state.engine(), endpoint)
    _train_and_register(state, visits, events, endpoint, name, seed, epochs, as_json, kind)


@model_app.command("predict")
def model_predict(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", help="NAME or NAME:VERSION.")],
    visits: Annotated[Path, typer.Option("--visits", help="CSV: patient_id, time_days or date, features.")],
    horizon: Annotated[list[str] | None, typer.Option("--horizon", help="Horizon, e.g. 12m (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Risk within each horizon as of each patient's last visit in a CSV table."""
    from tracker.workflows import models

    state = _state(ctx)
    horizons = [parse_horizon(h) for h in horizon] if horizon else [6, 12, 24]
    table = _read_csv(visits, "visits")
    label, rm = models.load(state.engine(), state.store(), model)
    risks = rm.risk_at(table, horizons, interval=True)
    rows = []
    for (p, t), part in risks.groupby(["patient_id", "as_of_time_days"], sort=True):
        each = [
            {"horizon_months": float(h), "risk": float(r), "lower": float(lo), "upper": float(hi)}
            for h, r, lo, hi in part[["horizon_months", "risk", "lower", "upper"]].itertuples(index=False)
        ]
        rows.append(
            {"patient_id": p, "as_of_time_days": t, **{f"risk_{e['horizon_months']:g}m": e["risk"] for e in each}}
            | {"risks": each}
        )
    if as_json:
        output.print_json({"model": label, "horizons_months": horizons, "interval_level": 0.9, "predictions": rows})
    else:
        table_rows = [
            {
                "patient_id": r["patient_id"],
                "as_of_time_days": r["as_of_time_days"],
                **{
                    f"risk_{e['horizon_months']:g}m": f"{e['risk']:.3f} [{e['lower']:.3f}–{e['upper']:.3f}]"
                    for e in r["risks"]
                },
            }
            for r in rows
        ]
        output.print_table(table_rows, title=f"risk [90 % interval] as of the last visit ({label})")


@model_app.command("list")
def model_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Registered model versions."""
    from tracker.workflows import models

    rows = models.list_versions(_state(ctx).engine())
    output.print_json(rows) if as_json else output.print_table(rows)


@model_app.command("show")
def model_show(
    ctx: typer.Context, model: Annotated[str, typer.Argument(help="NAME or NAME:VERSION.")], as_json: JsonOpt = False
) -> None:
    """Everything about one model version."""
    from tracker.workflows import models

    info = models.show(_state(ctx).engine(), model)
    if as_json:
        output.print_json(info)
        return
    output.print_table([{"field": k, "value": v} for k, v in info.items()])


@model_app.command("promote")
def model_promote(ctx: typer.Context, model: Annotated[str, typer.Argument(help="NAME:VERSION.")]) -> None:
    """Make a version the one that scores its endpoint (the previous one goes back to trained)."""
    from tracker.workflows import models

    label, endpoint = models.promote(_state(ctx).engine(), model)
    output.log(f"promoted {label} for endpoint {endpoint}; `metatrack rescore` applies it")


@model_app.command("retire")
def model_retire(ctx: typer.Context, model: Annotated[str, typer.Argument(help="NAME:VERSION.")]) -> None:
    """Retire a version (a promoted one stops scoring its endpoint)."""
    from tracker.workflows import models

    output.log(f"retired {models.retire(_state(ctx).engine(), model)}")


@model_app.command("evaluate")
def model_evaluate(
    ctx: typer.Context,
    visits: Annotated[Path | None, typer.Option("--visits", help="CSV visits (default: the database).")] = None,
    events: Annotated[Path | None, typer.Option("--events", help="CSV events (with --visits).")] = None,
    endpoint: EndpointOpt = "metastasis",
    folds: Annotated[int, typer.Option("--folds", min=2)] = 5,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for CIs.")] = 200,
    seed: SeedOpt = 0,
    epochs: EpochsOpt = None,
    combined: Annotated[
        bool,
        typer.Option("--combined/--no-combined", help="Also the kinds blend and auto (an inner CV in every fold)."),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Cross-validated kinds side by side (rnn, landmark Cox, blend, auto) and the baseline Cox: C-index, Uno's C,
    Brier, calibration slope/intercept and error, with bootstrap CIs, and a reliability table."""
    from tracker.survival.evaluate import evaluate_report

    if (visits is None) != (events is None):
        raise MetatrackError("give both --visits and --events, or neither (then the database is used)")
    if visits is not None and events is not None:
        v, e = _read_csv(visits, "visits"), _read_csv(events, "events")
    else:
        from tracker.workflows import models

        v, e = models.database_tables(_state(ctx).engine(), endpoint)
    from tracker.survival.data import check_user_tables

    check_user_tables(v, e, _config(epochs))
    report = evaluate_report(
        v,
        e,
        _config(epochs),
        folds=folds,
        seed=seed,
        n_bootstrap=bootstrap,
        progress=lambda msg: output.log(msg),
        combined=combined,
    )
    rows = report["metrics"].to_dict(orient="records")
    rel = report["reliability"]
    if as_json:
        output.print_json({"metrics": rows, "reliability": rel, "auto_picks": report["auto_picks"]})
        return
    output.print_table(rows)
    output.print_table(
        [
            {"model": m, "decile": r["group"], "n": r["n"], "predicted": r["predicted"], "observed": r["observed"]}
            for m, table in rel["models"].items()
            for r in table
        ],
        title=f"reliability at {rel['horizon_months']:g} months from landmark {rel['landmark']} (observed: 1 - KM)",
    )
    if report["auto_picks"]:
        for landmark, picks in report["auto_picks"].items():
            output.log(f"auto picked at landmark {landmark}, per fold: {', '.join(picks)}")


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option("--state", help="queued, running, done or failed.")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Job kind, e.g. rescore.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The newest jobs and the count per state."""
    from tracker.workflows import models

    rows, counts = models.list_jobs(_state(ctx).engine(), state, kind, limit)
    if as_json:
        output.print_json({"counts": counts, "jobs": rows})
        return
    if not rows:
        output.log("no jobs" + (f" in state {state}" if state else ""))
        return
    output.print_table(
        [{k: v for k, v in r.items() if k != "payload"} for r in rows],
        title=" ".join(f"{k}={v}" for k, v in counts.items()),
    )


@jobs_app.command("retry")
def jobs_retry(
    ctx: typer.Context,
    job_id: Annotated[int | None, typer.Argument(help="Failed job to queue again.")] = None,
    all_failed: Annotated[bool, typer.Option("--all-failed", help="Queue every failed job again.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue failed jobs again (attempts start over); `metatrack rescore` then works them."""
    from tracker.workflows import models

    n = models.retry_jobs(_state(ctx).engine(), job_id, all_failed)
    output.print_json({"requeued": n}) if as_json else output.log(f"requeued {n} job(s)")


@events_app.command("import")
def events_import(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="CSV: patient_id, kind or event, event_date/date or time_days.")],
    endpoint: Annotated[str, typer.Option("--endpoint", help="Kind of rows with event = 1.")] = "metastasis",
    as_json: JsonOpt = False,
) -> None:
    """Import clinical events; all rows in one transaction (any bad row: nothing is imported)."""
    from tracker.workflows import models

    table = _read_csv(path, "events")
    n = models.add_events(_state(ctx).engine(), table, endpoint, source=path.name)
    info = {"imported": n, "skipped_existing": len(table) - n}
    output.print_json(info) if as_json else output.log(f"imported {n} event(s), {len(table) - n} already present")


def rescore(
    ctx: typer.Context,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="Only this endpoint's model.")] = None,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Calendar as-of date YYYY-MM-DD (default: 1st of this month).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Parallel workers (PostgreSQL only).")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Patients per batch/transaction.")] = 500,
    reclaim: Annotated[bool, typer.Option("--reclaim", help="Requeue every running job now (after a crash).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Bring every patient's risk scores up to date with the promoted models (idempotent, resumable)."""
    from tracker.workflows.models import has_promoted
    from tracker.workflows.rescore import rescore_all

    state = _state(ctx)
    day = _parse_date(as_of) if as_of else None
    engine, store = state.engine(), state.store()
    if not has_promoted(engine, endpoint):
        output.log("no promoted model" + (f" for endpoint {endpoint}" if endpoint else "") + ": nothing to score")
    bar: dict[str, Any] = {}

    def on_planned(total: int) -> None:
        cm = output.progress("rescore", total, state.progress)
        bar["cm"], bar["advance"] = cm, cm.__enter__()

    try:
        stats = rescore_all(
            engine,
            store,
            endpoint,
            day,
            workers=workers,
            batch_size=batch_size,
            reclaim=reclaim,
            progress=lambda n: bar["advance"](n),
            on_planned=on_planned,
            notify=output.log,
        )
    finally:
        if "cm" in bar:
            bar["cm"].__exit__(None, None, None)
    if as_json:
        output.print_json(stats)
        return
    output.print_table([{k: v for k, v in stats.items() if k != "errors"}])
    for e in stats["errors"]:
        output.log(f"failed: {e}")
    if stats["jobs_failed"]:
        raise MetatrackError(f"{stats['jobs_failed']} job(s) failed: see `metatrack jobs list --state failed`")


def _parse_date(value: str) -> date:
    """--as-of: YYYY-MM-DD as everywhere (a future tick is allowed: scores as of a later month)."""
    from tracker.workflows.ingest import parse_date

    return parse_date(value, "--as-of", future_ok=True)

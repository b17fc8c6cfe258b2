"""Risk models, clinical events and jobs: train (from tables or the database), register, promote, predict.

The registry's rows live in `db.registry`; the model files in the store. Loading a model file goes through the
survival package's process-wide cache (files are immutable, keyed by their sha256).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from db import jobs, registry
from db.session import session_scope
from db.visits import event_row_date, event_table, import_events, model_inputs, visit_table
from tracker.errors import MetatrackError
from tracker.segmentation import SEGMENTATION_ENDPOINT
from tracker.store import StoreUnit

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy import Engine

    from tracker.store import FileStore
    from tracker.survival import SurvivalModelConfig
    from tracker.survival.protocol import SurvivalModel

EpochProgress = Callable[[int, int, float], None]


def database_tables(engine: Engine, endpoint: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(visits, events) of the processed scans' patient features, restricted to patients with event rows."""
    with session_scope(engine) as s:
        visits = model_inputs(visit_table(s))
        events = event_table(s, endpoint)
    if visits.empty:
        raise MetatrackError("no processed scans in the database: nothing to train on")
    return visits[visits["patient_id"].isin(events["patient_id"])], events


def register(engine: Engine, store: FileStore, model: SurvivalModel, name: str, endpoint: str) -> dict[str, Any]:
    """Register a trained model (its file stored once by hash; removed again if the registration fails)."""
    with StoreUnit(store) as files, session_scope(engine) as s:
        mv = registry.register_model(s, files, model, name, endpoint)
        return {"model": f"{mv.name}:{mv.version}", "endpoint": endpoint, "features": mv.features, **mv.metrics}


def train(
    engine: Engine,
    store: FileStore,
    visits: pd.DataFrame,
    events: pd.DataFrame,
    cfg: SurvivalModelConfig,
    *,
    endpoint: str,
    name: str | None,
    seed: int,
    kind: str = "rnn",
    progress: EpochProgress | None = None,
) -> dict[str, Any]:
    """Train a risk model of ``kind`` (`tracker.survival.kinds.MODEL_KINDS`) on visit/event tables and register it
    (state "trained")."""
    from tracker.survival.kinds import model_kind

    events = event_times(visits, events, cfg)
    model = model_kind(kind).train(visits, events, cfg, seed=seed, progress=progress)
    return register(engine, store, model, name or f"{kind}-{endpoint}", endpoint)


def event_times(visits: pd.DataFrame, events: pd.DataFrame, cfg: SurvivalModelConfig) -> pd.DataFrame:
    """Events given by date (`event_date` or `date`, read as `events import` reads them) with their `time_days`
    from the patient's first visit date, day 0 of the visits' own times; other tables are returned as they are."""
    import pandas as pd

    pid, tcol = cfg.patient_col, cfg.time_col
    if tcol in events.columns or pid not in events.columns or not {"event_date", "date"} & set(events.columns):
        return events  # what is missing is said by the model's own checks
    if cfg.date_col not in visits.columns:
        raise MetatrackError(
            f"events: dates need a {cfg.date_col!r} column in the visits table (a patient's first visit is day 0); "
            f"or give the events a {tcol!r} column"
        )
    first = pd.to_datetime(visits[cfg.date_col], errors="coerce").groupby(visits[pid].astype(str)).min()
    days = []
    for i, (_, row) in enumerate(events.iterrows()):
        name = str(row[pid])
        if name not in first.index or pd.isna(first[name]):
            raise MetatrackError(f"events row {i + 2}: patient {name!r} has no dated visit")
        days.append(float((event_row_date(row, i + 2, None) - first[name].date()).days))
    return events.assign(**{tcol: days})


def load(engine: Engine, store: FileStore, spec: str) -> tuple[str, SurvivalModel]:
    """('name:version', model) for 'name[:version]' (the newest version by default)."""
    from tracker.survival.cache import cached_model

    with session_scope(engine) as s:
        mv = registry.get_version(s, spec)
        if mv.endpoint == SEGMENTATION_ENDPOINT:
            raise MetatrackError(
                f"model {mv.name}:{mv.version} is a segmentation model: use `metatrack segment apply --model "
                f"{mv.name}:{mv.version}`"
            )
        return f"{mv.name}:{mv.version}", cached_model(mv.file_sha256, lambda: registry.model_file_bytes(store, mv))


def list_versions(engine: Engine) -> list[dict[str, Any]]:
    with session_scope(engine) as s:
        return registry.list_models(s)


def show(engine: Engine, spec: str) -> dict[str, Any]:
    """Everything about one version, with its calibration: the recalibration's slope and intercept per horizon
    and the reliability of its inner cross-validation (kinds blend and auto), or a note that the kind has none."""
    with session_scope(engine) as s:
        info = registry.show_model(s, spec)
    metrics = info.get("metrics") or {}
    kind = (info.get("hyperparameters") or {}).get("kind", "rnn")
    info["calibration"] = metrics.get("calibration") or (
        f"none: kind {kind} is not recalibrated (kinds blend and auto are, on their inner cross-validation)"
    )
    return info


def promote(engine: Engine, spec: str) -> tuple[str, str]:
    """Promote a version; returns ('name:version', endpoint)."""
    with session_scope(engine) as s:
        mv = registry.promote(s, spec)
        return f"{mv.name}:{mv.version}", mv.endpoint


def retire(engine: Engine, spec: str) -> str:
    with session_scope(engine) as s:
        mv = registry.retire(s, spec)
        return f"{mv.name}:{mv.version}"


def has_promoted(engine: Engine, endpoint: str | None = None) -> bool:
    with session_scope(engine) as s:
        return bool(registry.promoted_models(s, endpoint))


def add_events(engine: Engine, table: pd.DataFrame, endpoint: str, source: str) -> int:
    """Import clinical events in one transaction (any bad row: nothing is imported); returns rows added."""
    with session_scope(engine) as s:
        return import_events(s, table, endpoint, source=source)


def list_jobs(engine: Engine, state: str | None, kind: str | None, limit: int) -> tuple[list[dict], dict[str, int]]:
    """(the newest jobs, the count per state)."""
    with session_scope(engine) as s:
        return jobs.list_jobs(s, state, kind, limit), jobs.counts(s, kind)


def retry_jobs(engine: Engine, job_id: int | None, all_failed: bool) -> int:
    with session_scope(engine) as s:
        return jobs.retry(s, job_id, all_failed)

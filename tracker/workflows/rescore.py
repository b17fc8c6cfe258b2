"""Re-scoring: find patients whose stored risk scores are stale, queue one job per patient, work the jobs.

For each promoted model (one per endpoint) a patient is expected to have a score for every horizon as of every
processed scan's date, plus a calendar tick (as-of = the first day of the current month, or a given date) when that
is later than the last scan and the patient has had no endpoint event by then. Every score row carries an input
fingerprint: sha256 over the model version, its features, the horizons, the tick date and the patient's visit rows
(scan ids, dates, feature values). A patient whose rows with the current fingerprint are not all present is stale.

The survival curve (the model's, seen from the as-of date) is stored on the 12-month row of each as-of date only
(on the smallest horizon's row when 12 is not among the horizons): see :func:`tracker.scoring.curve_row_horizon`.

Every risk gets its 90 % interval (``risk_lower``/``risk_upper``; ``curve_lower``/``curve_upper`` on the curve's
row) from the model (:mod:`tracker.survival.intervals`). A scan that needs review (its own review reasons or a
registration flagged for review) widens its interval, and that of a calendar tick scored from it, by
``REVIEW_WIDEN``; the review flags are part of the input fingerprint, so setting or clearing one rescores.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tracker.errors import MetatrackError
from tracker.scoring import (
    DEFAULT_HORIZONS,
    curve_row_horizon,
    month_start,
    months_between,
    risk_table,
    survival_at,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from tracker.store import FileStore
    from tracker.survival.protocol import SurvivalModel

JOB_KIND = "rescore"
DEFAULT_BATCH = 500
CURVE_DECIMALS = 6
INTERVAL_VERSION = 2  # in the fingerprint: scores with older interval widths are stale once (2: per-landmark kinds)
REVIEW_COLUMN = "needs_review"  # per visit: 1.0 when its scan needs review (set by the planner and the batch reader)
_PREDICT_LOCK = threading.Lock()  # torch thread settings are process-global: one prediction at a time


@dataclass
class WorkStats:
    """What a worker did."""

    batches: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    patients: int = 0
    rows_written: int = 0
    reclaimed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def add(self, other: WorkStats) -> None:
        for name in ("batches", "jobs_done", "jobs_failed", "patients", "rows_written", "reclaimed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "errors"} | {"errors": self.errors[:20]}


def default_as_of() -> date:
    """The calendar tick: the first day of the current (UTC) month."""
    return month_start(datetime.now(UTC).date())


@dataclass
class PatientPlan:
    """What one patient's scores should be: the tick date (or None) and the fingerprint of the inputs."""

    db_patient_id: int
    tick: date | None
    fingerprint: str
    n_rows: int


def plan_patients(
    visits: pd.DataFrame,
    features: Sequence[str],
    model_version_id: int,
    as_of: date,
    horizons: Sequence[int],
    event_dates: dict[int, date],
) -> list[PatientPlan]:
    """Expected score rows and input fingerprint per patient of a visit table (sorted by patient and time); a
    ``needs_review`` column (1.0 for a scan that needs review), where present, is part of the inputs."""
    if visits.empty:
        return []
    header = json.dumps(
        {
            "model_version_id": int(model_version_id),
            "features": list(features),
            "horizons": [int(h) for h in horizons],
            "interval": INTERVAL_VERSION,
        },
        sort_keys=True,
    ).encode()
    review = visits[REVIEW_COLUMN].to_numpy(dtype=np.float64) if REVIEW_COLUMN in visits else np.zeros(len(visits))
    pids = visits["db_patient_id"].to_numpy(dtype=np.int64)
    days = pd.to_datetime(visits["scan_date"]).to_numpy().astype("datetime64[D]").astype(np.int64)
    mat = np.column_stack(
        [
            visits["scan_id"].to_numpy(dtype=np.float64),
            days.astype(np.float64),
            review,
            visits[list(features)].to_numpy(dtype=np.float64) if features else np.zeros((len(visits), 0)),
        ]
    )
    mat = np.where(np.isnan(mat), np.nan, mat)  # one NaN bit pattern
    starts = np.flatnonzero(np.r_[True, pids[1:] != pids[:-1]])
    ends = np.r_[starts[1:], len(pids)]
    last_dates = visits["scan_date"].to_numpy()[ends - 1]
    out = []
    for s, e, last in zip(starts, ends, last_dates, strict=True):
        pid = int(pids[s])
        ev = event_dates.get(pid)
        tick = as_of if as_of > last and (ev is None or ev > as_of) else None
        h = hashlib.sha256(header)
        h.update((tick.isoformat() if tick else "-").encode())
        h.update(np.ascontiguousarray(mat[s:e]).tobytes())
        out.append(PatientPlan(pid, tick, h.hexdigest(), (e - s + (tick is not None)) * len(horizons)))
    return out


def with_review_flags(session: Session, visits: pd.DataFrame) -> pd.DataFrame:
    """The visit table with its ``needs_review`` column (db.scores.scans_needing_review)."""
    from db.scores import scans_needing_review

    flagged = scans_needing_review(session, [int(i) for i in visits["scan_id"]])
    return visits.assign(**{REVIEW_COLUMN: visits["scan_id"].isin(flagged).to_numpy(dtype=np.float64)})


def _dedupe_key(model_version_id: int, plan: PatientPlan) -> str:
    return f"{JOB_KIND}:m{model_version_id}:p{plan.db_patient_id}:{plan.fingerprint}"


def _plan_in_session(
    session: Session,
    endpoint: str | None,
    as_of: date,
    horizons: Sequence[int],
    db_ids: list[int] | None,
) -> tuple[list[str], int]:
    """Queue jobs for stale patients; returns (dedupe keys of every stale patient's job, jobs added)."""
    from db import jobs, scores
    from db.registry import promoted_models
    from db.visits import first_event_dates, visit_table

    keys: list[str] = []
    added = 0
    for mv in promoted_models(session, endpoint):
        visits = visit_table(session, db_ids, tags=list(mv.features))
        if visits.empty:
            continue
        visits = with_review_flags(session, visits)
        events = first_event_dates(session, mv.endpoint, db_ids, on_or_before=as_of)
        plans = plan_patients(visits, list(mv.features), mv.id, as_of, horizons, events)
        stored = scores.stored_counts(session, mv.id, db_ids)
        stale = [p for p in plans if stored.get((p.db_patient_id, p.fingerprint), 0) != p.n_rows]
        items = [
            (
                _dedupe_key(mv.id, p),
                {
                    "patient_id": p.db_patient_id,
                    "model_version_id": mv.id,
                    "as_of": as_of.isoformat(),
                    "horizons": [int(h) for h in horizons],
                    "fingerprint": p.fingerprint,
                },
            )
            for p in stale
        ]
        added += jobs.enqueue(session, JOB_KIND, items)
        keys += [k for k, _ in items]
    return keys, added


def plan(
    engine: Engine,
    endpoint: str | None = None,
    as_of: date | None = None,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    patient_ids: Sequence[int] | None = None,
) -> int:
    """Queue a re-scoring job for every patient whose scores are stale; returns the number of jobs added.

    Planning twice adds nothing (jobs are deduplicated by model, patient and input fingerprint). `patient_ids`
    (DB ids) restricts planning to those patients.
    """
    from db.session import session_scope

    as_of = as_of or default_as_of()
    with session_scope(engine) as s:
        _, added = _plan_in_session(
            s, endpoint, as_of, horizons, list(patient_ids) if patient_ids is not None else None
        )
    return added


def curves_json(curves: np.ndarray) -> list[str]:
    """Survival curves (values in [0, 1]) as JSON arrays with 6 decimals, formatted without a per-float repr."""
    c = np.clip(np.asarray(curves, dtype=np.float64), 0.0, 1.0)
    n, m = c.shape
    if m == 0:
        return ["[]"] * n
    scaled = np.rint(c * 10**CURVE_DECIMALS).astype(np.int64)
    cell = np.empty((n, m, CURVE_DECIMALS + 3), dtype=np.uint8)  # "d.dddddd,"
    cell[:, :, 0] = ord("0") + scaled // 10**CURVE_DECIMALS
    cell[:, :, 1] = ord(".")
    for k in range(CURVE_DECIMALS):
        cell[:, :, 2 + k] = ord("0") + (scaled // 10 ** (CURVE_DECIMALS - 1 - k)) % 10
    cell[:, :, -1] = ord(",")
    flat = cell.reshape(n, -1)
    flat[:, -1] = ord("]")
    body = flat.tobytes()
    width = flat.shape[1]
    return ["[" + body[i * width : (i + 1) * width].decode() for i in range(n)]


def _score_group(
    model: SurvivalModel,
    visits: pd.DataFrame,
    plans: dict[int, PatientPlan],
    model_version_id: int,
    horizons: Sequence[int],
) -> pd.DataFrame:
    """Score rows for the patients of `visits` (all must be scorable: the caller isolates failures).

    Columns: patient_id, scan_id (None for a tick), as_of_date, model_version_id, horizon_months, risk, curve
    (JSON text on the curve horizon's rows, else None), input_fingerprint, risk_lower, risk_upper, curve_lower,
    curve_upper (JSON text on the curve's rows).
    """
    from db.visits import model_inputs
    from tracker.survival.intervals import REVIEW_WIDEN, widen

    inputs = model_inputs(visits)[["patient_id", "time_days", *model.features]]
    with _PREDICT_LOCK:
        index, surv, s_low, s_high = model.survival_interval_all_visits(inputs)
    if len(index) != len(visits) or not np.array_equal(index["patient_id"].to_numpy(), inputs["patient_id"].to_numpy()):
        raise MetatrackError("rescore: model output rows do not line up with the visit table")
    if REVIEW_COLUMN in visits and visits[REVIEW_COLUMN].to_numpy().any():
        factor = np.where(visits[REVIEW_COLUMN].to_numpy(dtype=np.float64) > 0, REVIEW_WIDEN, 1.0)
        s_low, s_high = widen(surv, s_low, factor)
    grid = model.grid_months
    horizons = [int(h) for h in horizons]
    pids = visits["db_patient_id"].to_numpy(dtype=np.int64)
    dates = visits["scan_date"].to_numpy(dtype=object)
    # as of each scan: t = 0 on that visit's curve
    zero = np.zeros(len(visits))

    def scan_risks(curves: np.ndarray) -> np.ndarray:
        return np.stack([1.0 - survival_at(curves, grid, zero + h) for h in horizons], axis=1)

    # as of the tick: t months after the last visit, on the last visit's curve
    is_last = np.r_[pids[1:] != pids[:-1], True] if len(pids) else np.zeros(0, dtype=bool)
    tick_rows = np.array([i for i in np.flatnonzero(is_last) if plans[int(pids[i])].tick is not None], dtype=np.int64)
    tick_days = np.array([plans[int(pids[i])].tick for i in tick_rows], dtype=object)
    t_tick = np.array([months_between(dates[i], tick_days[j]) for j, i in enumerate(tick_rows)], dtype=np.float64)

    def entries(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(risks per entry and horizon, curves per entry) for scans then ticks."""
        tick_risks, tick_curves = risk_table(curves[tick_rows], grid, t_tick, horizons)
        risk = np.concatenate([scan_risks(curves), tick_risks.reshape(len(tick_rows), len(horizons))], axis=0)
        return risk.reshape(-1), np.concatenate([curves, tick_curves], axis=0)

    def as_json(curves: np.ndarray) -> np.ndarray:
        """Curve JSON on the curve horizon's rows, else None."""
        text = np.repeat(np.array(curves_json(curves), dtype=object), n_h)
        text[horizon_col != curve_row_horizon(horizons)] = None
        return text

    entry_pid = np.r_[pids, pids[tick_rows]]
    entry_scan = np.r_[visits["scan_id"].to_numpy(dtype=object), np.full(len(tick_rows), None, dtype=object)]
    entry_day = np.r_[dates, tick_days]
    entry_fp = np.array([plans[int(p)].fingerprint for p in entry_pid], dtype=object)
    n_h = len(horizons)
    horizon_col = np.tile(np.asarray(horizons, dtype=np.int64), len(entry_pid))
    risk_col, curve = entries(surv)
    upper_col, curve_low = entries(s_low)  # the lower survival curve is the upper risk
    lower_col, curve_up = entries(s_high)
    # a tick's curve is conditional on surviving to the tick: the ratio of a band's bounds need not bound it
    curve_col = as_json(curve)
    curve_low_col, curve_up_col = as_json(np.minimum(curve_low, curve)), as_json(np.maximum(curve_up, curve))
    return pd.DataFrame(
        {
            "patient_id": np.repeat(entry_pid, n_h),
            "scan_id": np.repeat(entry_scan, n_h),
            "as_of_date": np.repeat(entry_day, n_h),
            "model_version_id": np.full(len(horizon_col), model_version_id, dtype=np.int64),
            "horizon_months": horizon_col,
            "risk": risk_col,
            "curve": curve_col,
            "input_fingerprint": np.repeat(entry_fp, n_h),
            "risk_lower": np.minimum(lower_col, risk_col),
            "risk_upper": np.maximum(upper_col, risk_col),
            "curve_lower": curve_low_col,
            "curve_upper": curve_up_col,
        }
    )


Notify = Callable[[str], None]


def _write_batch(engine: Engine, worker: str, rows: pd.DataFrame, done: list[int], failed: dict[int, str]) -> None:
    """One transaction: the batch's score rows (and the history of those they replace), its jobs done, its failed
    jobs with their errors."""
    from db import jobs, scores
    from db.alerts import record_score_changes
    from db.session import session_scope

    now = datetime.now(UTC)
    with session_scope(engine) as s:
        record_score_changes(s, rows, now)  # before the upsert replaces them: old value, new value, reason
        scores.upsert_scores(s, rows, now)
        jobs.complete(s, done, worker)
        for job_id, error in failed.items():
            jobs.fail(s, job_id, worker, error)


def _write_retrying(engine: Engine, worker: str, batch: ScoredBatch, notify: Notify | None) -> None:
    """:func:`_write_batch`, tried again when the connection is lost: the upsert and the state changes (only of jobs
    this worker still runs) can run twice, so a commit whose answer was lost does no harm."""
    from db.session import retrying

    ids = sorted([*batch.done, *batch.failed])
    what = f"writing the scores of jobs {ids[0]}..{ids[-1]}" if ids else "writing a batch"
    retrying(lambda: _write_batch(engine, worker, batch.rows, batch.done, batch.failed), what, notify=notify)


def _latest_jobs(
    claimed: list[tuple[int, dict[str, Any]]],
) -> tuple[list[tuple[int, dict[str, Any]]], list[int]]:
    """(newest job per model and patient, ids of the older ones it supersedes): one patient is scored once."""
    newest: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {}
    for job_id, payload in sorted(claimed):
        newest[(int(payload["model_version_id"]), int(payload["patient_id"]))] = (job_id, payload)
    kept = {j for j, _ in newest.values()}
    return list(newest.values()), [j for j, _ in claimed if j not in kept]


@dataclass
class ScoredBatch:
    """A claimed batch scored and not yet written: its score rows, jobs done and failed jobs with their errors."""

    stats: WorkStats
    rows: pd.DataFrame
    done: list[int]
    failed: dict[int, str]


def _score_batch(
    engine: Engine, store: FileStore, claimed: list[tuple[int, dict[str, Any]]], notify: Notify | None = None
) -> ScoredBatch:
    """Score the patients of claimed jobs (one vectorised call per model/as-of group); nothing is written.

    The reads are tried again when the database connection is lost (:func:`db.session.retrying`), so that a
    PostgreSQL restart does not fail the batch's jobs.
    """
    from db.registry import model_file_bytes
    from db.scores import model_version
    from db.session import retrying, session_scope
    from db.visits import first_event_dates, visit_table
    from tracker.survival.cache import cached_model

    stats = WorkStats(batches=1)
    latest, done = _latest_jobs(claimed)
    groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for job_id, payload in latest:
        key = (int(payload["model_version_id"]), payload["as_of"], tuple(payload.get("horizons", DEFAULT_HORIZONS)))
        groups[key].append((job_id, payload))
    parts: list[pd.DataFrame] = []
    failed: dict[int, str] = {}
    for (mv_id, as_of_s, horizons), items in groups.items():
        job_of = {int(p["patient_id"]): j for j, p in items}
        db_ids = sorted(job_of)
        as_of = date.fromisoformat(as_of_s)

        def read(mv_id: int = mv_id, db_ids: list[int] = db_ids, as_of: date = as_of) -> tuple[Any, ...]:
            with session_scope(engine) as s:
                mv = model_version(s, mv_id)
                if mv is None:
                    raise MetatrackError(f"model version id {mv_id} no longer exists")
                features = list(mv.features)
                model = cached_model(mv.file_sha256, functools.partial(model_file_bytes, store, mv))
                visits = with_review_flags(s, visit_table(s, db_ids, tags=features))
                events = first_event_dates(s, mv.endpoint, db_ids, on_or_before=as_of)
            return features, model, visits, events

        try:
            features, model, visits, events = retrying(
                read, f"reading the inputs of jobs {items[0][0]}..{items[-1][0]}", notify=notify
            )
            plans = {p.db_patient_id: p for p in plan_patients(visits, features, mv_id, as_of, horizons, events)}
        except Exception as exc:  # the whole group cannot be scored: every job fails with the reason
            for pid in db_ids:
                failed[job_of[pid]] = f"{type(exc).__name__}: {exc}"
            continue
        try:
            parts.append(_score_group(model, visits, plans, mv_id, horizons))
            done += [job_of[p] for p in db_ids]
        except Exception:  # isolate the failing patients, score the others one by one
            for pid in db_ids:
                one = visits[visits["db_patient_id"] == pid]
                try:
                    if len(one):
                        parts.append(_score_group(model, one, plans, mv_id, horizons))
                    done.append(job_of[pid])
                except Exception as exc:
                    failed[job_of[pid]] = f"{type(exc).__name__}: {exc}"
        stats.patients += len(db_ids)
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    stats.jobs_done, stats.jobs_failed, stats.rows_written = len(done), len(failed), len(rows)
    stats.errors = [f"job {j}: {e}" for j, e in failed.items()]
    return ScoredBatch(stats, rows, done, failed)


def work(
    engine: Engine,
    store: FileStore,
    worker: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    *,
    reclaim: bool = False,
    stale_after_s: float | None = None,
    max_batches: int | None = None,
    keys: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
    lock: bool = True,
    notify: Notify | None = None,
) -> WorkStats:
    """Claim and score batches of queued re-scoring jobs until none is left (or `max_batches`).

    Running jobs of lost workers go back to the queue first: on SQLite all of them (the single-worker lock proves
    their worker is gone), on PostgreSQL those older than `stale_after_s` (default 15 minutes), or all with
    `reclaim`. Each batch is one transaction for its scores and job states, written on a second thread while the
    next batch is claimed and scored (the database works while the model does); a failed write stops the worker.

    A lost database connection (a PostgreSQL restart) is tried again with waits (:func:`db.session.retrying`,
    each announced through `notify`) for the reclaim, each claim, each batch's reads and each batch's write. When
    the database stays away the worker stops with a :class:`MetatrackError` saying what was written and what was
    not.
    """
    from db import jobs
    from db.session import DatabaseUnavailable, retrying, session_scope

    worker = worker or jobs.default_worker_name()
    stats = WorkStats()
    start = time.perf_counter()
    written = {"batches": 0, "jobs": 0}

    def reclaim_lost() -> int:
        with session_scope(engine) as s:
            everything = reclaim or engine.dialect.name == "sqlite"
            return jobs.reclaim(s, JOB_KIND, None if everything else (stale_after_s or jobs.DEFAULT_STALE_AFTER_S))

    def claim() -> list[tuple[int, dict[str, Any]]]:
        with session_scope(engine) as s:
            return jobs.claim(s, JOB_KIND, worker, batch_size, keys=keys)

    def settle(future: Future, n_jobs: int) -> None:
        future.result()
        written["batches"] += 1
        written["jobs"] += n_jobs

    guard = jobs.worker_lock(engine, wait=keys is not None) if lock else _null()
    try:
        with guard:
            stats.reclaimed = retrying(reclaim_lost, "giving back the jobs of lost workers", notify=notify)
            with _batch_writer(engine) as writer:
                pending: tuple[Future, int] | None = None
                while max_batches is None or stats.batches < max_batches:
                    if pending is not None and pending[0].done():
                        settle(*pending)  # a failed write stops the worker before it claims more
                        pending = None
                    claimed = retrying(claim, "claiming re-scoring jobs", notify=notify)
                    if not claimed:
                        break
                    batch = _score_batch(engine, store, claimed, notify)
                    if pending is not None:
                        try:
                            settle(*pending)
                        except BaseException as exc:
                            _release(engine, worker, [job_id for job_id, _ in claimed], exc)
                            raise
                    pending = (writer.submit(_write_retrying, engine, worker, batch, notify), len(claimed))
                    stats.add(batch.stats)
                    if progress is not None:
                        progress(len(claimed))
                if pending is not None:
                    settle(*pending)
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(
            f"rescore stopped: {exc}; {written['jobs']} jobs in {written['batches']} batches were written before; "
            "the rest stay queued or running: run `metatrack rescore` again once the database is back "
            "(`--reclaim` for running jobs if no other worker runs)"
        ) from exc
    stats.seconds = time.perf_counter() - start
    return stats


def _release(engine: Engine, worker: str, job_ids: list[int], cause: BaseException) -> None:
    """Give a claimed, scored, unwritten batch back to the queue when an earlier batch's write failed (``cause``):
    it is not to blame, so its attempt is returned. If that fails too (the database is gone), the failure is noted
    on ``cause`` and reclaim recovers the batch later."""
    from db import jobs
    from db.session import session_scope

    try:
        with session_scope(engine) as s:
            jobs.release(s, job_ids, worker)
    except Exception as exc:
        cause.add_note(f"the batch scored meanwhile (jobs {job_ids[0]}..{job_ids[-1]}) stays running: {exc}")


class _InlineWriter:
    """The writer for an in-memory SQLite database: each thread would open its own empty database, so batches are
    written in the calling thread, at once."""

    def __enter__(self) -> _InlineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Callable[..., None], *args: Any) -> Future:
        future: Future = Future()
        fn(*args)
        future.set_result(None)
        return future


def _batch_writer(engine: Engine) -> ThreadPoolExecutor | _InlineWriter:
    """One background thread that writes a worker's batches in order, inline for an in-memory SQLite database."""
    database = engine.url.database or ":memory:"
    in_memory = database.startswith((":memory:", "file::memory:")) or "mode=memory" in database
    if engine.dialect.name == "sqlite" and in_memory:
        return _InlineWriter()
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="rescore-write")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _warn_running(engine: Engine, notify: Notify | None) -> None:
    """Say how many jobs are running and will not be reclaimed now (younger than the stale age), and since when:
    another worker's, or those of a killed one, which would otherwise wait silently."""
    import logging

    from db import jobs
    from db.session import session_scope

    with session_scope(engine) as s:
        n, since = jobs.running_since(s, JOB_KIND, newer_than_s=jobs.DEFAULT_STALE_AFTER_S)
    if not n:
        return
    when = since.strftime("%Y-%m-%d %H:%M:%S UTC") if since is not None else "an unknown time"
    (notify or logging.getLogger("metatrack").warning)(
        f"warning: {n} re-scoring job(s) have been running since {when}: another worker's, or a killed worker's; "
        f"they go back to the queue once running {jobs.DEFAULT_STALE_AFTER_S // 60} minutes, or now with "
        "`metatrack rescore --reclaim` (only when no other worker runs)"
    )


def queued_count(engine: Engine) -> int:
    """Number of queued re-scoring jobs."""
    from db import jobs
    from db.session import session_scope

    with session_scope(engine) as s:
        return jobs.counts(s, JOB_KIND)["queued"]


def rescore_all(
    engine: Engine,
    store: FileStore,
    endpoint: str | None = None,
    as_of: date | None = None,
    *,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    workers: int = 1,
    batch_size: int = DEFAULT_BATCH,
    reclaim: bool = False,
    progress: Callable[[int], None] | None = None,
    on_planned: Callable[[int], None] | None = None,
    notify: Notify | None = None,
) -> dict[str, Any]:
    """Plan, then work until the queue is empty; several workers (threads) only on PostgreSQL.

    `notify` gets one-line notices: running jobs that this run leaves alone (a killed worker's, until they are
    stale or `reclaim`), and retries after a lost database connection.
    """
    from db import jobs
    from db.session import session_scope

    if workers < 1:
        raise MetatrackError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and engine.dialect.name != "postgresql":
        raise MetatrackError("--workers > 1 needs PostgreSQL; SQLite allows one worker")
    start = time.perf_counter()
    planned = plan(engine, endpoint, as_of, horizons)
    if not reclaim and engine.dialect.name != "sqlite":
        _warn_running(engine, notify)
    if on_planned is not None:
        on_planned(queued_count(engine))
    if workers == 1:
        stats = work(engine, store, batch_size=batch_size, reclaim=reclaim, progress=progress, notify=notify)
    else:
        stats = WorkStats()
        with session_scope(engine) as s:
            stats.reclaimed = jobs.reclaim(s, JOB_KIND, None if reclaim else jobs.DEFAULT_STALE_AFTER_S)
        results: list[WorkStats | BaseException] = []
        base = jobs.default_worker_name()

        def run(i: int) -> None:
            try:
                results.append(
                    work(engine, store, f"{base}/{i}", batch_size, progress=progress, lock=False, notify=notify)
                )
            except BaseException as exc:  # reported after the join
                results.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for r in results:
            if isinstance(r, BaseException):
                raise r
            stats.add(r)
    out = stats.as_dict()
    out.update(planned=planned, seconds=time.perf_counter() - start)
    return out


def score_patients(
    engine: Engine,
    store: FileStore,
    patient_ids: Sequence[int],
    as_of: date | None = None,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
) -> WorkStats:
    """Bring the scores of these patients (DB ids) up to date now, e.g. after processing their new scans.

    A no-op when no model is promoted. Only these patients' jobs are worked; failures are recorded on the jobs.
    """
    from db.session import session_scope

    as_of = as_of or default_as_of()
    with session_scope(engine) as s:
        keys, _ = _plan_in_session(s, None, as_of, horizons, list(patient_ids))
    if not keys:
        return WorkStats()
    return work(engine, store, keys=keys, batch_size=max(len(keys), 1))


def score_patients_by_pseudonym(engine: Engine, store: FileStore, pseudonyms: Sequence[str]) -> int:
    """:func:`score_patients` for patients given by their pseudonyms; returns how many were scored."""
    from db.repo import patient_ids
    from db.session import session_scope

    if not pseudonyms:
        return 0
    with session_scope(engine) as s:
        ids = patient_ids(s, list(pseudonyms))
    return score_patients(engine, store, ids).patients

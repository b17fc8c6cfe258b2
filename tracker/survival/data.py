"""Long visit/event tables -> cleaned tables, standardised padded sequences and discrete-time targets.

Pure computation on pandas/numpy; no torch here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracker.errors import MetatrackError
from tracker.survival.config import DAYS_PER_MONTH, DAYS_PER_YEAR, SurvivalModelConfig

CLIP_Z = 10.0  # standardised values are clipped to +-CLIP_Z so that one wild measurement cannot dominate
MIN_STD = 1e-12
MIN_RATE_YEARS = 1.0 / 24.0  # no rate of change over less than about two weeks
RESERVED_COLUMNS = ("visit_index", "visit")  # visit counters are not features


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds (its repr is what the user wrote, not np.float64(...))."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _refuse_rows(table: str, bad: pd.Series | np.ndarray, column: str, problem: str, values: pd.Series) -> None:
    """Raise naming the first bad row as its line in the CSV file (line 1 is the header), its value and the count."""
    hits = np.flatnonzero(np.asarray(bad, dtype=bool))
    if len(hits):
        i = int(hits[0])
        more = f" ({len(hits) - 1} more rows like it)" if len(hits) > 1 else ""
        raise MetatrackError(f"{table} row {i + 2}: column {column!r} {problem}, got {_plain(values.iloc[i])!r}{more}")


def _refuse_duplicates(table: str, frame: pd.DataFrame, keys: list[str], what: str) -> None:
    """Raise naming the first row whose `keys` repeat an earlier row's (both as CSV lines)."""
    dup = frame.duplicated(keys).to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        same = (frame[keys] == frame[keys].iloc[i]).all(axis=1).to_numpy()
        first = int(np.flatnonzero(same)[0])
        shown = ", ".join(f"{k}={_plain(frame[k].iloc[i])!r}" for k in keys)
        raise MetatrackError(f"{table} row {i + 2}: {what} ({shown}) already given in row {first + 2}")


def prepare_visits(visits: pd.DataFrame, cfg: SurvivalModelConfig) -> pd.DataFrame:
    """Check a visit table, derive ``time_days`` from the date column if needed, sort by patient and time.

    Returns a copy with columns patient_id, time_days (float) and the rest unchanged, sorted, with a
    0-based ``visit_index`` added.
    """
    pid, tcol = cfg.patient_col, cfg.time_col
    if pid not in visits.columns:
        raise MetatrackError(f"visits: missing column {pid!r} (have {list(visits.columns)[:10]})")
    out = visits.copy()
    if tcol not in out.columns:
        if cfg.date_col not in out.columns:
            raise MetatrackError(f"visits: need a {tcol!r} column (days from baseline) or a {cfg.date_col!r} column")
        dates = pd.to_datetime(out[cfg.date_col], errors="coerce")
        if dates.isna().any():
            bad = out.loc[dates.isna(), cfg.date_col].iloc[0]
            raise MetatrackError(f"visits: column {cfg.date_col!r} has an unreadable date {bad!r}")
        first = dates.groupby(out[pid]).transform("min")
        out[tcol] = (dates - first).dt.total_seconds() / 86400.0
    given = out[tcol]
    out[tcol] = pd.to_numeric(out[tcol], errors="coerce").astype(float)
    _refuse_rows("visits", out[tcol].isna(), tcol, "is missing or not a number (every visit needs a time)", given)
    _refuse_rows("visits", out[tcol] < 0, tcol, "is negative (days since the patient's baseline)", given)
    _refuse_rows("visits", out[pid].isna(), pid, "is empty (every visit needs a patient)", out[pid])
    _refuse_duplicates("visits", out, [pid, tcol], "a second visit of the same patient at the same time")
    out = out.sort_values([pid, tcol], kind="stable").reset_index(drop=True)
    out["visit_index"] = out.groupby(pid).cumcount()
    return out


def prepare_events(events: pd.DataFrame, cfg: SurvivalModelConfig) -> pd.DataFrame:
    """Check an event table: one row per patient with time_days >= 0 and event in {0, 1}."""
    pid, tcol, ecol = cfg.patient_col, cfg.time_col, cfg.event_col
    for col in (pid, tcol, ecol):
        if col not in events.columns:
            raise MetatrackError(f"events: missing column {col!r} (have {list(events.columns)})")
    out = events[[pid, tcol, ecol]].copy()
    given = out[tcol]
    out[tcol] = pd.to_numeric(out[tcol], errors="coerce").astype(float)
    _refuse_rows("events", out[tcol].isna(), tcol, "is missing or not a number", given)
    _refuse_rows("events", out[tcol] < 0, tcol, "is before the patient's first visit (day 0)", given)
    _refuse_rows("events", ~out[ecol].isin([0, 1, True, False]), ecol, "must be 0 or 1", out[ecol])
    out[ecol] = out[ecol].astype(int)
    _refuse_rows("events", out[pid].isna(), pid, "is empty (every row needs a patient)", out[pid])
    _refuse_duplicates("events", out, [pid], "a second row for the same patient")
    return out.reset_index(drop=True)


def infer_feature_columns(visits: pd.DataFrame, cfg: SurvivalModelConfig) -> list[str]:
    """Feature columns: those named in the config, else every numeric column but id, time and date."""
    if cfg.feature_columns is not None:
        missing = [c for c in cfg.feature_columns if c not in visits.columns]
        if missing:
            raise MetatrackError(f"visits: feature columns {missing} named in the config are missing")
        return list(cfg.feature_columns)
    skip = {cfg.patient_col, cfg.time_col, cfg.date_col, *RESERVED_COLUMNS}
    return [c for c in visits.columns if c not in skip and pd.api.types.is_numeric_dtype(visits[c])]


def check_user_tables(visits: pd.DataFrame, events: pd.DataFrame, cfg: SurvivalModelConfig) -> None:
    """What the commands refuse in a user's tables beyond the model's own checks, naming the row or column: a visit
    of a patient the events table does not know, a feature column empty in every row or constant (a constant
    column given on purpose, e.g. a no-feature model, still trains through the library)."""
    pid = cfg.patient_col
    if pid in visits.columns and pid in events.columns:
        known = set(events[pid].astype(str))
        unknown = visits[pid].notna() & ~visits[pid].astype(str).isin(known)  # empty ids: prepare_visits says so
        if unknown.any():
            n = visits.loc[unknown, pid].nunique()
            _refuse_rows(
                "visits",
                unknown,
                pid,
                f"names a patient without a row in the events table ({n} such patient(s))",
                visits[pid],
            )
    for c in infer_feature_columns(visits, cfg):
        values = visits[c].to_numpy(dtype=np.float64)
        seen = values[np.isfinite(values)]
        if not len(seen):
            raise MetatrackError(f"visits: feature column {c!r} has no values (empty in every row); drop it")
        if np.all(seen == seen[0]):
            raise MetatrackError(f"visits: feature column {c!r} is constant ({seen[0]:g} in every row); drop it")


def drop_visits_after_outcome(visits: pd.DataFrame, events: pd.DataFrame, cfg: SurvivalModelConfig) -> pd.DataFrame:
    """Keep visits strictly before the patient's event/censoring time; patients without an event row raise."""
    pid, tcol = cfg.patient_col, cfg.time_col
    end = visits[pid].map(events.set_index(pid)[tcol])
    if end.isna().any():
        missing = visits.loc[end.isna(), pid]
        raise MetatrackError(
            f"visits: patient {missing.iloc[0]!r} is unknown: the events table has no row for it "
            f"({missing.nunique()} patient(s) without one)"
        )
    first = visits.groupby(pid, sort=False)[tcol].min()
    before = (events[tcol] < events[pid].map(first)).to_numpy()  # NaN (no visits): False
    if before.any():
        i = int(np.flatnonzero(before)[0])
        name = events[pid].iloc[i]
        raise MetatrackError(
            f"events row {i + 2}: column {tcol!r} is before the first visit of patient {name!r} "
            f"({events[tcol].iloc[i]:g} < {first[name]:g})"
        )
    kept = visits.loc[visits[tcol].to_numpy() < end.to_numpy()].reset_index(drop=True)
    kept["visit_index"] = kept.groupby(pid).cumcount()
    return kept


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and standard deviation from the training visits (NaNs ignored)."""

    features: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, visits: pd.DataFrame, features: list[str]) -> Standardizer:
        values = visits[features].to_numpy(dtype=np.float64) if features else np.zeros((len(visits), 0))
        with np.errstate(invalid="ignore"):
            observed = np.isfinite(values)
            count = observed.sum(axis=0)
            filled = np.where(observed, values, 0.0)
            mean = np.divide(filled.sum(axis=0), count, out=np.zeros(values.shape[1]), where=count > 0)
            var = np.where(observed, (values - mean) ** 2, 0.0).sum(axis=0)
            std = np.sqrt(np.divide(var, count, out=np.zeros(values.shape[1]), where=count > 0))
        std = np.where(std > MIN_STD, std, 1.0)
        return cls(tuple(features), mean, std)

    def transform(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardise; return (z with NaN -> 0, observed mask as 0/1)."""
        observed = np.isfinite(values)
        z = np.where(observed, (values - self.mean) / self.std, 0.0)
        return np.clip(z, -CLIP_Z, CLIP_Z), observed.astype(np.float64)


@dataclass
class Sequences:
    """Padded per-patient visit sequences.

    ``x`` is (patients, max_visits, 5 * n_features + 2), see :func:`build_sequences`; ``times_days`` is NaN-padded.
    """

    patient_ids: np.ndarray
    x: np.ndarray
    lengths: np.ndarray
    times_days: np.ndarray


def build_sequences(visits: pd.DataFrame, stats: Standardizer, cfg: SurvivalModelConfig) -> Sequences:
    """Turn a prepared (sorted) visit table into padded model inputs.

    Per visit: standardised features (NaN -> 0), observed masks, change of each standardised feature since the
    previous visit and since the first visit, that change's rate per year (0 where missing), years since the
    previous visit, years since baseline. Only the visit itself and earlier visits of the same patient enter a
    row (causal).
    """
    pid, tcol = cfg.patient_col, cfg.time_col
    features = list(stats.features)
    raw = visits[features].to_numpy(dtype=np.float64) if features else np.zeros((len(visits), 0))
    with np.errstate(invalid="ignore"):
        z_nan = (raw - stats.mean) / stats.std
    z, mask = stats.transform(raw)
    times = visits[tcol].to_numpy(dtype=np.float64)
    codes, patient_ids = pd.factorize(visits[pid], sort=False)
    lengths = np.bincount(codes, minlength=len(patient_ids))
    n_pat, max_len = len(patient_ids), int(lengths.max()) if len(lengths) else 0
    step = visits.groupby(codes).cumcount().to_numpy()
    new_patient = np.r_[True, codes[1:] != codes[:-1]] if len(codes) else np.zeros(0, dtype=bool)
    prev = np.r_[0, np.arange(len(codes) - 1)] if len(codes) else np.zeros(0, dtype=np.int64)
    first = np.maximum.accumulate(np.where(new_patient, np.arange(len(codes)), 0))
    gap = np.where(new_patient, 0.0, times - times[prev])
    d_prev = np.where(new_patient[:, None], 0.0, z_nan - z_nan[prev])
    d_first = z_nan - z_nan[first]
    since_first = (times - times[first]) / DAYS_PER_YEAR
    with np.errstate(invalid="ignore", divide="ignore"):
        # average rate of change since the first visit (per year), the least noisy slope estimate per visit
        rate = np.where(since_first[:, None] >= MIN_RATE_YEARS, d_first / since_first[:, None], 0.0)
    clip = lambda a: np.clip(np.nan_to_num(a, nan=0.0), -CLIP_Z, CLIP_Z)  # noqa: E731
    time_feats = np.stack([gap / DAYS_PER_YEAR, times / DAYS_PER_YEAR], axis=1)
    rows = np.concatenate([z, mask, clip(d_prev), clip(d_first), clip(rate), time_feats], axis=1)
    x = np.zeros((n_pat, max_len, rows.shape[1]), dtype=np.float32)
    x[codes, step] = rows
    times_days = np.full((n_pat, max_len), np.nan)
    times_days[codes, step] = times
    return Sequences(np.asarray(patient_ids), x, lengths, times_days)


@dataclass
class Targets:
    """Per (patient, visit) discrete-time target: bin of the remaining time, event flag, validity mask.

    ``bin_index`` == n_bins means the patient was followed past the horizon without an event.
    """

    bin_index: np.ndarray
    event: np.ndarray
    valid: np.ndarray


def remaining_to_bins(remaining_days: np.ndarray, event: np.ndarray, cfg: SurvivalModelConfig) -> tuple:
    """Map remaining times (days from the visit) to (bin index, event); past the horizon -> (n_bins, 0)."""
    months = np.asarray(remaining_days, dtype=np.float64) / DAYS_PER_MONTH
    bins = np.floor(months / cfg.bin_months + 1e-9).astype(np.int64)
    beyond = bins >= cfg.n_bins
    bins = np.where(beyond, cfg.n_bins, bins)
    ev = np.where(beyond, 0, np.asarray(event, dtype=np.int64))
    return bins, ev


def build_targets(seq: Sequences, events: pd.DataFrame, cfg: SurvivalModelConfig) -> Targets:
    """Targets for every visit prefix: remaining time from each visit to the patient's event/censoring."""
    ev = events.set_index(cfg.patient_col)
    end = ev.loc[seq.patient_ids, cfg.time_col].to_numpy(dtype=np.float64)
    flag = ev.loc[seq.patient_ids, cfg.event_col].to_numpy(dtype=np.int64)
    valid = np.arange(seq.x.shape[1])[None, :] < seq.lengths[:, None]
    remaining = np.where(valid, end[:, None] - np.nan_to_num(seq.times_days), 0.0)
    bins, event = remaining_to_bins(remaining, np.broadcast_to(flag[:, None], remaining.shape), cfg)
    return Targets(np.where(valid, bins, 0), np.where(valid, event, 0), valid)


def data_fingerprint(visits: pd.DataFrame, events: pd.DataFrame) -> str:
    """sha256 of the two tables in a canonical CSV form (columns and rows sorted)."""
    digest = hashlib.sha256()
    for table in (visits, events):
        canon = table[sorted(table.columns, key=str)]
        canon = canon.sort_values(list(canon.columns), kind="stable")
        digest.update(canon.to_csv(index=False, float_format="%.17g").encode())
    return digest.hexdigest()

"""The `features` command's body: extraction outside the database, as CSV or JSON."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from cli import output
from tracker.errors import MetatrackError
from tracker.featurefiles import FeatureJob


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
        output.log(f"wrote {out}")


def _clean(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def run_features(
    image: Path | None,
    mask: Path | None,
    config: str,
    label: int | None,
    batch: Path | None,
    fmt: str,
    out: Path | None,
    body_mask: str | None = None,
    n_jobs: int = 1,
    *,
    progress: bool = True,
    rois: tuple[str, ...] = (),
    segments: tuple[str, ...] = (),
) -> None:
    from tracker.featurefiles import extract_files, read_batch

    if fmt not in ("csv", "json"):
        raise MetatrackError(f"--format {fmt!r} is not csv or json")
    if n_jobs < 1:
        raise MetatrackError(f"--jobs {n_jobs} is not a positive number of processes")
    if n_jobs > 1 and batch is None:
        raise MetatrackError("--jobs runs the pairs of a --batch file in processes; one pair runs in this one")
    if batch is None:
        if image is None or mask is None:
            raise MetatrackError("give IMAGE and MASK, or --batch FILE")
        fs = extract_files(FeatureJob(image, mask, label, body_mask, rois, segments), config)
        records = [{**r, "value": _clean(r["value"]), "config": fs.config.get("name"), "engine": fs.engine_version}
                   for r in fs.records()]  # fmt: skip
        if fmt == "json":
            _emit(json.dumps(records, indent=2) + "\n", out)
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        _emit(buf.getvalue(), out)
        return
    jobs = read_batch(batch)
    if body_mask is not None:  # the option applies to the rows that name no body mask of their own
        jobs = [j if j.body_mask is not None else dataclasses.replace(j, body_mask=body_mask) for j in jobs]
    rows = _batch_rows(jobs, config, n_jobs, progress)
    failed = sum(row["error"] is not None for row in rows)
    if fmt == "json":
        _emit(json.dumps(rows, indent=2) + "\n", out)
    else:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
        _emit(buf.getvalue(), out)
    if failed:
        raise MetatrackError(f"{failed} of {len(jobs)} pairs failed (see their error column)")


def _batch_rows(jobs: list[FeatureJob], config: str, n_jobs: int, progress: bool) -> list[dict[str, Any]]:
    """The batch's rows in the CSV's order; with ``n_jobs`` > 1 the pairs run in that many processes, one
    thread each (started by spawn: the progress bar's thread must not be forked)."""
    from tracker.featurefiles import batch_row, failed_row

    rows: list[dict[str, Any]] = []
    with output.progress("features", len(jobs), progress) as advance:
        if n_jobs == 1:
            for job in jobs:
                rows.append(_reported(batch_row(job, config)))
                advance()
            return rows
        done: dict[int, dict[str, Any]] = {}
        with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(batch_row, job, config, 1): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    done[i] = _reported(future.result())
                except Exception as exc:  # a crashed worker (BrokenProcessPool) or a bug: recorded in its row
                    done[i] = _reported(failed_row(jobs[i], f"{type(exc).__name__}: {exc}"))
                advance()
    return [done[i] for i in range(len(jobs))]


def _reported(row: dict[str, Any]) -> dict[str, Any]:
    if row["error"] is not None:
        output.err.print(f"error: {row['error']}", highlight=False, markup=False)
    return row

"""The `features` command's body: extraction outside the database, as CSV or JSON."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from pathlib import Path

from cli import output
from tracker.errors import MetatrackError


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
) -> None:
    from tracker.featurefiles import FeatureJob, extract_files, read_batch

    if fmt not in ("csv", "json"):
        raise MetatrackError(f"--format {fmt!r} is not csv or json")
    if batch is None:
        if image is None or mask is None:
            raise MetatrackError("give IMAGE and MASK, or --batch FILE")
        fs = extract_files(FeatureJob(image, mask, label, body_mask), config)
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
    rows, failed = [], 0
    with output.progress("features", len(jobs)) as advance:
        for job in jobs:
            row = {"image": str(job.image), "mask": str(job.mask), "label": job.label, "error": None}
            try:
                fs = extract_files(job, config)
                row.update({k: _clean(v) for k, v in fs.values.items()})
            except MetatrackError as exc:  # one pair's failure is recorded in its row
                row["error"] = str(exc)
                failed += 1
                output.err.print(f"error: {exc}", highlight=False, markup=False)
            rows.append(row)
            advance()
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

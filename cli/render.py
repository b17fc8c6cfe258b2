"""Human-readable renderings of the timeline and the cohort table."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from cli import output
from tracker.errors import MetatrackError

COHORT_TABLE_COLUMNS = (
    "patient_id",
    "date",
    "days_from_baseline",
    "role",
    "state",
    "lesions",
    "new_lesions",
    "total_volume_mm3",
    "recist_sum_mm",
    "recist_response",
    "risk_12m",
)


def print_timeline(data: dict[str, Any]) -> None:
    """One table per patient: a row per scan, then a row per lesion under it."""
    rows = []
    for s in data["scans"]:
        rec = s.get("recist") or {}
        reg = s.get("registration") or {}
        risk = {r["horizon_months"]: _risk_text(r) for r in s.get("risk", [])}
        rows.append(
            {
                "date": s["date"],
                "day": s["days_from_baseline"],
                "role": s["role"],
                "state": s["state"],
                "lesion": f"{len(s['lesions'])} lesions",
                "track": "",
                "change": f"vanished {s['vanished_tracks']}" if s.get("vanished_tracks") else "",
                "volume_mm3": sum(les["volume_mm3"] for les in s["lesions"]),
                "diam_mm": rec.get("sum_mm"),
                "recist": rec.get("response"),
                "review": "REVIEW" if reg.get("needs_review") or s.get("review_reasons") else "",
                "risk_12m": risk.get(12),
            }
        )
        for les in s["lesions"]:
            rows.append(
                {
                    "lesion": f"  #{les['label']} {les.get('organ') or ''}".rstrip(),
                    "track": f"T{les['track_id']}" if les.get("track_id") else "",
                    "change": (les.get("change") or "")
                    + (" <- " + ", ".join(f"T{t}" for t in les["merged_from"]) if les.get("merged_from") else ""),
                    "volume_mm3": les["volume_mm3"],
                    "diam_mm": les.get("long_axis_mm"),
                    "recist": les.get("recist_role") or "",
                    "source": _source_text(les),
                }
            )
    cols = ["date", "day", "role", "state", "lesion", "track", "change", "volume_mm3", "diam_mm", "recist"]
    cols += ["source", "review", "risk_12m"]
    output.print_table(rows, cols, title=f"patient {data['patient_id']}")
    if data.get("calendar_risk"):
        cols = ["as_of", "model", "endpoint", "horizon_months", "risk"]
        rows = [{**r, "risk": _risk_text(r)} for r in data["calendar_risk"]]
        output.print_table(rows, cols, title=f"patient {data['patient_id']}: risk by calendar date")


def _risk_text(entry: dict[str, Any]) -> str:
    """A risk with its 90 % interval where one is stored: "0.23 [0.15-0.31]"."""
    text = f"{entry['risk']:.2f}"
    lo, hi = entry.get("risk_lower"), entry.get("risk_upper")
    return text if lo is None or hi is None else f"{text} [{lo:.2f}-{hi:.2f}]"


def _source_text(lesion: dict[str, Any]) -> str:
    """Where a lesion came from, when it was not drawn: "propagated 0.93", "detected 0.71"."""
    source = lesion.get("source") or "given"
    if source == "given":
        return ""
    confidence = lesion.get("confidence")
    return source if confidence is None else f"{source} {confidence:.2f}"


def write_cohort(rows: list[dict[str, Any]], fmt: str, out: Path | None) -> None:
    """The cohort table as a rich table, JSON, CSV or Parquet; a failed write names the file."""
    try:
        _write_cohort(rows, fmt, out)
    except OSError as exc:
        if out is not None and exc.filename is None:  # a write or flush error names no file
            exc.filename = str(out)
        raise


def _write_cohort(rows: list[dict[str, Any]], fmt: str, out: Path | None) -> None:
    if fmt == "json":
        output.print_json(rows)
    elif fmt == "table":
        output.print_table(rows, COHORT_TABLE_COLUMNS, title="cohort")
    elif fmt == "csv":
        cols = list(dict.fromkeys(k for r in rows for k in r))
        if out is None:
            _csv(sys.stdout, cols, rows)
        else:
            with open(out, "w", newline="") as fh:
                _csv(fh, cols, rows)
    elif fmt == "parquet":
        if out is None:
            raise MetatrackError("cohort --format parquet needs --output FILE")
        import pandas as pd

        pd.DataFrame(rows).to_parquet(out, index=False)
        output.log(f"wrote {len(rows)} rows to {out}")
    else:
        raise MetatrackError(f"--format {fmt!r} is not one of table, csv, parquet")


def _csv(fh: Any, cols: list[str], rows: list[dict[str, Any]]) -> None:
    writer = csv.DictWriter(fh, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)

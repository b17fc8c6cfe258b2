"""Where is this point now? Map physical points between any two timepoints of a patient."""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
from sqlalchemy import Engine

from db.results import scan_frame
from db.session import session_scope
from tracker.store import FileStore


def locate(
    engine: Engine, store: FileStore, patient: str, from_date: date, to_date: date, points_lps: np.ndarray
) -> dict[str, Any]:
    """Map LPS points (n, 3) from the scan of `from_date` to the scan of `to_date` through the baseline frame."""
    from registration import map_points

    with session_scope(engine) as s:
        src = scan_frame(s, store, patient, from_date)
        dst = scan_frame(s, store, patient, to_date)
    transforms = [*src.inverse, *dst.forward]
    pts = np.asarray(points_lps, dtype=float).reshape(-1, 3)
    mapped = map_points(pts, transforms) if transforms else pts.copy()
    return {
        "patient_id": patient,
        "from": from_date.isoformat(),
        "to": to_date.isoformat(),
        "frame": "LPS mm",
        "points": [{"from": p.tolist(), "to": q.tolist()} for p, q in zip(pts, mapped, strict=True)],
        "needs_review": bool(src.needs_review or dst.needs_review),
    }

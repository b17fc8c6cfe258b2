"""Bulk loading of synthetic patients, processed scans, patient features and events (scale tests, benchmarks)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.orm import Session

from db.models import Blob, ClinicalEvent, EventKind, Patient, PatientFeature, Scan, ScanRole, ScanState
from db.session import session_scope
from db.types import table_of

INSERT_CHUNK = 5000


def _bulk(session: Session, table: type, rows: list[dict]) -> None:
    for i in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(table_of(table)), rows[i : i + INSERT_CHUNK])


def fill_cohort(engine: Engine, visits: pd.DataFrame, events: pd.DataFrame | None = None) -> dict[str, int]:
    """Write patients, processed scans, patient_features (and events) in bulk; returns pseudonym -> DB id."""
    with session_scope(engine) as s:
        pid0 = (s.scalar(select(func.max(Patient.id))) or 0) + 1
        sid0 = (s.scalar(select(func.max(Scan.id))) or 0) + 1
        names = list(dict.fromkeys(visits["patient_id"]))
        ids = {n: pid0 + k for k, n in enumerate(names)}
        _bulk(s, Patient, [{"id": ids[n], "external_id": n} for n in names])
        scan_ids = np.arange(sid0, sid0 + len(visits))
        shas = [hashlib.sha256(f"synthetic-scan-{i}".encode()).hexdigest() for i in scan_ids]
        _bulk(s, Blob, [{"sha256": h, "kind": "image", "suffix": ".nii.gz", "size_bytes": 1} for h in shas])
        first = visits.groupby("patient_id")["scan_date"].transform("min")
        scan_rows = []
        for sid, h, name, day, is_first in zip(
            scan_ids, shas, visits["patient_id"], visits["scan_date"], visits["scan_date"] == first, strict=True
        ):
            scan_rows.append(
                {
                    "id": int(sid),
                    "patient_id": ids[name],
                    "scan_date": day,
                    "role": ScanRole.BASELINE if is_first else ScanRole.FOLLOW_UP,
                    "modality": "CT",
                    "image_sha256": h,
                    "source_format": "nifti",
                    "source_name": f"{name}_{day}.nii.gz",
                    "size_xyz": [1, 1, 1],
                    "spacing_xyz": [1.0, 1.0, 1.0],
                    "origin_xyz": [0.0, 0.0, 0.0],
                    "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                    "state": ScanState.PROCESSED,
                }
            )
        _bulk(s, Scan, scan_rows)
        feats = [c for c in visits.columns if c not in ("patient_id", "scan_date", "time_days")]
        values = visits[feats].to_numpy(dtype=np.float64)
        pats = [ids[n] for n in visits["patient_id"]]
        feat_rows = [
            {"patient_id": pats[r], "scan_id": int(scan_ids[r]), "tag": f, "value": float(values[r, c])}
            for r in range(len(visits))
            for c, f in enumerate(feats)
            if np.isfinite(values[r, c])
        ]
        _bulk(s, PatientFeature, feat_rows)
        if events is not None:
            ev = events[events["event"] == 1]
            _bulk(
                s,
                ClinicalEvent,
                [
                    {"patient_id": ids[p], "kind": EventKind.METASTASIS, "event_date": d}
                    for p, d in zip(ev["patient_id"], ev["event_date"], strict=True)
                    if p in ids
                ],
            )
        if engine.dialect.name == "postgresql":
            for table in ("patients", "scans"):
                seq = f"pg_get_serial_sequence('{table}', 'id')"
                s.execute(text(f"SELECT setval({seq}, (SELECT max(id) FROM {table}))"))
    with engine.connect() as conn:  # fresh statistics after a bulk load, as autovacuum would gather them
        conn.execute(text("ANALYZE"))
        conn.commit()
    return ids

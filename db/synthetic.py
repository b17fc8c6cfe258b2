"""Bulk loading of synthetic patients, processed scans, patient features and events (scale tests, benchmarks)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.orm import Session

from db.jobs import db_timestamp
from db.models import Blob, ClinicalEvent, EventKind, Patient, PatientFeature, Scan, ScanRole, ScanState
from db.scores import SCORE_COLUMNS
from db.session import session_scope
from db.types import table_of, utcnow
from db.views import TIMELINE_DELTA_TAGS
from tracker.scoring import DEFAULT_HORIZONS, curve_row_horizon

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
                    "source_name": f"sha256:{h[:16]}",
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
    _analyze(engine)
    return ids


def _analyze(engine: Engine) -> None:
    """Fresh planner statistics after a bulk load, as autovacuum would gather them."""
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()


# Lesion feature tags the results loader writes: the timeline's delta tags, so timeline reads find their rows.
RESULT_TAGS = TIMELINE_DELTA_TAGS
CURVE_POINTS = 37  # a monthly survival curve, 0..36 months
ORGANS = ("liver", "lung", "bone", "brain", "lymph_node")


def _copy_rows(session: Session, table: str, columns: Sequence[str], rows: Iterable[tuple]) -> None:
    """Append rows through the fastest path the driver has: COPY on PostgreSQL, executemany on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        cursor = session.connection().connection.cursor()  # same transaction
        try:
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()
        return
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    session.connection().exec_driver_sql(sql, list(rows))


def _next_id(session: Session, table: str) -> int:
    return int(session.execute(text(f"SELECT coalesce(max(id), 0) + 1 FROM {table}")).scalar_one())


def _sync_sequences(session: Session, tables: Iterable[str]) -> None:
    """After explicit ids on PostgreSQL, move each serial sequence past the largest id."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for table in tables:
        seq = f"pg_get_serial_sequence('{table}', 'id')"
        session.execute(text(f"SELECT setval({seq}, (SELECT coalesce(max(id), 1) FROM {table}))"))


def _sha(kind: str, i: int) -> str:
    return hashlib.sha256(f"synthetic-{kind}-{i}".encode()).hexdigest()


def fill_results(engine: Engine, seed: int = 0, mean_tracks: float = 3.0) -> dict[str, int]:
    """Processing results (rows, no files) for the scans :func:`fill_cohort` loaded (call once); returns row counts.

    Per scan: a lesion mask, a registration to the baseline (follow-ups), a RECIST assessment and risk scores
    (`DEFAULT_HORIZONS`, a survival curve on the curve horizon's row as rescore stores it, from one promoted model
    on the visit table's feature columns, with a fingerprint that matches no plan, so every patient is stale).
    Per patient 1 + Poisson(mean_tracks - 1) tracks (at most 8), most starting at baseline, some new at a
    follow-up, one in ten vanishing later; each sighting a lesion with `RESULT_TAGS` feature values, and track
    deltas against the previous and the first sighting. Values follow no model: they exist to be read back at scale.
    """
    rng = np.random.default_rng(seed)
    with session_scope(engine) as s:
        now = db_timestamp(s, utcnow())
        scans = s.execute(text("SELECT patient_id, id, scan_date FROM scans ORDER BY patient_id, scan_date")).all()
        tags = [str(t) for t in s.scalars(select(PatientFeature.tag).distinct().order_by(PatientFeature.tag))]
        pids = np.array([r[0] for r in scans], dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, pids[1:] != pids[:-1]]) if len(pids) else np.zeros(0, dtype=np.int64)
        ends = np.r_[starts[1:], len(pids)]
        ids = {t: _next_id(s, t) for t in ("masks", "registrations", "lesion_tracks", "lesions", "track_links")}
        ids |= {t: _next_id(s, t) for t in ("recist_assessments", "feature_configs", "model_versions")}
        blobs: list[tuple] = []
        masks: list[tuple] = []
        regs: list[tuple] = []
        tracks: list[tuple] = []
        lesions: list[tuple] = []
        links: list[tuple] = []
        recist: list[tuple] = []
        fvalues: list[tuple] = []
        deltas: list[tuple] = []
        risks: list[tuple] = []
        config_id, mv_id = ids["feature_configs"], ids["model_versions"]
        model_sha = _sha(f"model-{mv_id}", seed)
        fingerprint = _sha("stale", seed)
        curve_horizon = curve_row_horizon(DEFAULT_HORIZONS)
        curve = json.dumps([round(float(v), 6) for v in np.exp(-0.02 * np.arange(CURVE_POINTS))])
        for a, b in zip(starts, ends, strict=True):
            pid, base_id = int(pids[a]), int(scans[a][1])
            n_scans = int(b - a)
            n_tracks = min(8, 1 + int(rng.poisson(max(mean_tracks - 1.0, 0.0))))
            born = np.where(rng.random(n_tracks) < 0.75, 0, rng.integers(0, n_scans, n_tracks))
            gone = np.where(rng.random(n_tracks) < 0.1, rng.integers(1, n_scans + 1, n_tracks), n_scans)
            gone = np.maximum(gone, born + 1)
            track_ids = []
            for k in range(n_tracks):
                tid = ids["lesion_tracks"] + len(tracks)
                first = int(scans[a + born[k]][1])
                role = "target" if born[k] == 0 and k < 5 else "non-target"
                tracks.append((tid, pid, k + 1, first, None, role, False, now))
                track_ids.append(tid)
            v0 = rng.lognormal(7.0, 1.0, n_tracks)
            growth = rng.normal(0.0, 0.15, n_tracks)
            organs = rng.integers(0, len(ORGANS), n_tracks)
            centre = rng.normal(0.0, 80.0, (n_tracks, 3))
            seen: dict[int, tuple[int, dict[str, float]]] = {}  # track -> (scan id, features) first sighting
            last: dict[int, tuple[int, dict[str, float]]] = {}
            baseline_sum = 0.0
            for j in range(n_scans):
                scan_id, day = int(scans[a + j][1]), scans[a + j][2]
                mask_id = ids["masks"] + len(masks)
                mask_sha = _sha("mask", mask_id)
                alive = [k for k in range(n_tracks) if born[k] <= j < gone[k]]
                blobs.append((mask_sha, "mask", ".nii.gz", 1, now))
                masks.append(
                    (
                        mask_id,
                        scan_id,
                        "lesions",
                        mask_sha,
                        "nifti",
                        json.dumps(list(range(1, len(alive) + 1))),
                        None,
                        100 * len(alive),
                        not alive,
                        now,
                    )
                )
                if j > 0:
                    fwd, inv = _sha("fwd", scan_id), _sha("inv", scan_id)
                    blobs += [(fwd, "transform", ".h5", 1, now), (inv, "transform", ".h5", 1, now)]
                    review = bool(rng.random() < 0.05)
                    regs.append(
                        (
                            ids["registrations"] + len(regs),
                            scan_id,
                            base_id,
                            "accurate",
                            json.dumps([fwd]),
                            json.dumps([inv]),
                            0.3,
                            0.8,
                            0.4,
                            0.0,
                            9.0,
                            2,
                            0,
                            json.dumps({"preset": "accurate"}),
                            review,
                            json.dumps(["folding"] if review else []),
                            now,
                        )
                    )
                total = 0.0
                for label, k in enumerate(alive, start=1):
                    les_id = ids["lesions"] + len(lesions)
                    vol = float(v0[k] * np.exp(growth[k] * j))
                    axis = float(2.0 * (3.0 * vol / (4.0 * np.pi)) ** (1.0 / 3.0))
                    c = centre[k] + rng.normal(0.0, 1.0, 3)
                    lesions.append(
                        (
                            les_id,
                            scan_id,
                            mask_id,
                            label,
                            int(vol),
                            vol,
                            float(c[0]),
                            float(c[1]),
                            float(c[2]),
                            axis,
                            0.7 * axis,
                            1.1 * axis,
                            ORGANS[organs[k]],
                            track_ids[k],
                            now,
                        )
                    )
                    if born[k] == 0 and k < 5:  # the targets
                        total += axis
                    change = "new" if j == born[k] and j > 0 else "persistent"
                    links.append(
                        (ids["track_links"] + len(links), track_ids[k], scan_id, les_id, change, None, 0.9, False, now)
                    )
                    feats = {
                        t: float(v) for t, v in zip(RESULT_TAGS, rng.normal(0.0, 1.0, len(RESULT_TAGS)), strict=True)
                    }
                    feats[RESULT_TAGS[0]] = vol
                    fvalues += [(les_id, scan_id, config_id, "lesion", t, v) for t, v in feats.items()]
                    for reference, ref in (("previous", last.get(k)), ("baseline", seen.get(k))):
                        if ref is not None:
                            deltas += [
                                (
                                    track_ids[k],
                                    scan_id,
                                    ref[0],
                                    config_id,
                                    reference,
                                    t,
                                    v - ref[1][t],
                                    (v - ref[1][t]) / ref[1][t] if ref[1][t] else None,
                                    None,
                                )
                                for t, v in feats.items()
                            ]
                    seen.setdefault(k, (scan_id, feats))
                    last[k] = (scan_id, feats)
                for k in range(n_tracks):
                    if gone[k] == j:
                        links.append(
                            (
                                ids["track_links"] + len(links),
                                track_ids[k],
                                scan_id,
                                None,
                                "vanished",
                                None,
                                None,
                                False,
                                now,
                            )
                        )
                if j == 0:
                    baseline_sum = total
                nadir = min(baseline_sum, total) if j else total
                pct = 100.0 * (total - baseline_sum) / baseline_sum if j and baseline_sum else None
                response = "BL" if j == 0 else ("PD" if pct is not None and pct >= 20 else "SD")
                recist.append(
                    (
                        ids["recist_assessments"] + len(recist),
                        scan_id,
                        total,
                        baseline_sum,
                        nadir,
                        pct,
                        None,
                        bool(j and (born == j).any()),
                        response,
                        now,
                    )
                )
                for h in DEFAULT_HORIZONS:
                    risks.append(
                        (
                            pid,
                            scan_id,
                            day,
                            mv_id,
                            h,
                            float(rng.random()),
                            curve if h == curve_horizon else None,
                            fingerprint,
                            now,
                        )
                    )
        _copy_rows(
            s,
            "blobs",
            ("sha256", "kind", "suffix", "size_bytes", "created_at"),
            [*blobs, (model_sha, "model", ".mtm", 1, now)],
        )
        _copy_rows(
            s,
            "feature_configs",
            ("id", "name", "config_sha256", "config", "engine", "engine_version", "created_at"),
            [(config_id, "synthetic", _sha("config", config_id), "{}", "synthetic", "0", now)],
        )
        _copy_rows(
            s,
            "model_versions",
            (
                "id",
                "name",
                "version",
                "endpoint",
                "state",
                "file_sha256",
                "data_fingerprint",
                "features",
                "hyperparameters",
                "metrics",
                "versions",
                "seed",
                "created_at",
            ),
            [
                (
                    mv_id,
                    f"synthetic{mv_id}",
                    1,
                    "metastasis",
                    "promoted",
                    model_sha,
                    "",
                    json.dumps(tags),
                    json.dumps({"kind": "rnn"}),
                    "{}",
                    "{}",
                    seed,
                    now,
                )
            ],
        )
        _copy_rows(
            s,
            "masks",
            (
                "id",
                "scan_id",
                "kind",
                "mask_sha256",
                "source_format",
                "labels",
                "label_names",
                "voxel_count",
                "is_empty",
                "created_at",
            ),
            masks,
        )
        _copy_rows(
            s,
            "registrations",
            (
                "id",
                "moving_scan_id",
                "fixed_scan_id",
                "preset",
                "forward_sha256",
                "inverse_sha256",
                "similarity_before",
                "similarity_after",
                "jacobian_min",
                "folding_fraction",
                "runtime_s",
                "threads",
                "seed",
                "metrics",
                "needs_review",
                "review_reasons",
                "created_at",
            ),
            regs,
        )
        _copy_rows(
            s,
            "lesion_tracks",
            (
                "id",
                "patient_id",
                "number",
                "first_scan_id",
                "parent_track_id",
                "recist_role",
                "recist_override",
                "created_at",
            ),
            tracks,
        )
        _copy_rows(
            s,
            "lesions",
            (
                "id",
                "scan_id",
                "mask_id",
                "label",
                "voxels",
                "volume_mm3",
                "centroid_x",
                "centroid_y",
                "centroid_z",
                "long_axis_mm",
                "short_axis_mm",
                "max_diameter_mm",
                "organ",
                "track_id",
                "created_at",
            ),
            lesions,
        )
        _copy_rows(
            s,
            "track_links",
            (
                "id",
                "track_id",
                "scan_id",
                "lesion_id",
                "change",
                "related_track_id",
                "score",
                "needs_review",
                "created_at",
            ),
            links,
        )
        _copy_rows(
            s,
            "recist_assessments",
            (
                "id",
                "scan_id",
                "sum_mm",
                "baseline_sum_mm",
                "nadir_mm",
                "change_from_baseline_pct",
                "change_from_nadir_pct",
                "new_lesions",
                "response",
                "created_at",
            ),
            recist,
        )
        _copy_rows(s, "feature_values", ("lesion_id", "scan_id", "config_id", "region", "tag", "value"), fvalues)
        _copy_rows(
            s,
            "track_deltas",
            (
                "track_id",
                "scan_id",
                "reference_scan_id",
                "config_id",
                "reference",
                "tag",
                "abs_change",
                "rel_change",
                "change_per_30d",
            ),
            deltas,
        )
        _copy_rows(
            s,
            "risk_scores",
            SCORE_COLUMNS,
            risks,
        )
        _sync_sequences(
            s,
            (
                "masks",
                "registrations",
                "lesion_tracks",
                "lesions",
                "track_links",
                "recist_assessments",
                "feature_configs",
                "model_versions",
            ),
        )
    _analyze(engine)
    return {
        "scans": len(scans),
        "lesions": len(lesions),
        "tracks": len(tracks),
        "track_links": len(links),
        "feature_values": len(fvalues),
        "track_deltas": len(deltas),
        "risk_scores": len(risks),
    }

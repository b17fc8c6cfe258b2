"""Whole patients and cohorts: latent truth -> anatomy -> motion -> scans -> files and truth.json."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, cast

import numpy as np

from tracker.errors import MetatrackError
from tracker.simulator.anatomy import (
    ORGAN_BODY,
    anatomy_geometry,
    lesion_centre_mm,
    render_anatomy,
    sample_anatomy_params,
)
from tracker.simulator.config import SimulationConfig
from tracker.simulator.grid import Grid
from tracker.simulator.latent import (
    STREAM_ANATOMY,
    STREAM_MOTION,
    STREAM_NOISE,
    patient_streams,
    sample_patient,
    unit_ball,
)
from tracker.simulator.lesions import measure_lesion, nominal_diameter
from tracker.simulator.motion import (
    identity_motion,
    nonrigid_displacement,
    rigid_forward,
    sample_motion,
    to_anatomy,
    to_scan,
)
from tracker.simulator.scanner import render_scan, scan_grid

LARGE_MOTION_FACTOR = 2.5
N_NEAR_LESION_LANDMARKS = 40
NEAR_LESION_MM = 15.0
N_MOTION_SAMPLE_POINTS = 4000
PLACEMENT_TRIES = 60
PLACEMENT_GAP_MM = 6.0
PLACEMENT_TIME_SAMPLES = 40


def _max_diameter(lesion: dict[str, Any], days: list[float]) -> float:
    t = np.linspace(0.0, max(days[-1], 1.0), PLACEMENT_TIME_SAMPLES)
    return float(np.max(nominal_diameter(lesion, t)))


def lesion_centres(
    lesions: list[dict[str, Any]], geo: dict[str, Any], days: list[float], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Anatomical centre (mm) of every lesion.

    Free lesions are placed in their host organ, largest first, at their latent position when it keeps every
    other lesion at a clear gap over the planned imaging window (so that only intended merges happen), else at
    the best of several random positions. Anchored lesions sit at a fixed offset from their anchor and count as
    one group with it.
    """
    reach: dict[str, float] = {les["id"]: _max_diameter(les, days) / 2.0 for les in lesions}
    for les in lesions:
        if les["anchor"] is not None:
            a = les["anchor"]
            reach[a] = max(reach[a], float(np.linalg.norm(les["anchor_offset"])) + reach[les["id"]])
    free = sorted((les for les in lesions if les["anchor"] is None), key=lambda les: -reach[les["id"]])
    centres: dict[str, np.ndarray] = {}
    for les in free:
        best, best_gap = None, -np.inf
        for attempt in range(PLACEMENT_TRIES):
            u = np.asarray(les["position"]) if attempt == 0 else np.asarray(unit_ball(rng))
            cand = lesion_centre_mm(geo, les["organ"], les["side"], u)
            gap = min(
                (float(np.linalg.norm(cand - c)) - reach[les["id"]] - reach[o] for o, c in centres.items()),
                default=np.inf,
            )
            if gap > best_gap:
                best, best_gap = cand, gap
            if gap >= PLACEMENT_GAP_MM:
                break
        centres[les["id"]] = cast(np.ndarray, best)  # set on the first try: any gap beats -inf
    for les in lesions:
        if les["anchor"] is not None:
            centres[les["id"]] = centres[les["anchor"]] + np.asarray(les["anchor_offset"])
    return {les["id"]: centres[les["id"]] for les in lesions}


def _body_points(organ: np.ndarray, grid: Grid, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random physical points (jittered voxel centres) inside the body of a label map."""
    iz, iy, ix = np.nonzero(organ >= ORGAN_BODY)
    pick = rng.choice(len(ix), size=min(n, len(ix)), replace=False)
    idx = np.stack([ix[pick], iy[pick], iz[pick]], axis=1) + rng.uniform(-0.5, 0.5, size=(len(pick), 3))
    return grid.index_to_physical(idx)


def simulate_patient(cfg: SimulationConfig, index: int) -> dict[str, Any]:
    """Simulate one patient: returns {"truth": truth dict, "scans": [arrays and grid per scan]}."""
    streams = patient_streams(cfg, index)
    latent = sample_patient(cfg, index)
    fov = cfg.fov_mm
    a_grid = Grid.centred(cfg.shape, cfg.spacing)
    a_params = sample_anatomy_params(streams[STREAM_ANATOMY])
    geo = anatomy_geometry(a_params, fov)
    anatomy = render_anatomy(a_params, a_grid, fov)
    centres = lesion_centres(latent["lesions"], geo, latent["planned_days"], streams[STREAM_ANATOMY])

    rng_m, rng_n = streams[STREAM_MOTION], streams[STREAM_NOISE]
    body_pts = _body_points(anatomy["organ"], a_grid, rng_m, N_MOTION_SAMPLE_POINTS)
    rot_centre = np.array([0.0, geo["body_yc"], 0.0])
    diaphragm = np.array([0.0, geo["body_yc"], geo["z_diaphragm"]])
    factor = LARGE_MOTION_FACTOR if latent["large_motion"] else 1.0

    scans, scan_truth = [], []
    measure_cache: dict[str, object] = {}
    for k, day in enumerate(latent["days"]):
        scanner = cfg.scanners[latent["scanner_index"][k]]
        grid = scan_grid(cfg.shape, cfg.spacing, scanner, cfg.vary_grid)
        if k == 0:
            motion = identity_motion()
        else:
            motion = sample_motion(
                rng_m,
                body_pts,
                rot_centre,
                diaphragm,
                cfg.rigid_translation_mm * factor,
                cfg.rigid_rotation_deg * factor,
                cfg.nonrigid_max_mm,
            )
        out = render_scan(
            anatomy, a_grid, grid, motion, latent["lesions"], centres, day, scanner, rng_n, identity=k == 0
        )
        entry: dict[str, Any] = {
            "index": k,
            "date": latent["dates"][k],
            "day": day,
            "role": "baseline" if k == 0 else "follow-up",
            "scanner": scanner.name,
            "noise_sd": scanner.noise_sd,
            "hu_offset": scanner.hu_offset,
            "grid": grid.to_dict(),
            "transform": motion,
            "labels": {str(lab): ids for lab, ids in out["labels"].items()},
        }
        present, absent = {}, []
        for les in latent["lesions"]:
            meas = measure_lesion(les, centres[les["id"]], day, measure_cache) if les["onset_day"] <= day else None
            nvox = out["n_voxels"].get(les["id"], 0)
            if meas is None or nvox == 0:
                if les["onset_day"] <= day:
                    absent.append(les["id"])
                continue
            vol, cen_anat = meas
            present[les["id"]] = {
                "centroid": to_scan(motion, cen_anat[None, :])[0].tolist(),
                "centroid_baseline": cen_anat.tolist(),
                "volume_mm3": float(vol),
                "organ": les["organ"],
                "n_voxels": nvox,
            }
        entry["lesions"] = present
        entry["absent"] = absent
        if k > 0:
            entry.update(_landmarks(cfg, motion, out["organs"], grid, present, rng_m))
        scans.append({"image": out["image"], "mask": out["mask"], "organs": out["organs"], "grid": grid})
        scan_truth.append(entry)

    lesions_truth: dict[str, dict[str, Any]]
    future: dict[str, dict[str, Any]]
    lesions_truth, future = {}, {}
    for les in latent["lesions"]:
        onset_idx = next((k for k, d in enumerate(latent["days"]) if d >= les["onset_day"]), None)
        record = dict(les, onset_scan_index=onset_idx, center_mm=centres[les["id"]].tolist())
        # lesions that appear only after the last scan drive the hazard but are never imaged
        (lesions_truth if onset_idx is not None else future)[les["id"]] = record
    truth = {
        "patient_id": latent["patient_id"],
        "baseline_date": latent["baseline_date"],
        "time_days": latent["time_days"],
        "event": latent["event"],
        "event_date": latent["event_date"],
        "resistance": latent["resistance"],
        "large_motion": latent["large_motion"],
        "hazard_start_day": latent["hazard_start_day"],
        "admin_end_day": latent["admin_end_day"],
        "planned_days": latent["planned_days"],
        "anatomy": a_params,
        "scanners": latent["scanners"],
        "scans": scan_truth,
        "lesions": lesions_truth,
        "future_lesions": future,
    }
    return {"truth": truth, "scans": scans}


def _landmarks(
    cfg: SimulationConfig,
    motion: dict[str, Any],
    organs: np.ndarray,
    grid: Grid,
    present: dict[str, dict[str, Any]],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Landmark pairs related exactly by psi (scan point q, baseline point psi(q)) and motion summary."""
    q = _body_points(organs, grid, rng, cfg.n_landmarks)
    near = []
    if present:
        ids = sorted(present)
        for j in range(N_NEAR_LESION_LANDMARKS):
            c = np.asarray(present[ids[j % len(ids)]]["centroid"])
            near.append(c + rng.uniform(-NEAR_LESION_MM, NEAR_LESION_MM, size=3))
    q_all = np.concatenate([q, np.asarray(near).reshape(-1, 3)])
    p_all = to_anatomy(motion, q_all)
    disp = np.linalg.norm(nonrigid_displacement(motion, rigid_forward(motion, q)), axis=1)
    return {
        "landmarks": [{"baseline": p.tolist(), "scan": s.tolist()} for p, s in zip(p_all, q_all, strict=True)],
        "rigid": {k: motion[k] for k in ("centre", "angles_deg", "translation")},
        "nonrigid_max_mm": float(disp.max()),
        "nonrigid_mean_mm": float(disp.mean()),
    }


def _patient_job(args: tuple[SimulationConfig, int, Path]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    from tracker.simulator.writer import write_patient

    cfg, index, out_dir = args
    result = simulate_patient(cfg, index)
    rows = write_patient(result, out_dir, cfg.modality)
    return result["truth"], rows


def simulate_cohort(cfg: SimulationConfig, out_dir: Path, progress: Callable[[int, int], None] | None = None) -> Path:
    """Simulate and write the cohort under ``out_dir``; returns the path of ``manifest.csv``."""
    from tracker.simulator.writer import write_cohort_files

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise MetatrackError(f"{out_dir}: simulation output must be a folder, this is a file")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, i, out_dir) for i in range(cfg.n_patients)]
    results: list[tuple[dict[str, Any], list[dict[str, str]]]] = []
    if cfg.workers > 1 and cfg.n_patients > 1:
        with ProcessPoolExecutor(max_workers=min(cfg.workers, cfg.n_patients)) as pool:
            for done, res in enumerate(pool.map(_patient_job, jobs), start=1):
                results.append(res)
                if progress:
                    progress(done, cfg.n_patients)
    else:
        for done, job in enumerate(jobs, start=1):
            results.append(_patient_job(job))
            if progress:
                progress(done, cfg.n_patients)
    return write_cohort_files(cfg, out_dir, results)

"""Writing a simulated cohort: NIfTI images/masks/organ maps (SimpleITK, compressed), manifest, events, truth."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from tracker.simulator.config import SimulationConfig
from tracker.simulator.grid import Grid

TRUTH_SCHEMA_VERSION = 1
MANIFEST_COLUMNS = ["patient_id", "date", "image", "mask", "organs", "modality", "scanner", "role"]
EVENTS_COLUMNS = ["patient_id", "time_days", "event", "event_date"]


def _write_nifti(arr: np.ndarray, grid: Grid, path: Path) -> None:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(grid.spacing)
    img.SetOrigin(grid.origin)
    sitk.WriteImage(img, str(path), True)


def write_patient(result: dict[str, Any], out_dir: Path, modality: str) -> list[dict[str, str]]:
    """Write one patient's scans under ``out_dir/<patient_id>/<date>/``; returns its manifest rows.

    Also records the relative image/mask paths in the patient's truth scans.
    """
    truth = result["truth"]
    pid = truth["patient_id"]
    rows = []
    for entry, scan in zip(truth["scans"], result["scans"], strict=True):
        rel = Path(pid) / entry["date"]
        (out_dir / rel).mkdir(parents=True, exist_ok=True)
        mask = scan["mask"]
        mask = mask.astype(np.uint8) if mask.max(initial=0) < 256 else mask.astype(np.uint16)
        _write_nifti(scan["image"], scan["grid"], out_dir / rel / "image.nii.gz")
        _write_nifti(mask, scan["grid"], out_dir / rel / "mask.nii.gz")
        _write_nifti(scan["organs"].astype(np.uint8), scan["grid"], out_dir / rel / "organs.nii.gz")
        entry["image"] = (rel / "image.nii.gz").as_posix()
        entry["mask"] = (rel / "mask.nii.gz").as_posix()
        entry["organs"] = (rel / "organs.nii.gz").as_posix()
        rows.append(
            {
                "patient_id": pid,
                "date": entry["date"],
                "image": entry["image"],
                "mask": entry["mask"],
                "organs": entry["organs"],
                "modality": modality,
                "scanner": entry["scanner"],
                "role": entry["role"],
            }
        )
    return rows


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def config_dict(cfg: SimulationConfig) -> dict[str, Any]:
    """The configuration as plain JSON data."""
    return dataclasses.asdict(cfg)


def write_cohort_files(
    cfg: SimulationConfig, out_dir: Path, results: list[tuple[dict[str, Any], list[dict[str, str]]]]
) -> Path:
    """Write manifest.csv, events.csv and truth.json for per-patient (truth, manifest rows) results."""
    results = sorted(results, key=lambda r: r[0]["patient_id"])
    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        for _, rows in results:
            w.writerows(sorted(rows, key=lambda r: r["date"]))
    with (out_dir / "events.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=EVENTS_COLUMNS)
        w.writeheader()
        for truth, _ in results:
            w.writerow({k: truth[k] if k != "time_days" else int(truth[k]) for k in EVENTS_COLUMNS})
    truth_all = {
        "schema_version": TRUTH_SCHEMA_VERSION,
        "connectivity": 26,
        "config": config_dict(cfg),
        "patients": {truth["patient_id"]: truth for truth, _ in results},
    }
    with (out_dir / "truth.json").open("w") as fh:
        json.dump(truth_all, fh, default=_json_default)
    return manifest


def load_truth(path: Path) -> dict[str, Any]:
    """Read a cohort's truth.json."""
    with Path(path).open() as fh:
        return json.load(fh)

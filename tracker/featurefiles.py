"""Radiomics for image/mask files outside the database (the pyradiomics-style entry point)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tracker.errors import MetatrackError
from tracker.imageio import MaskContext, read_image, read_mask

BATCH_REQUIRED = ("image", "mask")


@dataclass(frozen=True)
class FeatureJob:
    image: Path
    mask: Path
    label: int | None = None  # None: every non-zero voxel is the ROI
    body_mask: str | None = None  # z-score statistics: a mask file, "auto" (Otsu foreground) or None (whole image)
    rois: tuple[str, ...] = ()  # an RTSTRUCT mask's ROIs (names or regular expressions)
    segments: tuple[str, ...] = ()  # a DICOM SEG mask's segments (numbers, labels or regular expressions)


def extract_files(job: FeatureJob, config: str | Path, threads: int | None = None) -> Any:
    """Validate and read an image and its mask, then extract features of the ROI (one label, or all of them);
    ``threads`` as in ``tracker.radiomics.extract``."""
    import SimpleITK as sitk

    from tracker.radiomics import extract, load_config

    cfg = load_config(str(config))
    if job.body_mask is not None and cfg["normalisation"] != "zscore":
        raise MetatrackError(
            f"{job.image}: a body mask only serves z-score normalisation; config {cfg.get('name')!r} has none"
        )
    loaded = read_image(job.image, beside=[job.mask])
    mask = read_mask(job.mask, loaded.image, MaskContext(loaded.dicom, job.rois, job.segments))
    labels = sitk.GetArrayFromImage(mask.mask)
    if job.label is not None and job.label not in mask.labels:
        raise MetatrackError(f"{job.mask}: no voxels with label {job.label} (labels present: {mask.labels})")
    roi = labels == job.label if job.label is not None else labels > 0
    if not roi.any():
        raise MetatrackError(f"{job.mask}: the mask is empty; there is no region to measure")
    image = sitk.GetArrayFromImage(loaded.image).astype(np.float64)
    sx, sy, sz = (float(v) for v in loaded.image.GetSpacing())
    return extract(image, roi, (sz, sy, sx), cfg, body_mask=_body_mask(job, loaded.image, image), threads=threads)


def _body_mask(job: FeatureJob, grid: Any, image: np.ndarray) -> np.ndarray | None:
    import SimpleITK as sitk

    from tracker.harmonisation import foreground_mask

    if job.body_mask is None:
        return None
    if job.body_mask.lower() == "auto":
        try:
            return foreground_mask(image)
        except MetatrackError as exc:
            raise MetatrackError(f"{job.image}: {exc}") from exc
    body = sitk.GetArrayFromImage(read_mask(Path(job.body_mask), grid).mask) > 0
    if not body.any():
        raise MetatrackError(f"{job.body_mask}: the body mask is empty")
    return body


def batch_row(job: FeatureJob, config: str | Path, threads: int | None = None) -> dict[str, Any]:
    """One row of a batch: the pair, its label, its feature values (non-finite as None) and its error (None, or
    the message of the ``MetatrackError`` that stopped it: one pair's failure does not stop the batch)."""
    row = failed_row(job, None)
    try:
        fs = extract_files(job, config, threads)
    except MetatrackError as exc:
        row["error"] = str(exc)
        return row
    row.update({k: (v if np.isfinite(v) else None) for k, v in fs.values.items()})
    return row


def failed_row(job: FeatureJob, error: str | None) -> dict[str, Any]:
    """A batch row without feature values: the pair, its label and ``error``."""
    return {"image": str(job.image), "mask": str(job.mask), "label": job.label, "error": error}


def read_batch(path: Path) -> list[FeatureJob]:
    """Image/mask pairs from a CSV (image, mask[, label][, body_mask]); relative paths are relative to the CSV's
    folder; body_mask is a mask file or ``auto``."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MetatrackError(f"{path}: cannot read the batch file ({exc})") from exc
    if rows and any(c not in rows[0] for c in BATCH_REQUIRED):
        raise MetatrackError(f"{path}: batch file needs the columns image and mask")
    jobs = []
    for i, r in enumerate(rows, start=2):
        label = (r.get("label") or "").strip()
        if label and not label.isdigit():
            raise MetatrackError(f"{path}:{i}: label {label!r} is not a non-negative integer")
        body = (r.get("body_mask") or "").strip() or None
        if body is not None and body.lower() != "auto":
            body = str(path.parent / body)
        jobs.append(FeatureJob(path.parent / r["image"].strip(), path.parent / r["mask"].strip(),
                               int(label) if label else None, body))  # fmt: skip
    return jobs

"""Lesion snapshots: per track, an axial slice through its centroid at every scan, in the baseline frame.

Each scan's image is resampled onto a small axial plane of the baseline grid through the scan's stored forward
transforms (baseline points -> scan points), so every panel shows the same anatomy; the plane passes through the
track's centroid at that scan mapped into the baseline frame (its inverse transforms), or through the nearest
sighting's centroid where the track was not seen. Stored files are read here; nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tracker.reports.data import SnapshotPanel, TrackSnapshots

if TYPE_CHECKING:
    import SimpleITK as sitk

PANEL_PIXELS = 96
WINDOW_MIN_MM = 60.0
WINDOW_MAX_MM = 160.0
WINDOW_DIAMETERS = 4.0  # the panel spans this many equivalent-sphere diameters of the track's largest sighting
HU_AIR = -1000.0


@dataclass(frozen=True)
class ScanImages:
    """One processed scan's stored files; `forward`/`inverse` are empty for the baseline."""

    scan_id: int
    date: str
    image: Path
    mask: Path | None
    forward: list[Path] = field(default_factory=list)
    inverse: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Sighting:
    """A track's lesion at one scan: its label in that scan's mask, LPS centroid (mm), volume and change."""

    scan_id: int
    label: int
    centroid_mm: tuple[float, float, float]
    volume_mm3: float
    change: str | None


def _window_mm(sightings: Sequence[Sighting]) -> float:
    volume = max((s.volume_mm3 for s in sightings), default=0.0)
    diameter = (6.0 * volume / np.pi) ** (1.0 / 3.0)
    return float(np.clip(WINDOW_DIAMETERS * diameter, WINDOW_MIN_MM, WINDOW_MAX_MM))


def _plane(baseline: sitk.Image, centre: np.ndarray, width_mm: float) -> sitk.Image:
    """A (PANEL_PIXELS, PANEL_PIXELS, 1) grid on the baseline's axes, centred on `centre`."""
    import SimpleITK as sitk

    step = width_mm / PANEL_PIXELS
    direction = np.asarray(baseline.GetDirection(), dtype=np.float64).reshape(3, 3)
    half = (PANEL_PIXELS - 1) / 2.0 * step
    origin = centre - direction @ np.array([half, half, 0.0])
    plane = sitk.Image(PANEL_PIXELS, PANEL_PIXELS, 1, sitk.sitkFloat32)
    plane.SetSpacing((step, step, 1.0))
    plane.SetDirection(tuple(direction.ravel()))
    plane.SetOrigin(tuple(origin))
    return plane


def track_snapshots(scans: Sequence[ScanImages], tracks: Mapping[int, Sequence[Sighting]]) -> list[TrackSnapshots]:
    """Snapshots of every track (by number) at every scan in `scans` (date order, baseline first)."""
    import SimpleITK as sitk

    from registration.transforms import load

    if not scans or not tracks:
        return []
    baseline = sitk.ReadImage(str(scans[0].image))
    images = {s.scan_id: sitk.Cast(sitk.ReadImage(str(s.image)), sitk.sitkFloat32) for s in scans}
    masks = {s.scan_id: sitk.ReadImage(str(s.mask)) for s in scans if s.mask is not None}
    forward = {s.scan_id: load(s.forward) if s.forward else sitk.Transform(3, sitk.sitkIdentity) for s in scans}
    inverse = {s.scan_id: load(s.inverse) if s.inverse else None for s in scans}
    order = {s.scan_id: k for k, s in enumerate(scans)}
    out = []
    for number, sightings in sorted(tracks.items()):
        seen = sorted((s for s in sightings if s.scan_id in order), key=lambda s: order[s.scan_id])
        if not seen:
            continue
        width = _window_mm(seen)
        centres = {}
        for s in seen:
            inv = inverse[s.scan_id]
            centres[s.scan_id] = np.asarray(inv.TransformPoint(s.centroid_mm) if inv else s.centroid_mm)
        by_scan = {s.scan_id: s for s in seen}
        panels = []
        for scan in scans:
            k = order[scan.scan_id]
            nearest = min(seen, key=lambda s: (abs(order[s.scan_id] - k), order[s.scan_id] > k))
            plane = _plane(baseline, centres[nearest.scan_id], width)
            image = sitk.Resample(images[scan.scan_id], plane, forward[scan.scan_id], sitk.sitkLinear, HU_AIR)
            sighting = by_scan.get(scan.scan_id)
            lesion = np.zeros((PANEL_PIXELS, PANEL_PIXELS), dtype=bool)
            if sighting is not None and scan.scan_id in masks:
                labels = sitk.Resample(masks[scan.scan_id], plane, forward[scan.scan_id], sitk.sitkNearestNeighbor, 0)
                lesion = sitk.GetArrayFromImage(labels)[0] == sighting.label
            half = width / 2.0
            panels.append(
                SnapshotPanel(
                    scan_date=scan.date,
                    image=sitk.GetArrayFromImage(image)[0],
                    lesion=lesion,
                    extent_mm=(-half, half, half, -half),
                    change=sighting.change if sighting else None,
                )
            )
        out.append(TrackSnapshots(number=number, panels=panels))
    return out

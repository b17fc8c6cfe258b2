"""Lesion snapshots through a known registration: a follow-up moved by a known shift shows the same anatomy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from registration.transforms import write_affine
from tracker.reports.snapshots import PANEL_PIXELS, ScanImages, Sighting, track_snapshots

SPACING_MM = 2.0
SHIFT_MM = (6.0, -4.0, 2.0)  # whole voxels, so linear resampling reproduces the baseline exactly
LESION_IJK = (20, 22, 10)  # voxel index (x, y, z) of the lesion centre at baseline


def _body(shift_vox: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """HU image and label map (z, y, x): a 'lesion' sphere and an asymmetric 'organ' block, shifted."""
    z, y, x = np.mgrid[:20, :44, :40]
    cx, cy, cz = (c + s for c, s in zip(LESION_IJK, shift_vox, strict=True))
    lesion = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= 9
    organ = (x >= cx - 12) & (x < cx - 6) & (y >= cy - 3) & (y < cy + 8)
    hu = np.where(lesion, 80.0, np.where(organ, 200.0, -50.0)) + 0.5 * (x - shift_vox[0])  # no two columns alike
    return hu.astype(np.float32), lesion.astype(np.uint8)


def _write(array: np.ndarray, path: Path) -> Path:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((SPACING_MM,) * 3)
    img.SetOrigin((-40.0, -44.0, -20.0))
    sitk.WriteImage(img, str(path))
    return path


def _point(ijk: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple(o + SPACING_MM * i for o, i in zip((-40.0, -44.0, -20.0), ijk, strict=True))  # type: ignore[return-value]


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> list[ScanImages]:
    root = tmp_path_factory.mktemp("snap")
    shift_vox = tuple(int(s / SPACING_MM) for s in SHIFT_MM)
    out = []
    for k, shift in enumerate([(0, 0, 0), shift_vox]):
        hu, labels = _body(shift)  # type: ignore[arg-type]
        out.append((_write(hu, root / f"img{k}.nii.gz"), _write(labels, root / f"mask{k}.nii.gz")))
    forward = write_affine(sitk.TranslationTransform(3, SHIFT_MM), root / "forward.tfm")  # baseline -> follow-up
    inverse = write_affine(sitk.TranslationTransform(3, tuple(-s for s in SHIFT_MM)), root / "inverse.tfm")
    return [
        ScanImages(1, "2024-01-01", out[0][0], out[0][1]),
        ScanImages(2, "2024-03-01", out[1][0], out[1][1], [forward], [inverse]),
    ]


def _sightings(both: bool) -> list[Sighting]:
    base = Sighting(1, 1, _point(LESION_IJK), 113.0 * 8, "new")
    moved = tuple(c + s for c, s in zip(base.centroid_mm, SHIFT_MM, strict=True))
    return [base, Sighting(2, 1, moved, 113.0 * 8, "persistent")] if both else [base]  # type: ignore[arg-type]


def test_same_anatomy_at_every_scan(scans: list[ScanImages]) -> None:
    (track,) = track_snapshots(scans, {3: _sightings(both=True)})
    assert track.number == 3 and [p.change for p in track.panels] == ["new", "persistent"]
    first, second = track.panels
    np.testing.assert_allclose(second.image, first.image, atol=1e-3)
    np.testing.assert_array_equal(second.lesion, first.lesion)


def test_the_slice_is_centred_on_the_lesion(scans: list[ScanImages]) -> None:
    (track,) = track_snapshots(scans, {1: _sightings(both=True)})
    for panel in track.panels:
        rows, cols = np.nonzero(panel.lesion)
        centre = (PANEL_PIXELS - 1) / 2.0
        assert abs(rows.mean() - centre) < 1.0 and abs(cols.mean() - centre) < 1.0
        # the widest section of a sphere of radius 3 voxels (6 mm): about pi * 6^2 mm^2
        pixel_mm2 = ((panel.extent_mm[1] - panel.extent_mm[0]) / PANEL_PIXELS) ** 2
        assert panel.lesion.sum() * pixel_mm2 == pytest.approx(np.pi * 6.0**2, rel=0.3)


def test_a_scan_without_the_track_shows_the_place_without_a_contour(scans: list[ScanImages]) -> None:
    (track,) = track_snapshots(scans, {1: _sightings(both=False)})
    first, second = track.panels
    assert second.change is None and not second.lesion.any()
    np.testing.assert_allclose(second.image, first.image, atol=1e-3)  # the same place, through the registration

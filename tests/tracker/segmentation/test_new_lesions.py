"""The pipeline's new lesions on a follow-up without a mask (`tracker.pipeline._find_lesions` with the model): a
structure the model marks on the previous scan, where that scan has no lesion, is not new; a lesion that appears
is; a lesion of the previous scan is found again."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest

from tests.tracker.segmentation.spheres import CFG, SHAPE, SPACING, cohort
from tracker.pipeline import _find_lesions
from tracker.records import LesionSource, PatientContext, ScanFiles, SegmentationRef, Settings

# sphere centres (z, y, x mm): A is in both scans, outside the baseline mask (unless a test puts it there); B is the
# baseline's lesion and still there; C appears at the follow-up
A, B, C = (48.0, 36.0, 36.0), (48.0, 36.0, 92.0), (48.0, 92.0, 64.0)
RADIUS_MM = 11.0


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tracker.segmentation.training import train_segmentation

    path = tmp_path_factory.mktemp("model") / "spheres.model"
    path.write_bytes(train_segmentation(cohort(4, 2, seed=0), CFG).to_bytes())
    return path


def sphere(centre: tuple[float, float, float]) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < RADIUS_MM**2


def write(array: np.ndarray, path: Path) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(reversed(SPACING)))
    sitk.WriteImage(img, str(path))
    return path


def scan_files(tmp: Path, index: int, centres: list, seed: int, mask: list | None) -> ScanFiles:
    """Noise (sd 10) with +40 spheres at ``centres``; its mask has ``mask``'s spheres (None: no mask)."""
    import SimpleITK as sitk

    image = np.random.default_rng(seed).normal(0.0, 10.0, SHAPE).astype(np.float32)
    for c in centres:
        image[sphere(c)] += 40.0
    identity = tmp / "identity.tfm"
    sitk.WriteTransform(sitk.TranslationTransform(3), str(identity))
    labels = np.zeros(SHAPE, np.uint16)
    for k, c in enumerate(mask or [], start=1):
        labels[sphere(c)] = k
    return ScanFiles(
        scan_id=index + 1,
        index=index,
        scan_date=date(2024, 1 + 3 * index, 1),
        modality="CT",
        image=write(image, tmp / f"image{index}.nii.gz"),
        mask=write(labels, tmp / f"mask{index}.nii.gz") if mask is not None else None,
        forward=[identity] if index else [],
        inverse=[identity] if index else [],
    )


def detected(tmp: Path, model: Path, baseline_mask: list) -> tuple[list[np.ndarray], list[str]]:
    """The detected lesions' voxels on the follow-up (A, B and C there; the baseline has A and B, ``baseline_mask``
    drawn) and the scan's review reasons."""
    import SimpleITK as sitk

    scans = [scan_files(tmp, 0, [A, B], seed=1, mask=baseline_mask), scan_files(tmp, 1, [A, B, C], seed=2, mask=None)]
    ctx = PatientContext(
        external_id="P",
        scans=scans,
        open_tracks=[],
        next_track_number=2,
        targets={},
        non_targets={},
        nadir_mm=None,
        baseline_sum_mm=None,
        previous_patient_features=None,
        baseline_patient_features=None,
        segmentation=SegmentationRef(1, model),
    )
    found = _find_lesions(ctx, scans[1], sitk.ReadImage(str(scans[1].image)), {}, Settings(propagation=False))
    assert {source for source, _ in found.sources.values()} <= {LesionSource.DETECTED}
    return [found.labels == label for label in sorted(found.sources)], found.review_reasons


def which(regions: list[np.ndarray]) -> list[str]:
    return sorted(name for r in regions for name, c in (("A", A), ("B", B), ("C", C)) if (r & sphere(c)).any())


def test_a_structure_marked_on_the_previous_scan_outside_its_lesions_is_not_new(
    tmp_path: Path, model_file: Path
) -> None:
    regions, reasons = detected(tmp_path, model_file, baseline_mask=[B])
    assert which(regions) == ["B", "C"]  # B: the baseline's lesion found again; C: new; A: the model's, before too
    assert all(r.sum() > 0.5 * sphere(A).sum() for r in regions)
    assert reasons[-1] == (
        "1 segmentation model finding(s) not taken as new lesions: reported by the model on the previous scan too, "
        "where that scan has no lesion"
    )


def test_the_same_structure_is_found_where_the_previous_scan_had_it_as_a_lesion(
    tmp_path: Path, model_file: Path
) -> None:
    regions, reasons = detected(tmp_path, model_file, baseline_mask=[A, B])
    assert which(regions) == ["A", "B", "C"]
    assert len(reasons) == 1 and reasons[0].startswith("new lesions found by the segmentation model: ")

"""Training on bright spheres in noise: a held-out patient's Dice, determinism, the model file, thresholds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.tracker.segmentation.spheres import CFG, SPACING, cohort, sphere_scan
from tracker.errors import MetatrackError
from tracker.segmentation import SEGMENTATION_KIND
from tracker.segmentation.config import SegmentationExample
from tracker.segmentation.inference import intensity_window
from tracker.segmentation.model import segmentation_model_from_bytes
from tracker.segmentation.training import (
    _prepare,
    choose_thresholds,
    fp_rate_bound,
    split_patients,
    train_segmentation,
)


@pytest.fixture(scope="module")
def trained():
    return train_segmentation(cohort(4, 2, seed=0), CFG)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_held_out_patient_dice(trained) -> None:
    rng = np.random.default_rng(99)
    scores = []
    for _ in range(2):
        image, labels = sphere_scan(rng)
        prob = trained.predict_probability(image, SPACING, device="cpu")
        assert prob.shape == image.shape and prob.dtype == np.float32
        scores.append(dice(prob > trained.threshold, labels > 0))
    assert min(scores) > 0.75, scores


def test_metadata_and_thresholds(trained) -> None:
    meta = trained.metadata
    assert trained.kind == SEGMENTATION_KIND and trained.features == []
    assert trained.work_spacing == [4.0, 4.0, 4.0] and trained.patch == [16, 16, 16]
    assert trained.threshold in CFG.thresholds and trained.min_volume_mm3 in CFG.min_volumes_mm3
    assert set(meta["versions"]) == {"torch", "monai"} and meta["seed"] == 0 and len(meta["data_fingerprint"]) == 64
    assert meta["metrics"]["lesion_recall"] == 1.0 and meta["metrics"]["fp_per_scan"] <= CFG.max_fp_per_scan
    lo, hi = trained.window  # sphere voxels 40 +- 10 (quartiles ~33, ~47) widened by 2 IQRs: ~6..74
    assert 0.0 < lo < 12.0 and 68.0 < hi < 80.0


def test_bytes_round_trip(trained) -> None:
    data = trained.to_bytes()
    again = segmentation_model_from_bytes(data)
    assert again.to_bytes() == data
    image, _ = sphere_scan(np.random.default_rng(5))
    np.testing.assert_array_equal(
        again.predict_probability(image, SPACING, device="cpu"), trained.predict_probability(image, SPACING, "cpu")
    )
    assert (again.threshold, again.min_volume_mm3, again.window) == (
        trained.threshold,
        trained.min_volume_mm3,
        trained.window,
    )


def test_other_spacing_comes_back_on_its_grid(trained) -> None:
    image, labels = sphere_scan(np.random.default_rng(6))
    fine = np.repeat(image, 2, axis=0)  # the same anatomy at 2 mm slices
    prob = trained.predict_probability(fine, (2.0, 4.0, 4.0), device="cpu")
    assert prob.shape == fine.shape
    assert dice(prob[::2] > trained.threshold, labels > 0) > 0.7


def test_same_seed_same_weights() -> None:
    cfg = dataclasses.replace(CFG, max_epochs=1, min_epochs=1, val_every=1, samples_per_scan=2)
    examples = cohort(3, 1, seed=1)
    a = train_segmentation(examples, cfg)
    b = train_segmentation(examples, cfg)
    for (name, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert bool((x == y).all()), name
    assert a.metadata["data_fingerprint"] == b.metadata["data_fingerprint"]
    c = train_segmentation(examples, dataclasses.replace(cfg, seed=1))
    pairs = zip(a.net.state_dict().values(), c.net.state_dict().values(), strict=True)
    assert any(not bool((x == y).all()) for x, y in pairs)


def test_split_keeps_patients_whole_and_needs_two() -> None:
    examples = cohort(5, 2, seed=2)
    train, val = split_patients(examples, 0.2, seed=3)
    assert len({e.patient for e in val}) == 1 and not {e.patient for e in train} & {e.patient for e in val}
    with pytest.raises(MetatrackError, match="at least 2 patients"):
        split_patients(examples[:2], 0.2, seed=3)


def test_thresholds_maximise_recall_within_the_false_positive_budget() -> None:
    labels = np.zeros((20, 20, 20), np.int16)
    labels[2:8, 2:8, 2:8] = 1  # 216 voxels of 8 mm3: 13.8 mm equivalent diameter
    prob = np.zeros(labels.shape, np.float32)
    prob[labels > 0] = 0.6  # found only below 0.6
    prob[14:16, 14:16, 14:16] = 0.8  # a false positive of 64 mm3, above every threshold
    example = SegmentationExample("P", np.zeros(labels.shape, np.float32), (2.0, 2.0, 2.0), labels)
    cfg = dataclasses.replace(CFG, thresholds=(0.5, 0.7), min_volumes_mm3=(0.0, 100.0), max_fp_per_scan=0.5)
    best = choose_thresholds([prob], [example], cfg)
    assert (best.threshold, best.min_volume_mm3, best.recall, best.false_positives) == (0.5, 100.0, 1.0, 0)
    assert best.dice == (1.0,)


def test_the_false_positive_bound_is_strict_on_few_scans() -> None:
    assert fp_rate_bound(0, 1, 0.8) == pytest.approx(np.log(5.0))  # P(0 | rate) = 0.2
    assert fp_rate_bound(3, 6, 0.0) == 0.5  # confidence 0: the observed rate
    # 0.5 per scan allowed: 1 false positive on 8 scans, not 2; 40 on 100 scans, not 45
    assert fp_rate_bound(1, 8, 0.8) <= 0.5 < fp_rate_bound(2, 8, 0.8)
    assert fp_rate_bound(40, 100, 0.8) <= 0.5 < fp_rate_bound(45, 100, 0.8)


def test_few_validation_scans_choose_fewer_false_positives() -> None:
    """Four scans, each with a 13.8 mm lesion: at threshold 0.5 all four found and one false positive (0.25 per
    scan, within 0.5 as observed but not at its bound); at 0.7 the two brighter lesions and none."""
    examples, probs = [], []
    for k in range(4):
        labels = np.zeros((20, 20, 20), np.int16)
        labels[2:8, 2:8, 2:8] = 1
        prob = np.zeros(labels.shape, np.float32)
        prob[labels > 0] = 0.8 if k < 2 else 0.6
        if k == 0:
            prob[14:16, 14:16, 14:16] = 0.6
        examples.append(SegmentationExample(f"P{k}", np.zeros(labels.shape, np.float32), (2.0, 2.0, 2.0), labels))
        probs.append(prob)
    cfg = dataclasses.replace(CFG, thresholds=(0.5, 0.7), min_volumes_mm3=(0.0,), max_fp_per_scan=0.5)
    best = choose_thresholds(probs, examples, cfg)
    assert (best.threshold, best.recall, best.false_positives) == (0.7, 0.5, 0)
    best = choose_thresholds(probs, examples, dataclasses.replace(cfg, fp_bound_confidence=0.0))
    assert (best.threshold, best.recall, best.false_positives) == (0.5, 1.0, 1)


def test_a_blob_over_everything_finds_nothing() -> None:
    labels = np.zeros((20, 20, 20), np.int16)
    labels[2:8, 2:8, 2:8] = 1
    prob = np.full(labels.shape, 0.9, np.float32)  # one component over the whole scan
    example = SegmentationExample("P", np.zeros(labels.shape, np.float32), (2.0, 2.0, 2.0), labels)
    cfg = dataclasses.replace(CFG, thresholds=(0.5,), min_volumes_mm3=(0.0,))
    best = choose_thresholds([prob], [example], cfg)
    assert (best.recall, best.false_positives, best.dice) == (0.0, 1, ())


def test_intensity_window_comes_from_the_lesions_not_the_body() -> None:
    image = np.full((10, 10, 101), -1000.0, np.float32)  # air and lung around the lesion do not widen the window
    labels = np.zeros(image.shape, np.int16)
    image[5, 5, :] = np.arange(101.0)  # lesion voxels 0..100: quartiles 25 and 75, IQR 50
    labels[5, 5, :] = 1
    assert intensity_window([image], [labels], (25.0, 75.0), 2.0) == (-75.0, 175.0)
    assert intensity_window([image], [labels], (0.0, 100.0), 0.0) == (0.0, 100.0)
    lo, hi = intensity_window([image], [np.zeros_like(labels)], (0.0, 100.0), 0.0)  # no lesion: every voxel
    assert (lo, hi) == (-1000.0, 100.0)


def test_background_patches_centre_on_tissue_inside_the_window() -> None:
    image = np.full((16, 16, 16), -1000.0, np.float32)  # air: clips to the window's floor
    image[:, :, 8:] = 50.0  # tissue inside the window
    labels = np.zeros(image.shape, np.int16)
    labels[4:6, 4:6, 10:12] = 1
    d = _prepare(SegmentationExample("P", image, SPACING, labels), SPACING, (0.0, 100.0), (16, 16, 16))
    bg = np.asarray(d["label_bg_indices"])
    assert bg.size == 16 * 16 * 8 - 8 and (np.asarray(d["image"]).ravel()[bg] == 0.5).all()
    assert np.asarray(d["label_fg_indices"]).size == 8

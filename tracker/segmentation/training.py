"""Training a segmentation model on labelled scans: patches around lesions and background, DiceCE, Adam, early
stopping on the validation patients, detection thresholds chosen on them.

Deterministic for a seed on CPU: MONAI's ``set_determinism``, ``torch.use_deterministic_algorithms``, a fixed
torch thread count (``cfg.threads``) and no worker processes; the same examples and settings give the same
weights bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tracker.errors import MetatrackError
from tracker.segmentation.components import CONNECTIVITY, equivalent_diameter_mm
from tracker.segmentation.config import SegmentationConfig, SegmentationExample
from tracker.segmentation.inference import (
    intensity_window,
    patch_voxels,
    plain,
    scale_window,
    sliding_probability,
    to_working_grid,
    working_spacing,
)
from tracker.segmentation.model import SegmentationModel, build_net

EpochProgress = Callable[[int, int, float], None]
MIN_HIT_DICE = 0.1  # a blob over half the scan touches every lesion: touching alone is not finding


@dataclass(frozen=True)
class Detection:
    """Lesion-level results on some scans at one (threshold, minimum volume): lesions at least
    ``cfg.min_diameter_mm`` found (Dice >= :data:`MIN_HIT_DICE` with the kept components touching it), kept
    components mostly outside every lesion (less than :data:`MIN_HIT_DICE` of their voxels in one), and the Dice
    of each found lesion with the components touching it."""

    threshold: float
    min_volume_mm3: float
    lesions: int
    found: int
    false_positives: int
    scans: int
    dice: tuple[float, ...]

    @property
    def recall(self) -> float:
        return self.found / self.lesions if self.lesions else float("nan")

    @property
    def fp_per_scan(self) -> float:
        return self.false_positives / self.scans if self.scans else float("nan")


def split_patients(
    examples: Sequence[SegmentationExample], val_fraction: float, seed: int
) -> tuple[list[SegmentationExample], list[SegmentationExample]]:
    """(training, validation) examples, whole patients on one side (a seeded draw of at least one patient)."""
    patients = sorted({e.patient for e in examples})
    if len(patients) < 2:
        raise MetatrackError(
            f"segmentation training needs scans of at least 2 patients with lesion masks (found {len(patients)})"
        )
    n_val = min(len(patients) - 1, max(1, round(val_fraction * len(patients))))
    order = np.random.default_rng(seed).permutation(len(patients))
    val = {patients[i] for i in order[:n_val]}
    return [e for e in examples if e.patient not in val], [e for e in examples if e.patient in val]


def data_fingerprint(examples: Sequence[SegmentationExample]) -> str:
    """sha256 over the examples' digests (their content hashes; the arrays' bytes where none is given)."""
    parts = []
    for e in examples:
        if e.digest:
            parts.append(e.digest)
        else:
            h = hashlib.sha256(np.ascontiguousarray(e.image).tobytes())
            h.update(np.ascontiguousarray(e.lesions).tobytes())
            parts.append(h.hexdigest())
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


@contextlib.contextmanager
def deterministic(seed: int, threads: int, cpu: bool) -> Iterator[None]:
    """Seeded, deterministic torch/MONAI (deterministic algorithms and a fixed thread count on CPU); the
    process's thread count and algorithm setting are restored afterwards."""
    import torch
    from monai.utils import set_determinism

    threads_before = torch.get_num_threads()
    det_before = torch.are_deterministic_algorithms_enabled()
    set_determinism(seed=seed)
    if cpu:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(det_before)
        set_determinism(seed=None)


def _prepare(e: SegmentationExample, work: Sequence[float], window: Sequence[float], patch: Sequence[int]) -> dict:
    """The example on the working grid: windowed image and binary label (1, z, y, x), padded to the patch, with
    the foreground/background indices the patch sampler draws from (background: unclipped voxels only)."""
    from monai.transforms import FgBgToIndicesd, SpatialPadd

    image = scale_window(to_working_grid(np.asarray(e.image, np.float32), e.spacing_zyx, work), window)
    label = to_working_grid((np.asarray(e.lesions) > 0).astype(np.float32), e.spacing_zyx, work, label=True)
    d = SpatialPadd(["image", "label"], spatial_size=list(patch))({"image": image, "label": label})
    d = {k: plain(v) for k, v in d.items()}
    # background patches centre on voxels inside the window (above its clipped floor): the tissue a lesion can be
    # mistaken for, not the air, lung or fat that clips to 0
    return dict(FgBgToIndicesd("label", image_key="image", image_threshold=0.0)(d))


def _sampler(cfg: SegmentationConfig, patch: Sequence[int]) -> Any:
    from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd

    keys = ["image", "label"]
    steps: list[Any] = [
        RandCropByPosNegLabeld(
            keys,
            label_key="label",
            spatial_size=list(patch),
            pos=cfg.pos_neg[0],
            neg=cfg.pos_neg[1],
            num_samples=cfg.samples_per_scan,
            fg_indices_key="label_fg_indices",
            bg_indices_key="label_bg_indices",
        )
    ]
    if cfg.flips:
        steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    sampler = Compose(steps)
    sampler.set_random_state(seed=cfg.seed)
    return sampler


def _loss(name: str) -> Any:
    """Dice (over the whole batch: a background patch alone has no Dice to learn from) plus cross-entropy or focal
    loss, on sigmoid outputs."""
    from monai.losses import DiceCELoss, DiceFocalLoss

    if name == "dice_focal":
        return DiceFocalLoss(sigmoid=True, batch=True)
    return DiceCELoss(sigmoid=True, batch=True)


def _pooled_dice(
    net: Any, prepared: Sequence[dict], patch: Sequence[int], stride: int, overlap: float, device: Any
) -> float:
    """Voxel Dice at probability 0.5 pooled over the validation scans (on the working grid)."""
    inter = total = 0.0
    net.eval()
    for d in prepared:
        pred = sliding_probability(net, d["image"], patch, stride, overlap, device) > 0.5
        truth = d["label"] > 0.5
        inter += float((pred & truth).sum())
        total += float(pred.sum() + truth.sum())
    return 2.0 * inter / total if total else 1.0


def train_segmentation(
    examples: Sequence[SegmentationExample], cfg: SegmentationConfig, progress: EpochProgress | None = None
) -> SegmentationModel:
    """Train a 3-D U-Net on labelled scans and choose its detection thresholds on the validation patients."""
    import torch

    started = time.perf_counter()
    train_ex, val_ex = split_patients(examples, cfg.val_fraction, cfg.seed)
    work = working_spacing([e.spacing_zyx for e in train_ex], cfg.patch_mm, cfg.max_patch_voxels)
    patch = patch_voxels(cfg.patch_mm, work, cfg.stride)
    window = intensity_window(
        [e.image for e in train_ex],
        [e.lesions for e in train_ex],
        cfg.window_percentiles,
        cfg.window_margin_iqr,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    history: list[float] = []
    with deterministic(cfg.seed, cfg.threads, cpu=device.type == "cpu"):
        train_data = [_prepare(e, work, window, patch) for e in train_ex]
        val_data = [_prepare(e, work, window, patch) for e in val_ex]
        net = build_net(cfg.channels, cfg.num_res_units).to(device)
        optimiser = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
        loss_fn = _loss(cfg.loss)
        sampler = _sampler(cfg, patch)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        best_dice, best_epoch, best_state, checks_since = -1.0, 0, copy.deepcopy(net.state_dict()), 0
        epoch = 0
        for epoch in range(1, cfg.max_epochs + 1):
            net.train()
            patches = [p for d in train_data for p in sampler(d)]
            order = torch.randperm(len(patches), generator=shuffle).tolist()
            losses = []
            for start in range(0, len(order), cfg.batch_size):
                batch = [patches[i] for i in order[start : start + cfg.batch_size]]
                if len(batch) < 2:  # batch norm needs two samples
                    continue
                x = torch.stack([plain(b["image"]) for b in batch]).to(device)
                y = torch.stack([plain(b["label"]) for b in batch]).to(device)
                optimiser.zero_grad()
                loss = loss_fn(net(x), y)
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
            mean_loss = float(np.mean(losses)) if losses else float("nan")
            if epoch % cfg.val_every == 0 or epoch == cfg.max_epochs:
                dice = _pooled_dice(net, val_data, patch, cfg.stride, cfg.overlap, device)
                history.append(round(dice, 4))
                if dice > best_dice:
                    best_dice, best_epoch, best_state, checks_since = dice, epoch, copy.deepcopy(net.state_dict()), 0
                else:
                    checks_since += 1
            if progress is not None:
                progress(epoch, cfg.max_epochs, mean_loss)
            if epoch >= cfg.min_epochs and checks_since >= cfg.patience:
                break
        net.load_state_dict(best_state)
        net.eval()
    model = SegmentationModel(
        net=net.cpu(),
        channels=list(cfg.channels),
        num_res_units=cfg.num_res_units,
        work_spacing=work,
        patch=patch,
        window=list(window),
        threshold=0.5,
        min_volume_mm3=0.0,
        overlap=cfg.overlap,
    )
    probabilities = [model.predict_probability(e.image, e.spacing_zyx, device=str(device)) for e in val_ex]
    chosen = choose_thresholds(probabilities, val_ex, cfg)
    model.threshold, model.min_volume_mm3 = chosen.threshold, chosen.min_volume_mm3
    metrics = {
        "val_dice": best_dice,
        "lesion_recall": chosen.recall,
        "fp_per_scan": chosen.fp_per_scan,
        "lesion_dice_median": float(np.median(chosen.dice)) if chosen.dice else float("nan"),
        "val_lesions": chosen.lesions,
        "best_epoch": best_epoch,
        "epochs": epoch,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    model.metadata = {
        "hyperparameters": {**cfg.to_dict(), "network": "monai.networks.nets.UNet"},
        "metrics": metrics,
        "data_fingerprint": data_fingerprint(examples),
        "versions": {lib: importlib.metadata.version(lib) for lib in ("torch", "monai")},
        "seed": cfg.seed,
        "device": device.type,
        "validation_dice_history": history,
        "train_patients": len({e.patient for e in train_ex}),
        "val_patients": len({e.patient for e in val_ex}),
        "train_scans": len(train_ex),
        "threshold": chosen.threshold,
        "min_volume_mm3": chosen.min_volume_mm3,
    }
    return model


def detections(
    probabilities: Sequence[np.ndarray], examples: Sequence[SegmentationExample], cfg: SegmentationConfig
) -> list[Detection]:
    """Lesion-level results of every (threshold, minimum volume) of ``cfg`` on these scans."""
    from scipy import ndimage

    counts: dict[tuple[float, float], list[Any]] = {}
    for prob, e in zip(probabilities, examples, strict=True):
        truth = np.asarray(e.lesions)
        voxel = float(np.prod(e.spacing_zyx))
        ids, sizes = np.unique(truth[truth > 0], return_counts=True)
        big = {
            int(i): int(n)
            for i, n in zip(ids, sizes, strict=True)
            if equivalent_diameter_mm(n * voxel) >= cfg.min_diameter_mm
        }
        for thr in cfg.thresholds:
            comp, n = ndimage.label(prob > thr, structure=CONNECTIVITY)
            comp_size = np.bincount(comp.ravel(), minlength=n + 1)
            in_lesions = np.bincount(comp[truth > 0], minlength=n + 1)
            true_positive = in_lesions >= MIN_HIT_DICE * np.maximum(comp_size, 1)
            both = (truth > 0) & (comp > 0)
            pairs, overlap = np.unique(np.stack([truth[both], comp[both]]), axis=1, return_counts=True)
            for vmin in cfg.min_volumes_mm3:
                kept = comp_size * voxel >= vmin
                kept[0] = False
                dice = []
                for lesion, size in big.items():
                    sel = (pairs[0] == lesion) & kept[pairs[1]]
                    if sel.any():
                        inter = float(overlap[sel].sum())
                        dice.append(2.0 * inter / (size + float(comp_size[pairs[1][sel]].sum())))
                found = sum(d >= MIN_HIT_DICE for d in dice)
                dice = [d for d in dice if d >= MIN_HIT_DICE]
                fp = int((kept & ~true_positive).sum())
                acc = counts.setdefault((thr, vmin), [0, 0, 0, 0, []])
                acc[0] += len(big)
                acc[1] += found
                acc[2] += fp
                acc[3] += 1
                acc[4] += dice
    return [Detection(t, v, a[0], a[1], a[2], a[3], tuple(a[4])) for (t, v), a in counts.items()]


def fp_rate_bound(false_positives: int, scans: int, confidence: float) -> float:
    """The upper confidence bound (one-sided, Poisson) of the false positives per scan after seeing
    ``false_positives`` on ``scans`` scans; ``confidence`` 0 gives the observed rate."""
    from scipy.stats import chi2

    if confidence <= 0.0:
        return false_positives / scans
    return float(chi2.ppf(confidence, 2 * (false_positives + 1))) / 2.0 / scans


def choose_thresholds(
    probabilities: Sequence[np.ndarray], examples: Sequence[SegmentationExample], cfg: SegmentationConfig
) -> Detection:
    """The (threshold, minimum volume) with the best recall of lesions >= ``cfg.min_diameter_mm`` among those whose
    false positives per scan are at most ``cfg.max_fp_per_scan`` at the upper bound of ``cfg.fp_bound_confidence``
    (:func:`fp_rate_bound`: a few validation scans are taken as that much evidence, no more; none such: the fewest
    false positives); ties go to fewer false positives, then the lower threshold and volume."""
    results = detections(probabilities, examples, cfg)

    def recall(d: Detection) -> float:
        return d.recall if d.lesions else 1.0

    allowed = [
        d
        for d in results
        if d.scans and fp_rate_bound(d.false_positives, d.scans, cfg.fp_bound_confidence) <= cfg.max_fp_per_scan
    ]
    if allowed:
        return min(allowed, key=lambda d: (-recall(d), d.false_positives, d.threshold, d.min_volume_mm3))
    return min(results, key=lambda d: (d.false_positives, -recall(d), d.threshold, d.min_volume_mm3))

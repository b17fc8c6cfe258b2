"""Segmentation model use cases: train on the database's labelled scans, register and promote, apply to an image.

The model files live in the store like risk models (`db.registry`, endpoint
:data:`tracker.segmentation.SEGMENTATION_ENDPOINT`); a loaded model is cached per file (files are immutable).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db import registry, results
from db.segmentation import labelled_scans
from db.session import session_scope
from tracker.errors import MetatrackError
from tracker.segmentation import SEGMENTATION_ENDPOINT, SEGMENTATION_KIND
from tracker.store import StoreUnit

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from db.models import ModelVersion
    from tracker.records import SegmentationRef
    from tracker.segmentation.config import SegmentationConfig, SegmentationExample
    from tracker.segmentation.model import SegmentationModel
    from tracker.store import FileStore

EpochProgress = Callable[[int, int, float], None]
DEFAULT_NAME = "lesion-unet"
NO_MODEL = (
    "no segmentation model is promoted: run `metatrack segment train --promote` "
    "(or `metatrack model promote NAME:VERSION`)"
)


def training_examples(engine: Engine, store: FileStore) -> list[SegmentationExample]:
    """Every ingested scan with a given lesion mask, read from the store (image and lesion labels, (z, y, x))."""
    import SimpleITK as sitk

    from tracker.segmentation.config import SegmentationExample

    with session_scope(engine) as s:
        scans = labelled_scans(s, store)
    examples = []
    for scan in scans:
        image = sitk.ReadImage(str(scan.image))
        examples.append(
            SegmentationExample(
                patient=scan.patient,
                image=sitk.GetArrayFromImage(image).astype("float32"),
                spacing_zyx=tuple(float(v) for v in reversed(image.GetSpacing())),  # type: ignore[arg-type]
                lesions=sitk.GetArrayFromImage(sitk.ReadImage(str(scan.mask))),
                digest=f"{scan.image_sha256}:{scan.mask_sha256}",
            )
        )
    return examples


def labelled_patients(engine: Engine, store: FileStore) -> int:
    """How many patients have at least one scan with a given lesion mask."""
    with session_scope(engine) as s:
        return len({scan.patient for scan in labelled_scans(s, store)})


def train(
    engine: Engine,
    store: FileStore,
    cfg: SegmentationConfig,
    *,
    name: str | None = None,
    promote: bool = False,
    progress: EpochProgress | None = None,
) -> dict[str, Any]:
    """Train a segmentation model on every labelled scan, register it (and promote it); its metrics."""
    from tracker.segmentation.training import train_segmentation

    n = labelled_patients(engine, store)
    if n < 2:
        raise MetatrackError(
            f"segment train: {n} patient(s) have a given lesion mask; at least 2 are needed "
            "(ingest scans with --mask first)"
        )
    model = train_segmentation(training_examples(engine, store), cfg, progress=progress)
    return register(engine, store, model, name or DEFAULT_NAME, promote=promote)


def register(
    engine: Engine, store: FileStore, model: SegmentationModel, name: str, *, promote: bool = False
) -> dict[str, Any]:
    """Register a segmentation model (endpoint :data:`SEGMENTATION_ENDPOINT`; its file stored once by hash, removed
    again if the registration fails) and promote it if asked; the version's label, state and metrics."""
    with StoreUnit(store) as files, session_scope(engine) as s:
        mv = registry.register_model(s, files, model, name, SEGMENTATION_ENDPOINT)
        label = f"{mv.name}:{mv.version}"
        if promote:
            registry.promote(s, label)
        return {"model": label, "state": mv.state.value, **mv.metrics}


def _check_kind(mv: ModelVersion) -> None:
    kind = (mv.hyperparameters or {}).get("kind")
    if kind != SEGMENTATION_KIND:
        raise MetatrackError(f"model {mv.name}:{mv.version} is a {kind} risk model, not a segmentation model")


def promoted_segmentation(engine: Engine, store: FileStore) -> SegmentationRef | None:
    """The promoted segmentation model (its registry row and file), as `process` finds it; None when none is."""
    with session_scope(engine) as s:
        return results.promoted_segmentation(s, store)


def segmentation_file(engine: Engine, store: FileStore, spec: str | None) -> tuple[str, Path]:
    """('name:version', model file) of ``spec`` ('name[:version]'), or of the promoted model when None."""
    with session_scope(engine) as s:
        mv = registry.get_version(s, spec) if spec else registry.promoted_model(s, SEGMENTATION_ENDPOINT)
        if mv is None:
            raise MetatrackError(NO_MODEL)
        _check_kind(mv)
        return f"{mv.name}:{mv.version}", store.find(mv.file_sha256, registry.MODEL_SUFFIX)


def apply(
    engine: Engine,
    store: FileStore,
    image_path: Path,
    out_mask: Path,
    *,
    model: str | None = None,
    probability_out: Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Segment the lesions of any image SimpleITK reads: write the label map of the model's components on the
    image's grid (and the probability map); returns the model and the components."""
    import numpy as np
    import SimpleITK as sitk

    from tracker.imageio import read_image
    from tracker.segmentation.components import lesion_components
    from tracker.segmentation.model import read_segmentation_model

    label, path = segmentation_file(engine, store, model)
    seg = read_segmentation_model(path)
    image = read_image(image_path).image
    spacing = tuple(float(v) for v in reversed(image.GetSpacing()))
    prob = seg.predict_probability(sitk.GetArrayFromImage(image).astype(np.float32), spacing, device=device)
    labels, components = lesion_components(prob, spacing, threshold=seg.threshold, min_volume_mm3=seg.min_volume_mm3)
    _write_like(labels.astype(np.uint16 if len(components) < 65536 else np.int32), image, out_mask)
    if probability_out is not None:
        _write_like(prob, image, probability_out)
    return {
        "model": label,
        "threshold": seg.threshold,
        "min_volume_mm3": seg.min_volume_mm3,
        "lesions": [
            {"label": c.label, "volume_mm3": round(c.volume_mm3, 1), "confidence": round(c.confidence, 3)}
            for c in components
        ],
    }


def _write_like(array: Any, reference: Any, path: Path) -> None:
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(array)
    out.CopyInformation(reference)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sitk.WriteImage(out, str(path), True)
    except RuntimeError as exc:
        raise MetatrackError(f"{path}: cannot write the image ({str(exc).strip().splitlines()[-1]})") from exc

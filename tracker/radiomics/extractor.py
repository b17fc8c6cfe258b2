"""Orchestration: image processing, then every configured feature family, into one fixed set of columns."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from tracker.errors import MetatrackError
from tracker.radiomics.catalog import NON_TEXTURE, TEXTURE_FEATURES, TEXTURE_VARIANTS
from tracker.radiomics.config import TEXTURE_FAMILIES, load_config
from tracker.radiomics.preprocess import Prepared, bounding_box

ENGINE_VERSION = "metatrack-radiomics 0.1.0"
#: BLAS threads during one extraction. The engine's matrix products are small, where BLAS threads cost more
#: than they give; on a busy machine their spin-waiting made extraction 2-6x slower. Parallelise over lesions
#: (process pool) or over feature families (``threads``) instead.
BLAS_THREADS = 1
#: at most this many threads run one extraction's feature families side by side (see ``default_threads``)
MAX_THREADS = 2
#: ROIs below this many voxels are extracted on one thread
THREADED_VOXELS = 20_000


@dataclass
class FeatureSet:
    """Feature values of one ROI under one configuration.

    Attributes
    ----------
    values : tag -> value, in the fixed column order of ``feature_columns(config)`` (NaN where undefined)
    meta : tag -> (IBSI family, IBSI feature name)
    config : the validated configuration used
    engine_version : ``ENGINE_VERSION``
    """

    values: dict[str, float]
    meta: dict[str, tuple[str, str]]
    config: dict[str, Any]
    engine_version: str = ENGINE_VERSION
    notes: list[str] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        """One dict per feature: tag, family, feature, value."""
        return [
            {"tag": tag, "family": self.meta[tag][0], "feature": self.meta[tag][1], "value": value}
            for tag, value in self.values.items()
        ]


def _family_catalog(families: set[str], modes: list[str]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for tag, family, name in NON_TEXTURE:
        if tag.split("_", 1)[0] in families:
            out[tag] = (family, name)
    for mode in ("2D", "3D"):
        if mode not in modes:
            continue
        for prefix in TEXTURE_FAMILIES:
            if prefix not in families:
                continue
            for suffix, family in TEXTURE_VARIANTS[prefix][mode]:
                for base, name in TEXTURE_FEATURES[prefix]:
                    out[base + suffix] = (family, name)
    return out


def filter_label(spec: dict[str, Any]) -> str:
    """Short description of a ``filter:`` section for feature metadata, e.g. ``laws E5L5S5 3D``."""
    detail = {"mean": "support", "log": "sigma_mm", "laws": "kernel", "gabor": "sigma_mm", "wavelet": "wavelet"}
    key = detail.get(spec["kind"])
    parts = [spec["kind"], str(spec[key]) if key else f"level {spec['level']}", spec["mode"]]
    if spec["kind"] == "wavelet":
        parts.insert(2, f"{spec['subband']} level {spec['level']}")
    return " ".join(parts)


def _filter_tag(spec: dict[str, Any], tag: str) -> str:
    return f"{spec['tag']}_{tag}" if spec["tag"] else tag


def _catalog(cfg: dict[str, Any]) -> dict[str, tuple[str, str]]:
    out = _family_catalog(set(cfg["families"]), cfg["texture"]["modes"])
    spec = cfg.get("filter")
    if spec is not None:
        label = filter_label(spec)
        for tag, (family, name) in _family_catalog(set(spec["families"]), cfg["texture"]["modes"]).items():
            out[_filter_tag(spec, tag)] = (f"{family} ({label})", name)
    return out


def feature_columns(cfg: dict[str, Any] | str) -> list[str]:
    """The fixed, ordered list of feature tags that ``extract`` returns for ``cfg``."""
    return list(_catalog(load_config(cfg) if not _is_validated(cfg) else cfg))


def _is_validated(cfg: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(cfg, dict) and "families" in cfg and "normalisation" in cfg


def _check_inputs(image: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...]) -> None:
    if image.ndim != 3:
        raise MetatrackError(f"radiomics image: expected a 3D (z, y, x) array, got shape {image.shape}")
    if mask.shape != image.shape:
        raise MetatrackError(f"radiomics mask: shape {mask.shape} differs from image shape {image.shape}")
    if len(spacing) != 3 or any(not s > 0 for s in spacing):
        raise MetatrackError(f"radiomics spacing: expected three positive (z, y, x) mm values, got {spacing}")


def _texture_tasks(
    levels_img: np.ndarray, prep: Prepared, n_levels: int, cfg: dict[str, Any], fams: set[str]
) -> list[Callable[[], dict[str, float]]]:
    from tracker.radiomics.texture import texture_tasks

    families = tuple(f for f in TEXTURE_FAMILIES if f in fams)
    if not families:
        return []
    tasks: list[Callable[[], dict[str, float]]] = []
    for mode in cfg["texture"]["modes"]:
        tasks += texture_tasks(levels_img, prep.int_mask, n_levels, mode=mode, morph_roi=prep.morph_mask,
                               families=families)  # fmt: skip
    return tasks


_CONTROLLER: list[Any] = []  # the threadpoolctl controller, created on first use (library discovery is slow)


def _blas_limit() -> contextlib.AbstractContextManager[Any]:
    if not _CONTROLLER:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _CONTROLLER.append(None)
        else:
            _CONTROLLER.append(ThreadpoolController())
    if _CONTROLLER[0] is None:
        return contextlib.nullcontext()
    return _CONTROLLER[0].limit(limits=BLAS_THREADS, user_api="blas")


def _crop_to_roi(prep: Prepared) -> Prepared:
    """``prep`` cut to the morphological mask's bounding box plus one empty voxel on every side."""
    if not prep.morph_mask.any():
        return prep
    first, last = bounding_box(prep.morph_mask)
    lo = np.maximum(first - 1, 0)
    hi = np.minimum(last + 2, prep.morph_mask.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return Prepared(prep.image[sl], prep.morph_mask[sl], prep.int_mask[sl], prep.spacing)


def extract(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    cfg: dict[str, Any] | str,
    body_mask: np.ndarray | None = None,
    threads: int | None = None,
) -> FeatureSet:
    """IBSI 1 features of one ROI.

    Parameters
    ----------
    image : (z, y, x) intensities (e.g. HU)
    mask : (z, y, x) boolean ROI, same shape
    spacing : (z, y, x) voxel size in mm
    cfg : a preset name, a YAML path, or a (validated) configuration dict
    body_mask : optional (z, y, x) boolean body mask, same shape: where z-score normalisation takes its
        statistics (e.g. ``tracker.harmonisation.foreground_mask`` for MR); the whole image when None
    threads : threads for this one ROI (the values do not depend on it); None: ``default_threads``. Use 1
        where lesions already run in parallel processes.

    Returns
    -------
    FeatureSet
        Values in the fixed columns of ``feature_columns(cfg)``; NaN where a feature is undefined
        (e.g. an empty ROI after re-segmentation, PCA of a one-voxel lesion).
    """
    if not _is_validated(cfg):
        cfg = load_config(cfg)
    image = np.asarray(image)
    mask = np.asarray(mask).astype(bool, copy=False)
    _check_inputs(image, mask, spacing)
    if body_mask is not None:
        body_mask = np.asarray(body_mask).astype(bool, copy=False)
        if body_mask.shape != image.shape:
            raise MetatrackError(f"radiomics body mask: shape {body_mask.shape} differs from image shape {image.shape}")
        if cfg["normalisation"] == "zscore" and not body_mask.any():
            raise MetatrackError("radiomics body mask: the mask is empty; z-score statistics need body voxels")
    catalog = _catalog(cfg)
    found: dict[str, float] = {}
    notes: list[str] = []
    if cfg["normalisation"] == "zscore":
        notes.append("z-score in the body mask" if body_mask is not None else "z-score over the whole image")
    if mask.any():
        n_threads = default_threads(int(np.count_nonzero(mask))) if threads is None else max(1, int(threads))
        with _blas_limit():
            found.update(_compute(image, mask, spacing, cfg, body_mask, n_threads))
    else:
        notes.append("empty mask")
    values = {tag: float(found.get(tag, np.nan)) for tag in catalog}
    return FeatureSet(values=values, meta=catalog, config=cfg, engine_version=ENGINE_VERSION, notes=notes)


def _compute(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    cfg: dict[str, Any],
    body_mask: np.ndarray | None,
    threads: int,
) -> dict[str, float]:
    """Every configured family of one non-empty ROI (tag -> value; missing tags become NaN).

    The families are independent calls on the prepared ROI; with ``threads`` > 1 they run side by side (the
    FFT-based ones, Moran's I and the local peak, release the GIL), the longest submitted first.
    """
    from tracker.radiomics.preprocess import filtered, prepare

    prep = prepare(image, mask, spacing, cfg, body_mask)
    found: dict[str, float] = {}
    with np.errstate(divide="ignore", invalid="ignore"), _executor(threads) as pool:
        futures = _submit_families(pool, prep, set(cfg["families"]), cfg)
        spec = cfg.get("filter")
        filtered_futures = []
        if spec is not None:
            response = filtered(prep, spec, spec["families"])
            filtered_futures = _submit_families(pool, response, set(spec["families"]), cfg)
        for future in futures:
            found.update(future.result())
        for future in filtered_futures:
            assert spec is not None
            found.update({_filter_tag(spec, tag): v for tag, v in future.result().items()})
    return found


def _submit_families(
    pool: ThreadPoolExecutor | _Inline, prep: Prepared, fams: set[str], cfg: dict[str, Any]
) -> list[Future[Any]]:
    """Submit the families ``fams`` of one prepared ROI; each future gives a dict tag -> value."""
    from tracker.radiomics.histogram import histogram_features, ivh_features
    from tracker.radiomics.intensity import statistics_features
    from tracker.radiomics.local_intensity import local_intensity_features
    from tracker.radiomics.morphology import autocorrelation_features, shape_features
    from tracker.radiomics.preprocess import discretise

    vals = prep.image[prep.int_mask]
    futures = []
    roi = _crop_to_roi(prep)  # the local peak needs the margin around the ROI; nothing else does
    morph = "morph" in fams and bool(roi.morph_mask.any())
    if morph:
        futures.append(_submit(pool, autocorrelation_features, roi.image, roi.int_mask, roi.spacing))
    if "loc" in fams:
        futures.append(_submit(pool, local_intensity_features, prep.image, prep.int_mask, prep.spacing))
    if morph:
        futures.append(_submit(pool, shape_features, roi.image, roi.morph_mask, roi.int_mask, roi.spacing))
    if "stat" in fams:
        futures.append(_submit(pool, statistics_features, vals))
    if "ivh" in fams:
        futures.append(_submit(pool, ivh_features, vals, cfg))
    texture = any(f in fams for f in TEXTURE_FAMILIES)
    if vals.size and ("ih" in fams or texture):
        levels, n_levels = discretise(vals, cfg["discretisation"], cfg)
        if "ih" in fams:
            futures.append(_submit(pool, histogram_features, levels, n_levels))
        if texture:
            levels_img = np.zeros(roi.image.shape, dtype=np.int64)
            levels_img[roi.int_mask] = levels
            futures += [_submit(pool, task) for task in _texture_tasks(levels_img, roi, n_levels, cfg, fams)]
    return futures


class _Inline:
    """An executor that runs each call at once in the caller's thread (one thread: no pool to start); a failing
    call raises at once, where a pool's would raise from ``result()``."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args))
        return future


def _quiet(fn: Callable[..., Any], *args: Any) -> Any:
    # undefined features divide by zero on purpose; every call sets numpy's error state itself, as pool threads
    # do not share the caller's (numpy < 2 keeps it per thread)
    with np.errstate(divide="ignore", invalid="ignore"):
        return fn(*args)


def _submit(pool: ThreadPoolExecutor | _Inline, fn: Callable[..., Any], *args: Any) -> Future[Any]:
    return pool.submit(_quiet, fn, *args)


@contextlib.contextmanager
def _executor(threads: int) -> Iterator[ThreadPoolExecutor | _Inline]:
    """One thread: calls run inline. More: a pool for this extraction (not a module-level one: worker threads do
    not survive a fork into a process pool) whose queued calls are cancelled when one fails."""
    if threads <= 1:
        yield _Inline()
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="radiomics")
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def default_threads(n_voxels: int) -> int:
    """Threads for one extraction: up to ``MAX_THREADS`` of this process's CPUs for ROIs of at least
    ``THREADED_VOXELS`` voxels; one below that, where starting threads costs more than they save."""
    if n_voxels < THREADED_VOXELS:
        return 1
    return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))

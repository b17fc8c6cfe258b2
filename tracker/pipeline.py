"""The per-scan pipeline: registration -> lesions -> tracks -> RECIST -> features -> deltas, for one scan.

`compute_scan` reads the scan's files and calls the pure steps; it never touches the database. The process
workflow (`tracker.workflows.process`) loads the patient's context before and writes the outcome after, in one
transaction per scan; the records it exchanges with `db/` are in `tracker.records`. Frames: every follow-up is
registered to the patient's baseline; registration lists apply to a point in list order, so scan j -> scan k is
``inverse_j + forward_k``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from tracker.deltas import FeatureChange, patient_deltas, patient_features, track_deltas
from tracker.errors import MetatrackError
from tracker.recist import uncounted_new_lesions, uncounted_reason
from tracker.records import ChangeClass, LesionSource, LinkOut, PatientContext, ScanFiles, ScanOutcome, Settings

if TYPE_CHECKING:
    import SimpleITK as sitk

    from registration import RegistrationResult
    from tracker.lesions import MeasuredLesion

CT_BODY_THRESHOLD_HU = -500.0
SHELL_MARGIN_VOXELS = 2


def _read(path: Path) -> sitk.Image:
    import SimpleITK as sitk

    return sitk.ReadImage(str(path))


def _register(ctx: PatientContext, scan: ScanFiles, settings: Settings, workdir: Path) -> RegistrationResult:
    from registration import RegistrationResult, register

    fixed, moving = _read(ctx.scans[0].image), _read(scan.image)
    previous = [s for s in ctx.scans[1:-1] if s.forward]
    initial = (
        RegistrationResult(forward=list(previous[-1].forward), inverse=list(previous[-1].inverse)) if previous else None
    )
    return register(
        fixed,
        moving,
        preset=settings.preset,
        seed=settings.seed,
        threads=settings.threads,
        workdir=workdir,
        initial=initial,
    )


def _frame_transforms(src: ScanFiles, dst: ScanFiles) -> list[Path]:
    """Transforms mapping points of scan `src` to points of scan `dst` (both registered to the baseline)."""
    return [*src.inverse, *dst.forward]


@functools.lru_cache(maxsize=8)
def _source_labels(path: Path, min_lesion_mm3: float) -> sitk.Image:
    """A processed scan's lesion label map as its processing numbered it (``label_lesions`` numbers a binary
    mask's components; a label map keeps its labels). Cached: matching and propagation both read it, and store
    files never change."""
    import SimpleITK as sitk

    from tracker.lesions import Geometry, label_lesions

    src_mask = _read(path)
    labels = sitk.GetImageFromArray(
        label_lesions(sitk.GetArrayFromImage(src_mask), Geometry.from_image(src_mask), min_volume_mm3=min_lesion_mm3)
    )
    labels.CopyInformation(src_mask)
    return labels


def _warped_sources(ctx: PatientContext, scan: ScanFiles, image: sitk.Image, min_lesion_mm3: float) -> dict[int, Any]:
    """The lesion labels of every scan an open track was last seen on, resampled onto this scan's grid (by scan
    index)."""
    import SimpleITK as sitk

    from registration import warp_image

    warped: dict[int, np.ndarray] = {}
    for t in sorted(ctx.open_tracks, key=lambda t: t.number):
        if t.last_scan_index in warped:
            continue
        src = ctx.scans[t.last_scan_index]
        if src.mask is None:
            raise MetatrackError(f"scan {src.scan_id}: track T{t.number} was seen there but the mask is gone")
        # resampling takes this scan's points to the source scan: scan -> baseline -> source. Nearest neighbour:
        # the matching dilates masks anyway, and label-Gaussian resampling costs seconds per scan.
        out = warp_image(
            sitk.Cast(_source_labels(src.mask, min_lesion_mm3), sitk.sitkUInt16),
            image,
            _frame_transforms(scan, src),
            default_value=0,
            interpolator=sitk.sitkNearestNeighbor,
        )
        warped[t.last_scan_index] = sitk.GetArrayFromImage(out)
    return warped


def _match(
    ctx: PatientContext,
    scan: ScanFiles,
    labels: np.ndarray,
    lesions: list[MeasuredLesion],
    image: sitk.Image,
    warped: dict[int, np.ndarray],
) -> tuple[Any, dict[int, int]]:
    """Match this follow-up's lesions against every open track (`warped`: ``_warped_sources``), on this scan's
    grid."""
    from registration import map_points
    from tracker.lesions import Geometry
    from tracker.matching import MatchConfig, TrackState, match_lesions

    states = []
    for t in sorted(ctx.open_tracks, key=lambda t: t.number):
        src = ctx.scans[t.last_scan_index]
        centroid = map_points(np.asarray([t.last_centroid]), _frame_transforms(src, scan))[0]
        states.append(
            TrackState(
                track_id=t.number,
                last_label_mask=warped[t.last_scan_index] == t.last_label,
                centroid_lps=tuple(centroid),
                volume_mm3=t.last_volume_mm3,
                last_seen_index=t.last_scan_index,
            )
        )
    geometry = Geometry.from_image(image)
    result = match_lesions(
        states,
        labels,
        lesions,
        geometry.spacing_zyx,
        MatchConfig(),
        visit_index=scan.index,
        next_track_id=ctx.next_track_number,
        geometry=geometry,
    )
    return result, {label: t for label, t in result.label_to_track.items() if t is not None}


@dataclass
class FoundLesions:
    """The lesions processing found on a scan without a given mask (`_find_lesions`)."""

    labels: np.ndarray  # int32 label map on the scan's grid
    sources: dict[int, tuple[LesionSource, float | None]]  # label -> (source, confidence)
    model_id: int | None  # the segmentation model version that took part
    review_reasons: list[str]


def _intensity_priors(ctx: PatientContext, min_lesion_mm3: float, shell_mm: float) -> dict[int, Any]:
    """Each open track's `tracker.propagation.IntensityPrior`: its lesion and surround at its last sighting."""
    import SimpleITK as sitk

    from tracker.propagation import intensity_prior

    out: dict[int, Any] = {}
    by_scan: dict[int, list[Any]] = {}
    for t in ctx.open_tracks:
        by_scan.setdefault(t.last_scan_index, []).append(t)
    for index, tracks in sorted(by_scan.items()):
        src = ctx.scans[index]
        assert src.mask is not None  # _warped_sources checked it
        img = _read(src.image)
        arr = sitk.GetArrayFromImage(img).astype(np.float64)
        labels = sitk.GetArrayFromImage(_source_labels(src.mask, min_lesion_mm3))
        spacing = cast(tuple[float, float, float], tuple(float(v) for v in reversed(img.GetSpacing())))
        organ_map = sitk.GetArrayFromImage(_read(src.organs)) if src.organs else None
        body = _body_mask(arr, organ_map, src.modality)  # without an organ map: intensity_prior fills the lungs
        for t in tracks:
            out[t.number] = intensity_prior(arr, labels, t.last_label, spacing, shell_mm=shell_mm, body=body)
    return out


@functools.lru_cache(maxsize=2)
def _probability(model_path: Path, image_path: Path) -> np.ndarray:
    """The segmentation model's lesion probability on a scan's grid (read-only). Cached (this scan and the one
    before): the scan processed next reads this scan's as the previous one, and store files never change."""
    import SimpleITK as sitk

    from tracker.lesions import Geometry
    from tracker.segmentation.model import read_segmentation_model

    image = _read(image_path)
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    prob = read_segmentation_model(model_path).predict_probability(arr, Geometry.from_image(image).spacing_zyx)
    prob.setflags(write=False)
    return prob


@dataclass
class Detected:
    """The segmentation model's new lesions on a scan (`_new_lesions`): (voxels, confidence) each, and what a
    reader should know of the components left out."""

    lesions: list[tuple[np.ndarray, float]]
    reasons: list[str]


def _new_lesions(
    ctx: PatientContext,
    scan: ScanFiles,
    image: sitk.Image,
    warped: dict[int, np.ndarray],
    followed: np.ndarray,
    probability: np.ndarray,
    model_path: Path,
    settings: Settings,
) -> Detected:
    """The model's components on this scan that are new lesions (`tracker.segmentation.detection.new_lesions`):
    not part of a ``followed`` (propagated) lesion, not reported by the model on the previous scan too (its
    probability there carried through the registration) outside that scan's lesions, standing out from their
    surround."""
    import SimpleITK as sitk

    from registration import warp_image
    from tracker.lesions import Geometry
    from tracker.segmentation.components import lesion_components
    from tracker.segmentation.detection import Dropped, new_lesions
    from tracker.segmentation.model import read_segmentation_model

    model = read_segmentation_model(model_path)
    spacing = Geometry.from_image(image).spacing_zyx
    min_volume = max(settings.min_lesion_mm3, model.min_volume_mm3)
    components, found = lesion_components(probability, spacing, threshold=model.threshold, min_volume_mm3=min_volume)
    prior_probability, prior_lesions = None, None
    previous = ctx.scans[-2] if len(ctx.scans) > 1 else None
    if previous is not None and previous.mask is not None:
        prior = sitk.GetImageFromArray(_probability(model_path, previous.image))
        prior.CopyInformation(_read(previous.image))
        to_previous = _frame_transforms(scan, previous)
        prior_probability = sitk.GetArrayFromImage(warp_image(prior, image, to_previous, default_value=0.0))
        prior_lesions = warped.get(previous.index)
        if prior_lesions is None:
            prior_lesions = sitk.GetArrayFromImage(
                warp_image(
                    sitk.Cast(_source_labels(previous.mask, settings.min_lesion_mm3), sitk.sitkUInt16),
                    image,
                    to_previous,
                    default_value=0,
                    interpolator=sitk.sitkNearestNeighbor,
                )
            )
    kept, dropped = new_lesions(
        components,
        found,
        spacing,
        threshold=model.threshold,
        min_volume_mm3=min_volume,
        image=sitk.GetArrayFromImage(image),
        followed=followed,
        prior_probability=prior_probability,
        prior_lesions=prior_lesions,
    )
    reasons = []
    if kept:
        shown = ", ".join(f"{c.volume_mm3:.0f} mm3 ({c.confidence:.2f})" for c in kept)
        reasons.append(f"new lesions found by the segmentation model: {shown}")
    for why in Dropped:
        n = sum(d == why for d in dropped.values())
        if n and why != Dropped.ADJACENT:
            reasons.append(f"{n} segmentation model finding(s) not taken as new lesions: {why}")
    return Detected([(components == c.label, c.confidence) for c in kept], reasons)


def _find_lesions(
    ctx: PatientContext,
    scan: ScanFiles,
    image: sitk.Image,
    warped: dict[int, np.ndarray],
    settings: Settings,
) -> FoundLesions:
    """The lesions of a scan without a given mask: every open track's lesion propagated from its last sighting
    through the registration and refined on this scan (`tracker.propagation`), and the promoted segmentation
    model's components that no propagated lesion covers (`tracker.segmentation`), each with its confidence."""
    import SimpleITK as sitk

    from tracker.lesions import Geometry

    segmentation = ctx.segmentation if settings.segmentation_model else None
    if segmentation is None and not (settings.propagation and any(s.mask is not None for s in ctx.scans[:-1])):
        raise MetatrackError(
            f"scan of {scan.scan_date}: no lesion mask here or on any earlier scan of patient {ctx.external_id!r} "
            "and no segmentation model promoted: ingest a mask (`metatrack ingest --mask`) or train and promote "
            "one (`metatrack segment train --promote`)"
            if settings.propagation and settings.segmentation_model
            else f"scan of {scan.scan_date}: no lesion mask, and with propagation or the segmentation model "
            "switched off nothing can find its lesions"
        )
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    spacing = Geometry.from_image(image).spacing_zyx
    reasons: list[str] = []
    probability = _probability(segmentation.path, scan.image) if segmentation is not None else None
    labels = np.zeros(arr.shape, np.int32)
    sources: dict[int, tuple[LesionSource, float | None]] = {}
    if ctx.open_tracks and settings.propagation:
        from tracker.propagation import Prior, PropagationConfig, propagate

        intensity = _intensity_priors(ctx, settings.min_lesion_mm3, settings.shell_mm or 5.0)
        priors = [
            Prior(t.number, warped[t.last_scan_index] == t.last_label, intensity[t.number])
            for t in sorted(ctx.open_tracks, key=lambda t: t.number)
        ]
        found = propagate(
            arr,
            spacing,
            priors,
            probability=probability,
            config=PropagationConfig(min_volume_mm3=settings.min_lesion_mm3),
        )
        labels = found.labels.astype(np.int32)
        sources = {label: (LesionSource.PROPAGATED, float(found.confidence[label])) for label in found.track_of_label}
        shown = ", ".join(
            f"T{found.track_of_label[k]} ({found.confidence[k]:.2f})" for k in sorted(found.track_of_label)
        )
        reasons.append(f"lesions propagated from earlier scans (no mask given): {shown or 'none found'}")
        if found.not_found:
            gone = ", ".join(f"T{n} ({why})" for n, why in sorted(found.not_found.items()))
            reasons.append(f"not found, taken as vanished: {gone}")
    if segmentation is not None and probability is not None:
        detected = _new_lesions(ctx, scan, image, warped, labels, probability, segmentation.path, settings)
        next_label = int(labels.max()) + 1
        for region, confidence in detected.lesions:
            labels[region] = next_label
            sources[next_label] = (LesionSource.DETECTED, confidence)
            next_label += 1
        reasons.extend(detected.reasons)
    elif scan.index > 0:
        reasons.append("no segmentation model used: new lesions were not searched for")
    model_id = segmentation.model_version_id if segmentation is not None else None
    return FoundLesions(labels, sources, model_id, reasons)


def _recist_baseline(lesions: list[MeasuredLesion], lesion_track: dict[int, int]) -> tuple[Any, dict[int, str]]:
    from tracker.recist import RecistLesion, select_targets

    selection = select_targets(
        [RecistLesion.from_lesion(lesion_track[les.label], les) for les in lesions if les.label in lesion_track]
    )
    return selection, {number: str(role) for number, role in selection.roles().items()}


def _outside_image(ctx: PatientContext, scan: ScanFiles, image: sitk.Image, numbers: set[int]) -> set[int]:
    """Those of these open tracks whose last centroid maps outside this scan's image: not imaged, so RECIST cannot
    tell them gone (not evaluable)."""
    from registration import map_points

    out = set()
    size = image.GetSize()
    for t in ctx.open_tracks:
        if t.number in numbers:
            point = map_points(np.asarray([t.last_centroid]), _frame_transforms(ctx.scans[t.last_scan_index], scan))[0]
            index = image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point))
            if not all(-0.5 <= i <= n - 0.5 for i, n in zip(index, size, strict=True)):
                out.add(t.number)
    return out


def _recist_follow_up(
    ctx: PatientContext,
    scan: ScanFiles,
    image: sitk.Image,
    lesions: list[MeasuredLesion],
    links: list[LinkOut],
    new_tracks: dict[int, int | None],
    new_lesion: bool,
    measured: bool,
    settings: Settings,
) -> tuple[Any, dict[int, str]]:
    """The follow-up's RECIST assessment (None without a baseline assessment) and its new tracks' roles: a
    fragment split from a track takes its role (its diameter joins the target's sum), any other is new. Without
    lesions measured (`measured` False) and for a lesion not found whose place lies outside the image (not imaged)
    the lesions are not evaluable rather than gone."""
    from tracker.recist import (
        Measurement,
        NonTargetRule,
        RecistLesion,
        TargetSelection,
        VisitMeasurements,
        assess,
        inherited_role,
        lineage_labels,
    )

    roles = {number: inherited_role(ctx.recist_roles, parent) for number, parent in new_tracks.items()}
    if ctx.baseline_sum_mm is None:
        return None, roles
    selection = TargetSelection(
        targets=tuple(RecistLesion(n, *measured) for n, measured in ctx.targets.items()),
        non_targets=tuple(RecistLesion(n, *measured) for n, measured in ctx.non_targets.items()),
        baseline_sum_mm=ctx.baseline_sum_mm,
    )
    tracks: dict[int, tuple[int, ...]] = {}
    if measured:
        labels: dict[int, list[int]] = {}
        for link in links:
            if link.lesion_label is not None:
                labels.setdefault(link.track_number, []).append(link.lesion_label)
        successors = {number: list(after) for number, after in ctx.successors.items()}
        for number, parent in new_tracks.items():
            if parent is not None:
                successors.setdefault(parent, []).append(number)
        tracks = lineage_labels([*ctx.targets, *ctx.non_targets], labels, successors)
        outside = _outside_image(ctx, scan, image, {n for n, found in tracks.items() if not found})
        tracks = {n: found for n, found in tracks.items() if n not in outside}
    visit = VisitMeasurements({les.label: Measurement.from_lesion(les) for les in lesions}, tracks, new_lesion)
    rule = NonTargetRule(settings.recist_non_target_volume_ratio, settings.recist_non_target_min_increase_mm3)
    nadir = ctx.nadir_mm if ctx.nadir_mm is not None else ctx.baseline_sum_mm
    return assess(selection, visit, nadir, ctx.non_target_nadir_mm3, rule), roles


def _body_mask(arr: np.ndarray, organ_map: np.ndarray | None, modality: str) -> np.ndarray | None:
    """The patient's body: the organ map where there is a non-empty one, else above -500 HU (CT) or the Otsu
    foreground (other modalities; None where ``foreground_mask`` finds no dark background)."""
    if organ_map is not None and organ_map.any():
        return organ_map > 0
    if modality == "CT":
        return arr > CT_BODY_THRESHOLD_HU
    from tracker.harmonisation import foreground_mask

    try:
        return foreground_mask(arr)
    except MetatrackError:
        return None


def _extract_features(
    image: sitk.Image,
    labels: np.ndarray,
    lesions: list[MeasuredLesion],
    organ_map: np.ndarray | None,
    modality: str,
    settings: Settings,
) -> tuple[dict, dict, dict, dict[str, Any], str]:
    import SimpleITK as sitk

    from tracker.radiomics import ENGINE_VERSION, extract, load_config, peritumoral_shell

    cfg = load_config(settings.feature_config)
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    spacing = cast(tuple[float, float, float], tuple(float(s) for s in reversed(image.GetSpacing())))
    body = _body_mask(arr, organ_map, modality)
    margin = [int(np.ceil(settings.shell_mm / s)) + SHELL_MARGIN_VOXELS for s in spacing]
    values: dict[int, dict[str, dict[str, float | None]]] = {}
    errors: dict[tuple[int, str], str] = {}
    runtimes: dict[tuple[int, str], float] = {}
    for les in lesions:
        # The engine crops around the ROI itself, keeping the IBSI grid aligned to the whole image; only the
        # shell's distance transform is computed in a box around the lesion.
        roi = labels == les.label
        regions = {"lesion": roi}
        if settings.shell_mm > 0:
            idx = np.argwhere(roi)
            lo = np.maximum(idx.min(axis=0) - margin, 0)
            hi = np.minimum(idx.max(axis=0) + 1 + np.asarray(margin), labels.shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            shell = np.zeros_like(roi)
            shell[box] = peritumoral_shell(
                roi[box],
                spacing,
                settings.shell_mm,
                body_mask=body[box] if body is not None else None,
                other_lesions=(labels[box] > 0) & ~roi[box],
            )
            regions["shell"] = shell
        values[les.label] = {}
        for region, mask in regions.items():
            t0 = time.perf_counter()
            try:
                fs = extract(arr, mask, spacing, cfg, body_mask=body)
                values[les.label][region] = {k: (None if v is None or not np.isfinite(v) else float(v))
                                             for k, v in fs.values.items()}  # fmt: skip
            except Exception as exc:
                errors[(les.label, region)] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            runtimes[(les.label, region)] = time.perf_counter() - t0
    return values, errors, runtimes, cfg, ENGINE_VERSION


def compute_scan(ctx: PatientContext, settings: Settings, workdir: Path) -> ScanOutcome:
    """Process the last scan of `ctx.scans` given the patient's processed history."""
    import SimpleITK as sitk

    from tracker.lesions import Geometry, label_lesions, measure_lesions

    timings: dict[str, float] = {}
    scan = ctx.scans[-1]
    is_baseline = scan.index == 0
    t0 = time.perf_counter()
    registration = None
    if not is_baseline:
        registration = _register(ctx, scan, settings, workdir)
        scan.forward, scan.inverse = list(registration.forward), list(registration.inverse)
    timings["registration_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    image = _read(scan.image)
    geometry = Geometry.from_image(image)
    warped = {} if is_baseline else _warped_sources(ctx, scan, image, settings.min_lesion_mm3)
    found: FoundLesions | None = None
    if scan.mask is not None:
        mask_arr = sitk.GetArrayFromImage(_read(scan.mask))
        labels = label_lesions(mask_arr, geometry, min_volume_mm3=settings.min_lesion_mm3)
    else:
        found = _find_lesions(ctx, scan, image, warped, settings)
        labels = label_lesions(found.labels, geometry, min_volume_mm3=settings.min_lesion_mm3, split_components=False)
    organ_map = sitk.GetArrayFromImage(_read(scan.organs)) if scan.organs else None
    lesions = measure_lesions(labels, geometry, organ_map=organ_map, organ_names=scan.organ_names)
    timings["lesions_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    links: list[LinkOut] = []
    new_tracks: dict[int, int | None] = {}
    if is_baseline:
        lesion_track = {les.label: ctx.next_track_number + i for i, les in enumerate(lesions)}
        for les in lesions:
            links.append(LinkOut(lesion_track[les.label], les.label, ChangeClass.NEW, 0.0))
            new_tracks[lesion_track[les.label]] = None
    else:
        result, lesion_track = _match(ctx, scan, labels, lesions, image, warped)
        known = {t.number for t in ctx.open_tracks}
        for link in result.links:
            number = link.track_id if link.track_id is not None else lesion_track[link.lesion_label]
            links.append(LinkOut(number, link.lesion_label, link.change, float(link.score), link.related_track_id))
            if number not in known:
                new_tracks[number] = link.related_track_id if link.change == ChangeClass.SPLIT else None
    sources = {les.label: found.sources[les.label] for les in lesions} if found is not None else {}
    uncounted = uncounted_new_lesions(
        {
            link.track_number: sources[link.lesion_label][1] if link.lesion_label in sources else None
            for link in links
            if link.change == ChangeClass.NEW and link.lesion_label is not None
        },
        settings.new_lesion_min_confidence,
    )
    new_lesion = not is_baseline and any(
        link.change == ChangeClass.NEW and link.track_number not in uncounted for link in links
    )
    timings["matching_s"] = time.perf_counter() - t0

    roles: dict[int, str]
    recist, selection, baseline_sum = None, None, ctx.baseline_sum_mm
    if is_baseline:
        selection, roles = _recist_baseline(lesions, lesion_track)
        baseline_sum = selection.baseline_sum_mm
    else:
        measured = scan.mask is not None or found is not None
        recist, roles = _recist_follow_up(ctx, scan, image, lesions, links, new_tracks, new_lesion, measured, settings)
    review = list(found.review_reasons) if found is not None else []
    if uncounted:
        why = uncounted_reason(uncounted, settings.new_lesion_min_confidence)
        review.append(why)
        if recist is not None:
            recist = replace(recist, reasons=(*recist.reasons, why))

    t0 = time.perf_counter()
    features: dict[int, dict[str, dict[str, float | None]]]
    errors: dict[tuple[int, str], str]
    runtimes: dict[tuple[int, str], float]
    features, errors, runtimes, cfg, engine_version = {}, {}, {}, None, None
    if settings.features and lesions:
        features, errors, runtimes, cfg, engine_version = _extract_features(
            image, labels, lesions, organ_map, scan.modality, settings
        )
    timings["features_s"] = time.perf_counter() - t0

    deltas = _track_deltas(ctx, scan, links, features)
    recist_sum = recist.sum_mm if recist is not None else baseline_sum
    continuing = _continuing_tracks(ctx, scan, links, lesions)
    pf = patient_features(
        [les.volume_mm3 for les in lesions],
        [features.get(les.label, {}).get("lesion", {}) for les in lesions],
        new_lesions=sum(link.change == ChangeClass.NEW for link in links) if not is_baseline else 0,
        vanished_tracks=sum(link.change == ChangeClass.VANISHED for link in links),
        recist_sum_mm=recist_sum,
        days_from_baseline=(scan.scan_date - ctx.scans[0].scan_date).days,
        continuing=continuing,
    )
    prev_date = ctx.scans[-2].scan_date if len(ctx.scans) > 1 else scan.scan_date
    pf.update(
        patient_deltas(
            pf,
            ctx.previous_patient_features,
            ctx.baseline_patient_features,
            days_since_previous=(scan.scan_date - prev_date).days,
            days_since_baseline=(scan.scan_date - ctx.scans[0].scan_date).days,
        )
    )
    return ScanOutcome(
        is_baseline=is_baseline,
        registration=registration,
        lesions=lesions,
        links=links,
        new_tracks=new_tracks,
        lesion_track=lesion_track,
        recist=recist,
        recist_roles=roles,
        baseline_sum_mm=baseline_sum,
        new_lesion=new_lesion,
        features=features,
        feature_errors=errors,
        feature_runtime_s=runtimes,
        feature_config=cfg,
        engine_version=engine_version,
        deltas=deltas,
        patient_features=pf,
        timings=timings,
        recist_baseline=selection,
        derived_mask=_write_derived(labels, image, workdir) if found is not None else None,
        lesion_sources=sources,
        segmentation_model_id=found.model_id if found is not None else None,
        review_reasons=review,
    )


def _write_derived(labels: np.ndarray, image: sitk.Image, workdir: Path) -> Path:
    """The label map processing built for a scan without a given mask, as a file on the scan's grid."""
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(labels.astype(np.uint16))
    out.CopyInformation(image)
    path = workdir / "derived-lesions.nii.gz"
    sitk.WriteImage(out, str(path), useCompression=True)
    return path


def _continuing_tracks(
    ctx: PatientContext, scan: ScanFiles, links: list[LinkOut], lesions: list[MeasuredLesion]
) -> list[tuple[float, float, float]]:
    """(volume now, volume at the track's last sighting, days since) of every persistent track; lesions that
    merge tracks or that a track split into are left out (their volumes do not compare one to one)."""
    open_by_number = {t.number: t for t in ctx.open_tracks}
    volume_of = {les.label: les.volume_mm3 for les in lesions}
    merged_into = {link.lesion_label for link in links if link.change == ChangeClass.MERGED}
    split_from = {link.related_track_number for link in links if link.change == ChangeClass.SPLIT}
    out = []
    for link in links:
        track = open_by_number.get(link.track_number)
        if link.change != ChangeClass.PERSISTENT or track is None or link.lesion_label not in volume_of:
            continue
        if link.lesion_label in merged_into or link.track_number in split_from:
            continue
        days = float((scan.scan_date - track.last_date).days)
        out.append((volume_of[link.lesion_label], track.last_volume_mm3, days))
    return out


def _track_deltas(
    ctx: PatientContext, scan: ScanFiles, links: list[LinkOut], features: dict[int, dict[str, dict]]
) -> list[tuple[int, int, str, dict[str, FeatureChange]]]:
    """Per continuing track: feature changes against its previous sighting and its first one."""
    by_number = {t.number: t for t in ctx.open_tracks}
    out = []
    for link in links:
        track = by_number.get(link.track_number)
        if (
            track is None
            or link.lesion_label is None
            or link.change not in (ChangeClass.PERSISTENT, ChangeClass.MERGED)
        ):
            continue
        now = features.get(link.lesion_label, {}).get("lesion")
        if not now:
            continue
        if track.last_features:
            days = (scan.scan_date - track.last_date).days
            out.append((track.number, track.last_scan_id, "previous", track_deltas(now, track.last_features, days)))
        if track.first_features:
            days = (scan.scan_date - track.first_date).days
            out.append((track.number, track.first_scan_id, "baseline", track_deltas(now, track.first_features, days)))
    return out

"""DICOM SEG segments (binary or fractional) read onto the image grid with highdicom.

The SEG must share the image's frame of reference; its frames are placed by the image slices (SOP instances) they
name, or, in a SEG whose frames name no source slice, by their plane positions, which must then lie on the image's
slices (a note says so). Each chosen segment becomes one label (1, 2, ... in the order chosen). Fractional segments
are thresholded at 0.5 (a note says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tracker.dicom.rtstruct import paint, select
from tracker.errors import MetatrackError

if TYPE_CHECKING:
    import SimpleITK as sitk

FRACTIONAL_THRESHOLD = 0.5


def read_seg(
    path: Path, reference: sitk.Image, image: dict[str, Any] | None, segments: Sequence[str]
) -> tuple[np.ndarray, dict[int, str], list[str]]:
    """The chosen segments as a (z, y, x) uint16 label array on `reference`'s grid, label -> segment label, notes.

    `segments` holds segment numbers or labels (exact, else a regular expression); none: the only segment.
    """
    import highdicom as hd

    if image is None:
        raise MetatrackError(f"{path}: a DICOM SEG needs the DICOM series it segments as the image, not a volume file")
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # pydicom and highdicom raise many kinds of error on damaged files
        raise MetatrackError(f"{path}: damaged DICOM SEG ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
    frame = str(seg.get("FrameOfReferenceUID", ""))
    if frame != image["frame_of_reference_uid"]:
        raise MetatrackError(
            f"{path}: the SEG's frame of reference {frame or '(none)'} is not the image's "
            f"{image['frame_of_reference_uid']}"
        )
    numbers = [int(n) for n in seg.get_segment_numbers()]
    label_of = {n: str(seg.get_segment_description(n).segment_label) for n in numbers}
    wanted_numbers = [int(w) for w in segments if w.isdigit() and int(w) in label_of]
    by_label = [w for w in segments if not (w.isdigit() and int(w) in label_of)]
    chosen = list(wanted_numbers)
    if by_label or not segments:
        picked = select(list(label_of.values()), by_label, path, "segment", "--segment")
        chosen += [n for n in numbers if label_of[n] in picked and n not in chosen]
    sources = list(image["sop_instance_uids"])
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    if referenced and not referenced & set(sources):
        series = image["series_instance_uid"]
        raise MetatrackError(f"{path}: the SEG references none of the image's slices (series {series})")
    notes = []
    if _frames_name_sources(seg):
        try:
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=sources,
                segment_numbers=chosen,
                assert_missing_frames_are_empty=True,
                rescale_fractional=True,
                dtype=np.float32,
            )
        except (ValueError, KeyError, RuntimeError) as exc:
            raise MetatrackError(
                f"{path}: the SEG's frames do not fit the image's slices ({exc})".splitlines()[0]
            ) from exc
    else:
        pixels = pixels_by_position(seg, reference, chosen, path)
        notes.append("DICOM SEG frames name no source slice: placed on the image by their plane positions")
    size = reference.GetSize()
    if pixels.shape[:3] != (size[2], size[1], size[0]):
        raise MetatrackError(f"{path}: SEG frames are {pixels.shape[1:3]} pixels, the image's slices {size[1::-1]}")
    fractional = seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    if fractional:
        notes.append(f"fractional DICOM SEG: segments thresholded at {FRACTIONAL_THRESHOLD} (at or above: in)")
    labels = np.zeros(pixels.shape[:3], dtype=np.uint16)
    names: dict[int, str] = {}
    for label, number in enumerate(chosen, start=1):
        plane = pixels[..., label - 1]
        inside = plane >= FRACTIONAL_THRESHOLD if fractional else plane > 0
        if not inside.any():
            raise MetatrackError(f"{path}: segment {number} ({label_of[number]!r}) is empty")
        paint(labels, names, inside, label_of[number], path, "segment", "--segment")
    return labels, names, notes


def _frames_name_sources(seg: Any) -> bool:
    """Whether every frame of the SEG names the image slice it was derived from (Derivation Image Sequence)."""
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    if shared is not None and "DerivationImageSequence" in shared:
        return True
    frames = seg.get("PerFrameFunctionalGroupsSequence", [])
    return bool(frames) and all("DerivationImageSequence" in f for f in frames)


def _frame_item(seg: Any, frame: int, sequence: str) -> Any:
    """The first item of a functional group sequence of one frame (per-frame, else shared); None if neither."""
    for group in (seg.PerFrameFunctionalGroupsSequence[frame], seg.SharedFunctionalGroupsSequence[0]):
        if sequence in group and len(group[sequence].value) > 0:
            return group[sequence][0]
    return None


def pixels_by_position(seg: Any, reference: sitk.Image, segments: Sequence[int], path: Path) -> np.ndarray:
    """(z, y, x, len(segments)) float32 frames of a SEG placed on `reference`'s grid by their plane positions.

    Each frame must have the image's orientation and pixel spacing and lie on one of its slices (to a hundredth of
    a voxel); fractional values are scaled to [0, 1]. Slices without a frame are empty.
    """
    size = reference.GetSize()
    spacing = reference.GetSpacing()
    direction = np.asarray(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    orientation = np.concatenate([direction[:, 0], direction[:, 1]])
    stored = np.asarray(seg.pixel_array)
    stored = stored.reshape((-1, *stored.shape[-2:]))
    fractional = str(seg.SegmentationType) == "FRACTIONAL"
    scale = float(seg.MaximumFractionalValue) if fractional else 1.0
    column = {number: k for k, number in enumerate(segments)}
    out = np.zeros((size[2], size[1], size[0], len(segments)), dtype=np.float32)
    for frame in range(stored.shape[0]):
        where = f"{path}: SEG frame {frame + 1}"
        ident = _frame_item(seg, frame, "SegmentIdentificationSequence")
        number = int(ident.ReferencedSegmentNumber) if ident is not None else -1
        if number not in column:
            continue
        plane = _frame_item(seg, frame, "PlaneOrientationSequence")
        measures = _frame_item(seg, frame, "PixelMeasuresSequence")
        position = _frame_item(seg, frame, "PlanePositionSequence")
        if plane is None or measures is None or position is None:
            raise MetatrackError(f"{where}: names no source slice and has no plane position and orientation")
        if not np.allclose(np.asarray(plane.ImageOrientationPatient, dtype=np.float64), orientation, atol=1e-4):
            raise MetatrackError(f"{where}: its orientation is not the image's")
        if not np.allclose(np.asarray(measures.PixelSpacing, dtype=np.float64), spacing[1::-1], rtol=1e-4):
            raise MetatrackError(
                f"{where}: pixel spacing {list(measures.PixelSpacing)} mm, the image's {spacing[1::-1]}"
            )
        point = tuple(float(v) for v in position.ImagePositionPatient)
        x, y, z = reference.TransformPhysicalPointToContinuousIndex(point)
        k = round(z)
        if abs(x) > 0.01 or abs(y) > 0.01 or abs(z - k) > 0.01 or not 0 <= k < size[2]:
            raise MetatrackError(f"{where}: its position {point} mm is not on one of the image's slices")
        if stored.shape[1:] != (size[1], size[0]):
            raise MetatrackError(f"{where}: {stored.shape[1:]} pixels, the image's slices {size[1::-1]}")
        out[k, :, :, column[number]] = stored[frame] / scale
    return out

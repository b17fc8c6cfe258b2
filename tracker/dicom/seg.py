"""DICOM SEG segments (binary or fractional) read onto the image grid with highdicom.

The SEG must share the image's frame of reference and reference its slices (SOP instances); each chosen segment
becomes one label (1, 2, ... in the order chosen). Fractional segments are thresholded at 0.5 (a note says so).
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
    if not referenced & set(sources):
        series = image["series_instance_uid"]
        raise MetatrackError(f"{path}: the SEG references none of the image's slices (series {series})")
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=sources,
            segment_numbers=chosen,
            assert_missing_frames_are_empty=True,
            rescale_fractional=True,
            dtype=np.float32,
        )
    except (ValueError, KeyError, RuntimeError) as exc:
        raise MetatrackError(f"{path}: the SEG's frames do not fit the image's slices ({exc})".splitlines()[0]) from exc
    size = reference.GetSize()
    if pixels.shape[:3] != (size[2], size[1], size[0]):
        raise MetatrackError(f"{path}: SEG frames are {pixels.shape[1:3]} pixels, the image's slices {size[1::-1]}")
    notes = []
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

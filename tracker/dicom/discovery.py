"""What a folder of DICOM files holds: image series, RTSTRUCTs and SEGs, listed so that a user can choose."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tracker.errors import MetatrackError

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR
# objects without an image grid of their own: reports, plans, doses, presentation states, key objects, ...
_NOT_IMAGES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.481.", "1.2.840.10008.5.1.4.1.1.11.")


@dataclass
class ImageSeries:
    series_uid: str
    modality: str
    files: list[Path] = field(default_factory=list)


@dataclass
class Survey:
    """The DICOM objects under a folder (file order: sorted paths)."""

    folder: Path
    series: dict[str, ImageSeries] = field(default_factory=dict)
    rtstructs: list[Path] = field(default_factory=list)
    segs: list[Path] = field(default_factory=list)

    def listing(self) -> str:
        """One line: every image series (UID, modality, file count) and every RTSTRUCT/SEG (file name)."""
        parts = [f"{s.modality or '?'} series {uid} ({len(s.files)} files)" for uid, s in sorted(self.series.items())]
        parts += [f"RTSTRUCT {p.relative_to(self.folder)}" for p in self.rtstructs]
        parts += [f"SEG {p.relative_to(self.folder)}" for p in self.segs]
        return "; ".join(parts)


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _files(folder: Path, recursive: bool) -> Iterator[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return (p for p in sorted(paths) if p.is_file() and not p.name.startswith(".") and _is_dicom(p))


def survey(folder: Path, recursive: bool = False) -> Survey:
    """Classify every DICOM file (one with the 'DICM' preamble) in `folder` (and its subfolders if `recursive`).

    A file whose header cannot be read is refused: it may belong to the series.
    """
    import pydicom

    found = Survey(folder)
    for path in _files(folder, recursive):
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SeriesInstanceUID", "Modality"]
            )
            sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "")).strip()
        except Exception as exc:  # pydicom raises many kinds of error on damaged files
            msg = f"{path}: damaged DICOM file in the series folder ({type(exc).__name__}: {exc})"
            raise MetatrackError(msg.splitlines()[0]) from exc
        if sop_class == RTSTRUCT_SOP_CLASS:
            found.rtstructs.append(path)
        elif sop_class == SEG_SOP_CLASS:
            found.segs.append(path)
        elif sop_class != MEDIA_STORAGE_DIRECTORY and not sop_class.startswith(_NOT_IMAGES):
            uid = str(ds.get("SeriesInstanceUID", "")).strip()
            if not uid:  # every image has one: the header was cut short
                raise MetatrackError(f"{path}: damaged DICOM file in the series folder (no SeriesInstanceUID)")
            series = found.series.setdefault(uid, ImageSeries(uid, str(ds.get("Modality", "")).strip().upper()))
            series.files.append(path)
    return found

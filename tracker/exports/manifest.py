"""The JSON manifest written beside every export: what wrote it, with which libraries, settings and models, when."""

from __future__ import annotations

import importlib.metadata
import json
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1
# the libraries whose versions shape an export's numbers or files
LIBRARIES = ("numpy", "scipy", "pandas", "pyarrow", "SimpleITK", "pydicom", "highdicom", "lifelines", "SQLAlchemy")


def library_versions() -> dict[str, str]:
    """Installed versions of `LIBRARIES` ("absent" where one is not installed) and Python's."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def manifest_path(export: Path) -> Path:
    """Where an export's manifest goes: ``<file>.manifest.json`` beside a file, ``manifest.json`` in a folder."""
    return export / "manifest.json" if export.is_dir() else export.with_name(f"{export.name}.manifest.json")


def write_manifest(
    export: Path, kind: str, settings: dict[str, Any], provenance: dict[str, Any], outputs: list[str]
) -> Path:
    """Write the manifest of an export (a file or a folder); returns its path.

    Parameters
    ----------
    export : the exported file, or the folder the files went to.
    kind : the export command ("lesions", "survival", "masks", "dicom").
    settings : the export's options and the processing settings of what it holds.
    provenance : feature configs, harmonisations and risk models (`db.exports.provenance`).
    outputs : the written files, relative to the manifest's folder.
    """
    doc = {
        "manifest_version": MANIFEST_VERSION,
        "export": kind,
        "metatrack": importlib.metadata.version("metatrack"),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "libraries": library_versions(),
        "settings": settings,
        **provenance,
        "outputs": outputs,
    }
    path = manifest_path(export)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return path

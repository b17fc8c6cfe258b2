"""Privacy: a DICOM study with identifying headers, in a folder named after the patient, ingested (image and RTSTRUCT)
and processed through the CLI, leaves no trace of any identifying value in the database file, the data home (store
objects decompressed), or what the commands print (stdout, stderr with --verbose diagnostics)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_dicom_series, write_rtstruct

IDENTIFYING = {
    "patient_name": "Zyxwvut^Qwertyuiop",
    "patient_id": "MRN83629471",
    "birth_date": "19411123",
    "accession_number": "ACC5521973",
    "institution": "Xyzzy Memorial Hospital",
}
FOLDER = "Zyxwvut_Qwertyuiop_MRN83629471"  # the study folder, named after the patient
# each value, and the forms a program could turn it into
NEEDLES = [
    *IDENTIFYING.values(),
    "Zyxwvut",
    "Qwertyuiop",
    "83629471",
    "1941-11-23",
    "5521973",
    "Xyzzy",
    FOLDER,
]


def _metatrack(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METATRACK_HOME": str(home), "COLUMNS": "200"}
    env.pop("METATRACK_DB", None)
    code = "from cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "--verbose", "--no-progress", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[3],
        timeout=600,
    )


def _study(root: Path) -> tuple[Path, Path]:
    import SimpleITK as sitk

    arr = np.random.default_rng(3).normal(40, 8, (8, 32, 32)).astype(np.int16)
    arr[3:6, 10:20, 12:22] += 60  # a bright lesion where the contours are
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    folder = root / FOLDER
    series = write_dicom_series(img, folder, study_date="20240212", **IDENTIFYING)
    gtv = [np.array([[11.5, 9.5, z], [21.5, 9.5, z], [21.5, 19.5, z], [11.5, 19.5, z]]) for z in (6.0, 8.0, 10.0)]
    rs = write_rtstruct(folder / f"{FOLDER}_RS.dcm", series, {"GTV": gtv})
    return folder, rs


def _texts(home: Path) -> dict[str, bytes]:
    """Every file under the data home, the reports and exports written there included (gzip files decompressed)."""
    out = {}
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        out[str(path.relative_to(home))] = data
    return out


@pytest.mark.slow
def test_identifying_values_leave_no_trace(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder, rs = _study(tmp_path)
    (home / "out").mkdir(parents=True)
    runs = [
        _metatrack(home, "ingest", str(folder), "--patient", "PSEUDO-1", "--mask", str(rs), "--roi", "GTV"),
        _metatrack(home, "process", "--patient", "PSEUDO-1"),
        _metatrack(home, "timeline", "PSEUDO-1", "--json"),
        _metatrack(home, "patients"),
        _metatrack(home, "report", "PSEUDO-1", "-o", str(home / "out" / "report.html")),
        _metatrack(home, "export", "lesions", "-o", str(home / "out" / "lesions.csv")),
        _metatrack(home, "export", "dicom", "PSEUDO-1", "--out", str(home / "out" / "dicom")),
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert "PSEUDO-1" in runs[2].stdout and "2024-02-12" in runs[2].stdout  # the header date, processed
    files = _texts(home)
    assert any(name.endswith(".db") for name in files) and any(".nii" in name for name in files), sorted(files)
    assert {"out/report.html", "out/lesions.csv"} <= set(files) and any(n.startswith("out/dicom/") for n in files)
    for needle in NEEDLES:
        for run in runs:
            assert needle not in run.stdout and needle not in run.stderr, (needle, run.args)
        for name, data in files.items():
            assert needle.encode() not in data, (needle, name)
            assert needle not in name


def test_bad_input_is_one_line_naming_the_file_and_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder, rs = _study(tmp_path)
    run = _metatrack(home, "ingest", str(folder), "--patient", "PSEUDO-1", "--mask", str(rs), "--roi", "PTV")
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and f"{rs}: no ROI 'PTV' (it holds 'GTV')" in run.stderr
    ok = _metatrack(home, "patients", "--json")
    assert ok.returncode == 0 and "PSEUDO-1" not in ok.stdout

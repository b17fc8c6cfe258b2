"""`metatrack export` end to end on a processed simulated cohort: one patient ingested from DICOM series (written
with identifying values, in folders named after the fake patient), one from NIfTI. Every export is checked against
the database's own results (the timeline) and for identifying values."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from db import migrate
from db.session import make_engine
from tests.helpers import DCIODVFY, dciodvfy_errors, fill_cohort, synthetic_tables, write_dicom_series
from tracker.records import Settings
from tracker.simulator import SimulationConfig, simulate_cohort
from tracker.store import FileStore
from tracker.workflows.exports import export_dicom
from tracker.workflows.ingest import ingest_many, read_manifest
from tracker.workflows.models import add_events
from tracker.workflows.process import process_scans
from tracker.workflows.views import timeline

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("export_cohort")]
FAKE = {
    "patient_name": "Doe^Jane",
    "patient_id": "MRN7654321",
    "birth_date": "19591231",
    "accession_number": "ACC99887766",
}
FAKE |= {"institution": "Saint Nowhere Hospital"}
TRACES = ("Doe", "Jane", "MRN7654321", "19591231", "ACC99887766", "Saint Nowhere")


@dataclass
class Cohort:
    home: Path  # data home: metatrack.db and store/
    dicom_root: Path
    timelines: dict[str, dict[str, Any]]
    events: pd.DataFrame  # the simulator's: patient_id, time_days, event


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    """SIM001 from DICOM series, SIM002 from NIfTI, processed with the fast preset; events imported."""
    import SimpleITK as sitk

    sim = tmp_path_factory.mktemp("sim")
    cfg = SimulationConfig(
        n_patients=2, seed=3, shape=(32, 32, 24), spacing=(8.0,) * 3, min_followups=1, max_followups=1, workers=1
    )
    simulate_cohort(cfg, sim)
    rows = list(csv.DictReader(open(sim / "manifest.csv")))
    dicom_root = tmp_path_factory.mktemp("Doe_Jane_MRN7654321")
    for k, row in enumerate(rows):
        for col in ("image", "mask", "organs"):
            row[col] = str(sim / row[col])
        if row["patient_id"] == "SIM001":
            folder = dicom_root / f"Doe_Jane_{row['date']}"
            root = f"1.2.826.0.1.3680043.8.498.77.{k + 1}"
            write_dicom_series(
                sitk.ReadImage(row["image"]),
                folder,
                study_date=row["date"].replace("-", ""),
                study_uid=root,
                series_uid=f"{root}.1",
                frame_of_reference_uid=f"{root}.2",
                **FAKE,
            )
            row["image"] = str(folder)
    manifest = sim / "dicom_manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    home = tmp_path_factory.mktemp("home")
    engine = make_engine(f"sqlite:///{home / 'metatrack.db'}")
    migrate.upgrade(engine)
    store = FileStore(home / "store")
    _, failed = ingest_many(engine, store, read_manifest(manifest))
    assert not failed
    report = process_scans(engine, store, Settings(preset="fast", shell_mm=3.0, threads=1), home / "work")
    assert not report.failed and len(report.processed) == len(rows)
    events = pd.read_csv(sim / "events.csv")
    add_events(engine, events, "metastasis", "events.csv")
    timelines = {p: timeline(engine, p) for p in ("SIM001", "SIM002")}
    engine.dispose()
    return Cohort(home, dicom_root, timelines, events.set_index("patient_id"))


@pytest.fixture()
def runner(cohort: Cohort, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("METATRACK_HOME", str(cohort.home))
    monkeypatch.delenv("METATRACK_DB", raising=False)
    return CliRunner()


def _ok(runner: CliRunner, *args: str) -> str:
    res = runner.invoke(app, ["--no-progress", "export", *args])
    assert res.exit_code == 0, res.stderr
    assert not [t for t in TRACES if t in res.stdout + res.stderr]
    return res.stdout


def _lesions(tl: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """(scan date, track number) -> the timeline's lesion."""
    return {(s["date"], les["track_id"]): les for s in tl["scans"] for les in s["lesions"]}


def test_lesion_table_holds_every_lesion_region(cohort: Cohort, runner: CliRunner, tmp_path: Path) -> None:
    _ok(runner, "lesions", "-o", str(tmp_path / "all.csv"))
    _ok(runner, "lesions", "--format", "parquet", "-o", str(tmp_path / "one.parquet"), "--patient", "SIM001")
    table = pd.read_csv(tmp_path / "all.csv")
    truth = {**_lesions(cohort.timelines["SIM001"]), **_lesions(cohort.timelines["SIM002"])}
    assert len(table) == 2 * len(truth)  # a lesion row and a shell row each
    assert sorted(table["region"].unique()) == ["lesion", "shell"]
    for (day, track), les in truth.items():
        rows = table[(table["date"] == day) & (table["track"] == track)]
        assert rows["volume_mm3"].tolist() == [les["volume_mm3"]] * 2
        assert rows["recist_role"].fillna("").tolist() == [les["recist_role"] or ""] * 2
    assert table["feature_config"].unique().tolist() == ["ct_default"]
    assert {"morph_volume", "harmonised_morph_volume", "engine_version", "feature_config_sha256"} <= set(table.columns)
    one = pd.read_parquet(tmp_path / "one.parquet")
    np.testing.assert_array_equal(one["morph_volume"], table[table["patient_id"] == "SIM001"]["morph_volume"])
    manifest = json.loads((tmp_path / "all.csv.manifest.json").read_text())
    assert manifest["export"] == "lesions" and manifest["outputs"] == ["all.csv"]
    assert {"metatrack", "libraries", "settings", "feature_configs", "risk_models", "exported_at"} <= set(manifest)


def test_survival_table_has_each_patients_outcome(cohort: Cohort, runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "survival.csv"
    _ok(runner, "survival", "--endpoint", "metastasis", "-o", str(out))
    table = pd.read_csv(out).set_index("patient_id")
    assert sorted(table.index) == ["SIM001", "SIM002"]
    for pid, tl in cohort.timelines.items():
        truth = cohort.events.loc[pid]
        assert (table.loc[pid, "time_days"], table.loc[pid, "event"]) == (truth["time_days"], truth["event"])
        seen = [s["days_from_baseline"] for s in tl["scans"] if s["days_from_baseline"] <= truth["time_days"]]
        assert table.loc[pid, "latest_time_days"] == max(seen)
        assert table.loc[pid, "baseline_lesion_count"] == len(tl["scans"][0]["lesions"])


def test_survival_export_loads_into_lifelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lifelines import CoxPHFitter

    url = f"sqlite:///{tmp_path / 'cohort.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    visits, events = synthetic_tables(80, seed=5)
    fill_cohort(engine, visits, events)
    engine.dispose()
    monkeypatch.setenv("METATRACK_HOME", str(tmp_path))
    out = tmp_path / "survival.csv"
    res = CliRunner().invoke(app, ["--db", url, "export", "survival", "-e", "metastasis", "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    table = pd.read_csv(out)
    assert len(table) == 80 and table["event"].sum() == events["event"].sum()
    cph = CoxPHFitter().fit(
        table[["time_days", "event", "baseline_burden_log", "latest_burden_log"]], "time_days", "event"
    )
    assert cph.concordance_index_ > 0.6


def test_masks_carry_track_numbers_on_the_scans_grid(cohort: Cohort, runner: CliRunner, tmp_path: Path) -> None:
    import SimpleITK as sitk

    _ok(runner, "masks", "SIM002", "--out", str(tmp_path / "m"))
    tl = cohort.timelines["SIM002"]
    for scan in tl["scans"]:
        image = sitk.ReadImage(str(tmp_path / "m" / f"{scan['date']}_scan{scan['id']}_tracks.nii.gz"))
        arr = sitk.GetArrayFromImage(image)
        voxel_mm3 = float(np.prod(image.GetSpacing()))
        expected = {les["track_id"]: les["volume_mm3"] for les in scan["lesions"]}
        got = {int(t): float((arr == t).sum()) * voxel_mm3 for t in np.unique(arr) if t}
        assert got == pytest.approx(expected)
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["export"] == "masks"


@pytest.fixture(scope="module")
def dicom_export(cohort: Cohort, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("dicom_out")
    engine = make_engine(f"sqlite:///{cohort.home / 'metatrack.db'}")
    result = export_dicom(engine, FileStore(cohort.home / "store"), "SIM001", out)
    engine.dispose()
    return out, result


@pytest.mark.skipif(not DCIODVFY.exists(), reason=f"{DCIODVFY} (dicom3tools) is not installed")
def test_dicom_export_passes_dciodvfy(dicom_export: tuple[Path, dict[str, Any]]) -> None:
    out, result = dicom_export
    assert len(result["files"]) == 4
    for name in result["files"]:
        assert dciodvfy_errors(out / name) == [], name


def test_dicom_export_reads_back_with_the_tracks(cohort: Cohort, dicom_export: tuple[Path, dict[str, Any]]) -> None:
    import highdicom as hd

    out, _ = dicom_export
    truth = _lesions(cohort.timelines["SIM001"])
    uids: dict[str, set[str]] = {}
    for order, scan in enumerate(cohort.timelines["SIM001"]["scans"], start=1):
        stem = out / f"{scan['date']}_scan{scan['id']}"
        seg = hd.seg.segread(f"{stem}_seg.dcm")
        described = [seg.get_segment_description(n) for n in seg.get_segment_numbers()]
        assert sorted(d.segment_label for d in described) == sorted(f"T{les['track_id']}" for les in scan["lesions"])
        for d in described:
            uids.setdefault(d.tracking_id, set()).add(d.tracking_uid)
        sr = hd.sr.srread(f"{stem}_sr.dcm")
        for group in sr.content.get_volumetric_roi_measurement_groups():
            les = truth[(scan["date"], int(group.tracking_identifier[1:]))]
            values = {m.name.meaning: m.value for m in group.get_measurements()}
            assert values["Volume"] == pytest.approx(les["volume_mm3"])
            assert values["Long axis"] == pytest.approx(les["long_axis_mm"])
            assert values["Time Point Order"] == order
            assert [q.value.value for q in group.get_qualitative_evaluations()] == [les["change"]]
            uids.setdefault(group.tracking_identifier, set()).add(group.tracking_uid)
        (recist,) = sr.content.get_image_measurement_groups()
        assert [q.value.value for q in recist.get_qualitative_evaluations()] == [scan["recist"]["response"]]
    assert all(len(u) == 1 for u in uids.values())  # one UID per track, in every SEG and SR of every scan


def test_no_export_holds_an_identifying_value(
    cohort: Cohort, runner: CliRunner, dicom_export: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    _ok(runner, "dicom", "SIM001", "--out", str(tmp_path / "d"))
    _ok(runner, "masks", "SIM001", "--out", str(tmp_path / "m"))
    _ok(runner, "lesions", "-o", str(tmp_path / "l.csv"))
    _ok(runner, "survival", "-e", "metastasis", "-o", str(tmp_path / "s.parquet"), "--format", "parquet")
    files = [p for p in [*tmp_path.rglob("*"), *dicom_export[0].rglob("*")] if p.is_file()]
    assert len(files) >= 13
    found = {p.name: [t for t in TRACES if t.encode() in p.read_bytes()] for p in files}
    assert not {k: v for k, v in found.items() if v}


def test_source_dicom_puts_the_original_patient_back(cohort: Cohort, runner: CliRunner, tmp_path: Path) -> None:
    import highdicom as hd

    _ok(runner, "dicom", "SIM001", "--out", str(tmp_path), "--source-dicom", str(cohort.dicom_root))
    seg = hd.seg.segread(next(tmp_path.glob("*_seg.dcm")))
    assert (str(seg.PatientName), seg.PatientID) == ("Doe^Jane", "MRN7654321")


def test_dicom_export_of_a_nifti_patient_is_refused(runner: CliRunner, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", "dicom", "SIM002", "--out", str(tmp_path / "d")])
    assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "no processed scan came from DICOM (2 from nifti)" in res.stderr
    assert not (tmp_path / "d").exists()


def test_bad_requests_leave_no_file(runner: CliRunner, tmp_path: Path) -> None:
    for args, message in [
        (["lesions", "--patient", "NOPE", "-o", str(tmp_path / "l.csv")], "unknown patient 'NOPE'"),
        (["lesions", "-o", str(tmp_path / "missing" / "l.csv")], "missing: no such folder"),
        (["survival", "-e", "censored", "-o", str(tmp_path / "s.csv")], "endpoint 'censored' is not an event"),
        (["masks", "NOPE", "--out", str(tmp_path / "m")], "unknown patient 'NOPE'"),
    ]:
        res = runner.invoke(app, ["export", *args])
        assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert message in res.stderr
    assert list(tmp_path.iterdir()) == []

"""Ingest refusals and failures: one line naming the cause, exit 1, a summary for manifests, and the database and
the store unchanged by what failed (dates, pseudonyms, manifests, modality case, disk full, two runs at once)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from sqlalchemy import Engine, select
from typer.testing import CliRunner, Result

import tracker.store
import tracker.workflows.ingest as ingest
from cli.main import app
from db import repo
from db.models import Scan
from db.session import make_engine, session_scope
from tracker.errors import MetatrackError
from tracker.store import FileStore
from tracker.workflows.ingest import ScanRequest, ingest_many, ingest_scan, read_manifest


def _nifti(path: Path, seed: int, shape_zyx: tuple[int, int, int] = (6, 8, 10)) -> Path:
    arr = np.random.default_rng(seed).normal(40, 10, shape_zyx).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _mask(path: Path, like: Path) -> Path:
    ref = sitk.ReadImage(str(like))
    arr = np.zeros(sitk.GetArrayFromImage(ref).shape, np.uint8)
    arr[1:3, 2:5, 3:6] = 1
    m = sitk.GetImageFromArray(arr)
    m.CopyInformation(ref)
    sitk.WriteImage(m, str(path))
    return path


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """a.nii .. e.nii (distinct content) and a mask for a.nii, in one folder."""
    d = tmp_path / "in"
    for i, name in enumerate("abcde"):
        _nifti(d / f"{name}.nii", i + 1)
    _mask(d / "a_mask.nii", d / "a.nii")
    return d


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, ["--no-progress", *args])


def _err_lines(res: Result) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


def _engine(home: Path) -> Engine:
    return make_engine(f"sqlite:///{home / 'metatrack.db'}")


def _state(home: Path) -> tuple[dict[str, int], list[Path]]:
    """Row count of every table, and the store's files."""
    eng = _engine(home)
    try:
        with session_scope(eng) as s:
            counts = repo.table_counts(s)
    finally:
        eng.dispose()
    root = home / "store"
    return counts, sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture()
def seeded(home: Path, images: Path) -> tuple[dict[str, int], list[Path]]:
    """One scan ingested through the CLI; returns the state that refused input must leave as it is."""
    res = _run("ingest", str(images / "a.nii"), "-p", "P1", "-d", "2024-01-10", "-m", str(images / "a_mask.nii"))
    assert res.exit_code == 0, res.stderr
    return _state(home)


def _manifest(folder: Path, body: str, name: str = "manifest.csv") -> Path:
    path = folder / name
    path.write_text(body)
    return path


# --- dates -----------------------------------------------------------------------------------------------------

TOMORROW = (date.today() + timedelta(days=2)).isoformat()
BAD_DATES = {
    "2020-W04-4": "not an ISO date (YYYY-MM-DD)",  # an ISO week date: date.fromisoformat took it
    "2020-024": "not an ISO date (YYYY-MM-DD)",  # an ordinal date
    "20200124": "not an ISO date (YYYY-MM-DD)",
    "2024-02-30": "not an ISO date (YYYY-MM-DD)",
    "0024-01-10": "before 1900-01-01",  # a lost digit
    "1899-12-31": "before 1900-01-01",
    TOMORROW: "is in the future",
    "9999-12-31": "is in the future",
}


@pytest.mark.parametrize("value", sorted(BAD_DATES))
def test_dates_other_than_past_yyyy_mm_dd_are_refused(
    value: str, home: Path, images: Path, seeded: tuple[dict[str, int], list[Path]]
) -> None:
    res = _run("ingest", str(images / "b.nii"), "-p", "P1", "-d", value)
    assert res.exit_code == 1
    lines = _err_lines(res)
    assert len(lines) == 1 and lines[0].startswith("error: --date: ") and BAD_DATES[value] in lines[0]
    manifest = _manifest(images, f"patient_id,date,image\nP1,{value},b.nii\n")
    res = _run("ingest", "--manifest", str(manifest))
    assert res.exit_code == 1
    lines = _err_lines(res)
    assert len(lines) == 1 and "manifest.csv: row 2: date" in lines[0] and BAD_DATES[value] in lines[0]
    assert _state(home) == seeded


def test_today_and_1900_are_taken() -> None:
    assert ingest.parse_date(date.today().isoformat(), "x") == date.today()
    assert ingest.parse_date(" 1900-01-01 ", "x") == date(1900, 1, 1)
    assert ingest.parse_date("2099-01-01", "--as-of", future_ok=True) == date(2099, 1, 1)


# --- pseudonyms ------------------------------------------------------------------------------------------------

BAD_IDS = {
    "ansi": ("P\x1b[31m1", "U+001B"),
    "newline": ("P\n1", "U+000A"),
    "nul": ("P\x001", "U+0000"),
    "zero width space": ("P\u200b1", "U+200B"),
    "bidi override": ("P\u202e1", "U+202E"),
    "line separator": ("P\u20281", "U+2028"),
    "rich markup": ("[bold]x[/]", "'[bold]'"),
    "rich closing tag": ("P[/]", "'[/]'"),
}


@pytest.mark.parametrize("case", sorted(BAD_IDS))
def test_pseudonyms_a_terminal_would_alter_are_refused(
    case: str, home: Path, images: Path, seeded: tuple[dict[str, int], list[Path]]
) -> None:
    pid, code = BAD_IDS[case]
    res = _run("ingest", str(images / "b.nii"), "-p", pid, "-d", "2024-01-10")
    assert res.exit_code == 1
    lines = _err_lines(res)
    assert len(lines) == 1 and "patient ID" in lines[0] and code in lines[0]
    assert "\x1b" not in res.stderr and "\u202e" not in res.stderr and "\u200b" not in res.stderr
    assert _state(home) == seeded


def test_brackets_that_are_not_markup_are_fine(home: Path, images: Path) -> None:
    res = _run("ingest", str(images / "b.nii"), "-p", "P[01]", "-d", "2024-01-10", "--json")
    assert res.exit_code == 0, res.stderr


def test_pseudonyms_stored_earlier_print_as_they_are(home: Path, images: Path, monkeypatch) -> None:
    """IDs ingested before the check print literally (no markup) with their control characters escaped."""
    monkeypatch.setattr(ingest, "check_external_id", lambda *a: None)
    for pid, img in (("[bold]x[/]", "b.nii"), ("Q\x1b[31mred", "c.nii")):
        assert _run("ingest", str(images / img), "-p", pid, "-d", "2024-01-10").exit_code == 0
    res = _run("patients")
    assert res.exit_code == 0
    assert "[bold]x[/]" in res.stdout and "Q\\x1b[31mred" in res.stdout and "\x1b" not in res.stdout
    res = _run("timeline", "[bold]x[/]")  # the ID as printed is the ID to type
    assert res.exit_code == 0, res.stderr
    assert "patient [bold]x[/]" in res.stdout
    res = _run("cohort")
    assert "[bold]x[/]" in res.stdout and "\x1b" not in res.stdout


# --- manifests -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("", "the manifest is empty"),
        ("patient_id,date,image\n", "has a header but no rows"),
        ("patient_id,date,image,mask\nP2,2024-01-10,,\n", "row 2: image is empty"),
        ("patient_id,date,image\nP2,2024-01-10,b.nii\nP3,2024-01-10,  \n", "row 3: image is empty"),
    ],
)
def test_manifests_without_work_are_errors(
    body: str, words: str, home: Path, images: Path, seeded: tuple[dict[str, int], list[Path]]
) -> None:
    res = _run("ingest", "--manifest", str(_manifest(images, body)))
    assert res.exit_code == 1
    lines = _err_lines(res)
    assert len(lines) == 1 and words in lines[0] and "manifest.csv" in lines[0]
    assert _state(home) == seeded


def test_modality_case_is_the_same_in_a_manifest_and_on_the_command_line(home: Path, images: Path) -> None:
    manifest = _manifest(images, "patient_id,date,image,modality\nP2,2024-01-10,b.nii,ct\nP3,2024-01-10,c.nii,Mr\n")
    assert [r.modality for r in read_manifest(manifest)] == ["CT", "MR"]
    res = _run("ingest", "--manifest", str(manifest))
    assert res.exit_code == 0, res.stderr
    assert _err_lines(res) == ["ingest: 2 ingested, 0 already present, 0 failed"]
    assert _run("ingest", str(images / "d.nii"), "-p", "P4", "-d", "2024-01-10", "--modality", "mr").exit_code == 0
    eng = _engine(home)
    with session_scope(eng) as s:
        assert sorted(s.scalars(select(Scan.modality))) == ["CT", "MR", "MR"]
    eng.dispose()
    with pytest.raises(MetatrackError, match="modality 'PET'"):
        ingest_scan(eng, FileStore(home / "store"), ScanRequest("P5", date(2024, 1, 1), images / "e.nii", None, "pet"))


# --- disk full -------------------------------------------------------------------------------------------------


def _copy_fails_on(monkeypatch, call: int) -> None:
    """The store's `call`-th file copy fails as a full disk does (shutil names source and destination)."""
    real, n = shutil.copyfile, {"calls": 0}

    def copyfile(src, dst, *a, **k):
        n["calls"] += 1
        if n["calls"] == call:
            Path(dst).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(tracker.store.shutil, "copyfile", copyfile)


def test_disk_full_stops_the_manifest_with_a_summary(home: Path, images: Path, monkeypatch) -> None:
    manifest = _manifest(
        images, "patient_id,date,image\nP1,2024-01-10,a.nii\nP2,2024-01-10,b.nii\nP3,2024-01-10,c.nii\n"
    )
    assert _run("ingest", str(images / "e.nii"), "-p", "P0", "-d", "2024-01-10").exit_code == 0
    _, files_before = _state(home)
    _copy_fails_on(monkeypatch, 2)
    res = _run("ingest", "--manifest", str(manifest))
    assert res.exit_code == 1
    lines = _err_lines(res)
    assert len(lines) == 2, lines  # the failed row, then the summary
    assert lines[0].startswith("error: no space left on device writing ") and ".incoming-" in lines[0]
    assert lines[1].startswith("error: 2 of 3 scans were not ingested: 1 ingested, 0 already present, 1 failed, ")
    assert "1 not attempted (the batch stopped at " in lines[1] and "b.nii" in lines[1]
    counts, files = _state(home)
    assert counts["scans"] == 2 and counts["patients"] == 2  # P0 and P1; P2 rolled back, P3 never tried
    assert len(files) == len(files_before) + 1  # P1's image; nothing of P2's (no partial file left)


def test_disk_full_on_a_single_scan_is_one_line(home: Path, images: Path, monkeypatch) -> None:
    _copy_fails_on(monkeypatch, 1)
    res = _run("ingest", str(images / "a.nii"), "-p", "P1", "-d", "2024-01-10")
    assert res.exit_code == 1
    lines = _err_lines(res)
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device writing ")
    counts, files = _state(home)
    assert counts["scans"] == 0 and files == []


def test_itk_write_failure_on_a_full_disk_says_so(engine: Engine, tmp_path: Path, images: Path, monkeypatch) -> None:
    """ITK reports a full disk as "could not write": the converted mask's write is recognised as ENOSPC."""
    store = FileStore(tmp_path / "store")

    def write_fails(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK WriteImage: itk::ERROR: NiftiImageIO: Could not write")

    monkeypatch.setattr(sitk, "WriteImage", write_fails)
    monkeypatch.setattr(ingest.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    req = ScanRequest("P1", date(2024, 1, 10), images / "a.nii", images / "a_mask.nii")
    done, failed = ingest_many(engine, store, [req, ScanRequest("P2", date(2024, 1, 10), images / "b.nii")])
    assert done == [] and len(failed) == 2
    assert isinstance(failed[0][1], ingest.DiskFull) and "no space left on device writing" in str(failed[0][1])
    assert isinstance(failed[1][1], ingest.NotAttempted)
    with session_scope(engine) as s:
        assert repo.table_counts(s)["scans"] == 0
    assert not [p for p in store.root.rglob("*") if p.is_file()]  # the image copied before the mask left again


def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a real full disk: {res.stderr.decode().strip() or res.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 KiB file system (tmpfs; needs the right to mount, else the test is skipped)."""
    yield from _tmpfs(tmp_path / "small", "96k")


def test_a_really_full_disk_stops_the_manifest(engine: Engine, tmp_path: Path, images: Path, small_disk: Path) -> None:
    store = FileStore(small_disk / "store")
    _nifti(images / "big.nii", 9, (32, 64, 64))  # 256 KiB: more than the disk holds
    reqs = read_manifest(
        _manifest(images, "patient_id,date,image\nP1,2024-01-10,a.nii\nP2,2024-01-10,big.nii\nP3,2024-01-10,c.nii\n")
    )
    done, failed = ingest_many(engine, store, reqs)
    assert [r.external_id for r in done] == ["P1"]
    assert [type(e).__name__ for _, e in failed] == ["DiskFull", "NotAttempted"]
    assert str(failed[0][1]).startswith(f"no space left on device writing {store.root}")
    assert len([p for p in store.root.rglob("*") if p.is_file()]) == 1  # P1's image, no partial file


# --- other failures of one row ---------------------------------------------------------------------------------


def test_an_unexpected_error_fails_its_row_and_the_batch_goes_on(
    engine: Engine, tmp_path: Path, images: Path, monkeypatch
) -> None:
    real = ingest.read_image

    def read_image(path, series_uid=None, **options):
        if path.name == "b.nii":
            raise RuntimeError("ITK cannot read this\nsecond line")
        return real(path, series_uid, **options)

    monkeypatch.setattr(ingest, "read_image", read_image)
    reqs = [ScanRequest(p, date(2024, 1, 10), images / f"{n}.nii") for p, n in (("P1", "a"), ("P2", "b"), ("P3", "c"))]
    done, failed = ingest_many(engine, FileStore(tmp_path / "store"), reqs)
    assert [r.external_id for r in done] == ["P1", "P3"]
    ((req, err),) = failed
    assert req.external_id == "P2" and str(err) == f"{images / 'b.nii'}: RuntimeError: ITK cannot read this"


# --- the same manifest twice at once ---------------------------------------------------------------------------


def test_a_row_committed_by_another_run_meanwhile_is_already_present(
    engine: Engine, tmp_path: Path, images: Path, monkeypatch
) -> None:
    """The loser of a race looked before the winner committed, then hit its rows: already present, and it goes on."""
    manifest = _manifest(
        images,
        "patient_id,date,image,mask\nP1,2024-01-10,a.nii,a_mask.nii\nP1,2024-03-01,b.nii,\nP2,2024-01-10,c.nii,\n",
    )
    store = FileStore(tmp_path / "store")
    winner, failed = ingest_many(engine, store, read_manifest(manifest))
    assert not failed
    with session_scope(engine) as s:
        counts = repo.table_counts(s)
    files = sorted(store.root.rglob("*"))
    # the loser: every look-up made before its first write answers as it did before the winner committed
    monkeypatch.setattr(ingest, "_present_without_reading", lambda engine, req: None)
    blind: set[tuple[str, str]] = set()

    def stale(name: str):
        real = getattr(repo, name)

        def lookup(session, key):
            if (name, key) not in blind:
                blind.add((name, key))
                return None
            return real(session, key)

        return lookup

    monkeypatch.setattr(repo, "scan_by_image", stale("scan_by_image"))
    monkeypatch.setattr(repo, "get_patient", stale("get_patient"))
    loser, failed = ingest_many(engine, store, read_manifest(manifest))
    assert failed == []
    assert [r.status for r in loser] == ["already present"] * 3
    assert [r.scan_id for r in loser] == [r.scan_id for r in winner]
    with session_scope(engine) as s:
        assert repo.table_counts(s) == counts
    assert sorted(store.root.rglob("*")) == files


@pytest.mark.postgres
def test_the_same_manifest_ingested_twice_at_once(pg_url: str, tmp_path: Path, images: Path) -> None:
    """Two runs of one manifest side by side on PostgreSQL: every row ends ingested once, nothing fails."""
    from db.migrate import upgrade

    body = "patient_id,date,image\n" + "".join(f"P{i},2024-01-10,{n}.nii\n" for i, n in enumerate("abcde"))
    reqs = read_manifest(_manifest(images, body))
    eng = make_engine(pg_url)
    upgrade(eng)
    store = FileStore(tmp_path / "store")
    start = threading.Barrier(2)
    results: list[object] = []

    def run() -> None:
        start.wait()
        try:
            results.append(ingest_many(eng, store, reqs))
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, tuple) for r in results), results
    for done, failed in results:  # type: ignore[misc]
        assert failed == [] and len(done) == len(reqs)
    statuses = sorted(r.status for done, _ in results for r in done)  # type: ignore[misc]
    assert statuses.count("ingested") == len(reqs)
    with session_scope(eng) as s:
        assert repo.table_counts(s)["scans"] == len(reqs)
    assert len([p for p in store.root.rglob("*") if p.is_file()]) == len(reqs)
    eng.dispose()

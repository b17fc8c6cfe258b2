"""The CLI's failures are one line on stderr naming the cause, exit 1 (2 for usage), and never show a password:
bad or unreachable database URLs, unknown drivers, database and file-system errors nobody else caught."""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.exc import ArgumentError, OperationalError
from typer.testing import CliRunner, Result

import tracker.workflows.views as views
from cli.main import app

SECRET = "Xy7-s3cr3t"
BAD_URLS = {
    "unparsable": (f"postgresql://bob:{SECRET}@db.example:notaport/onco", "is not a valid SQLAlchemy URL"),
    "no scheme": (f"bob:{SECRET}@db.example/onco", "is not a valid SQLAlchemy URL"),
    "unreachable": (f"postgresql://bob:{SECRET}@127.0.0.1:1/onco", "Connection refused"),
    "unknown driver": (f"oracle+nosuch://bob:{SECRET}@db.example/onco", "unknown database driver"),
    "driver not installed": (f"mysql://bob:{SECRET}@db.example/onco", "is not installed"),
}
COMMANDS = (["patients"], ["init"], ["db", "current"], ["db", "upgrade"], ["db", "downgrade", "base"], ["rescore"])


def _lines(res: Result) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


def _one_error_line(res: Result, *words: str) -> str:
    assert res.exit_code == 1, res.output
    lines = _lines(res)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in res.output
    return lines[0]


@pytest.mark.parametrize("case", sorted(BAD_URLS))
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_database_url_problems_are_one_line_without_the_password(
    case: str, command: list[str], home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, words = BAD_URLS[case]
    caplog.set_level(logging.DEBUG)
    res = CliRunner().invoke(app, ["--db", url, *command])
    line = _one_error_line(res, words)
    assert SECRET not in res.output and "bob:***@" in line
    assert SECRET not in caplog.text  # nor in the logs (SQLAlchemy's pool logs connect errors)


@pytest.mark.parametrize("case", ["unparsable", "unreachable", "unknown driver"])
def test_the_url_from_the_environment_is_masked_too(case: str, home: Path, monkeypatch) -> None:
    monkeypatch.setenv("METATRACK_DB", BAD_URLS[case][0])
    res = CliRunner().invoke(app, ["patients"])
    _one_error_line(res, BAD_URLS[case][1])
    assert SECRET not in res.output


@pytest.mark.postgres
def test_a_refused_login_is_one_line(home: Path) -> None:
    from tests.conftest import PG_ADMIN_URL

    host = PG_ADMIN_URL.split("@", 1)[1]
    res = CliRunner().invoke(app, ["--db", f"postgresql://nobody_here:{SECRET}@{host}", "db", "current"])
    _one_error_line(res, "cannot connect to the database", 'role "nobody_here" does not exist')
    assert SECRET not in res.output


def _fails_with(monkeypatch, exc: BaseException) -> None:
    def patients(engine):
        raise exc

    monkeypatch.setattr(views, "patients", patients)


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (
            OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("terminating connection\nsecond line"), True),
            "database error: AdminShutdown: terminating connection second line",
        ),
        (ArgumentError("Can't load plugin: sqlalchemy.dialects:nosuch"), "database error: ArgumentError: Can't load"),
        (OSError(28, "No space left on device", "/data/store/ab/.incoming-x"), "no space left on device writing /data"),
        (PermissionError(13, "Permission denied", "/data/store"), "error: /data/store: Permission denied"),
    ],
    ids=["connection lost", "sqlalchemy argument", "disk full", "permission"],
)
def test_database_and_file_errors_nobody_caught_are_one_line(exc: BaseException, words: str, home: Path, monkeypatch):
    _fails_with(monkeypatch, exc)
    _one_error_line(CliRunner().invoke(app, ["patients"]), words)


@pytest.fixture()
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs filled up (needs the right to mount, else the test is skipped)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for a real full disk: {res.stderr.decode().strip() or res.returncode}")
    try:
        with open(mnt / "filler", "wb") as fh, contextlib.suppress(OSError):
            fh.write(b"x" * (1 << 20))
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_writing_an_output_file_names_it(home: Path, full_disk: Path) -> None:
    for fmt in ("csv", "parquet"):
        out = full_disk / f"cohort.{fmt}"
        res = CliRunner().invoke(app, ["cohort", "--format", fmt, "--output", str(out)])
        _one_error_line(res, f"no space left on device writing {out}")


def test_other_exceptions_are_not_swallowed(home: Path, monkeypatch) -> None:
    _fails_with(monkeypatch, ZeroDivisionError("a bug"))
    res = CliRunner().invoke(app, ["patients"])
    assert isinstance(res.exception, ZeroDivisionError)  # a bug keeps its traceback


def test_usage_errors_still_exit_2(home: Path) -> None:
    assert CliRunner().invoke(app, ["ingest", "--bogus"]).exit_code == 2


def test_every_error_line_masks_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's one error line is the last guard: whatever message reaches it, a URL's password is masked."""
    from cli import output

    output.error("could not reach postgresql+psycopg://bob:s3cret@db.example/metatrack (timeout)")
    err = capsys.readouterr().err
    assert "s3cret" not in err and "bob:***@db.example" in err

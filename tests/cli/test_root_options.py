"""The root options every command shares: --version, --quiet, --verbose, --no-progress."""

from __future__ import annotations

import logging
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import output
from cli.main import app
from tests.helpers import VENDORED_IBSI

PHANTOM = VENDORED_IBSI / "digital_phantom"


@pytest.fixture(autouse=True)
def _normal_verbosity():
    yield
    output.set_verbosity(None)


def test_version_prints_the_installed_distribution_version() -> None:
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.stdout.strip() == f"metatrack {version('metatrack')}"


def test_quiet_silences_messages_but_not_results(home: Path) -> None:
    runner = CliRunner()
    loud = runner.invoke(app, ["init"])
    assert loud.exit_code == 0 and "database ready" in loud.stderr
    quiet = runner.invoke(app, ["-q", "init"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    listed = runner.invoke(app, ["-q", "patients", "--json"])
    assert listed.exit_code == 0 and listed.stdout.strip() == "[]"


def test_quiet_still_prints_errors_on_one_line() -> None:
    res = CliRunner().invoke(app, ["-q", "--db", "notaurl", "patients"])
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: database URL 'notaurl'")


def test_verbose_and_quiet_exclude_each_other() -> None:
    res = CliRunner().invoke(app, ["-v", "-q", "patients"])
    assert res.exit_code == 2 and "exclude each other" in res.stderr


def test_verbose_routes_the_library_log_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    output.set_verbosity(output.Verbosity.VERBOSE)
    logging.getLogger("metatrack.db").debug("retrying after a lost connection")
    assert "metatrack.db DEBUG retrying after a lost connection" in capsys.readouterr().err
    output.set_verbosity(None)
    logging.getLogger("metatrack.db").debug("not shown")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("flag", ["--no-progress", "-q"])
def test_features_batch_honours_no_progress(tmp_path: Path, flag: str) -> None:
    batch = tmp_path / "pairs.csv"
    batch.write_text(f"image,mask,label\n{PHANTOM / 'image' / 'phantom.nii.gz'},{PHANTOM / 'mask' / 'mask.nii.gz'},1\n")
    out = tmp_path / "rows.csv"
    shown = CliRunner().invoke(app, ["features", "--batch", str(batch), "-c", "ibsi_dp", "-o", str(out)])
    assert shown.exit_code == 0 and "1/1" in shown.stderr  # the bar's count
    hidden = CliRunner().invoke(app, [flag, "features", "--batch", str(batch), "-c", "ibsi_dp", "-o", str(out)])
    assert hidden.exit_code == 0 and "1/1" not in hidden.stderr
    assert out.read_text().count("\n") == 2  # header and the one pair

"""Options with fixed choices: the CLI's enums agree with the names they mirror, and the parser refuses typos."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.choices import Preset, Role
from cli.main import app
from registration import PRESETS
from tracker.records import ScanRole


def test_presets_are_the_registration_presets() -> None:
    assert {p.value for p in Preset} == set(PRESETS)


def test_roles_are_the_scan_roles() -> None:
    assert [r.value for r in Role] == [r.value for r in ScanRole]


@pytest.mark.parametrize(
    ("args", "bad"),
    [
        (["process", "--preset", "acurate"], "acurate"),
        (["cohort", "--format", "xlsx"], "xlsx"),
        (["features", "--batch", "x.csv", "--format", "yaml"], "yaml"),
        (["ingest", "x.nii.gz", "-p", "P1", "--modality", "PET"], "PET"),
        (["ingest", "x.nii.gz", "-p", "P1", "--role", "followup"], "followup"),
        (["export", "lesions", "-o", "x.csv", "--format", "xls"], "xls"),
    ],
)
def test_a_typo_is_refused_by_the_parser_with_the_choices(args: list[str], bad: str) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert bad in res.stderr


def test_help_lists_the_choices() -> None:
    res = CliRunner().invoke(app, ["process", "--help"], env={"COLUMNS": "200"})
    assert all(p.value in res.stdout for p in Preset)


def test_modality_is_case_insensitive(home: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "missing.nii.gz"), "-p", "P1", "--modality", "mr"])
    assert res.exit_code == 1 and "missing.nii.gz" in res.stderr  # parsed; refused later for the missing file

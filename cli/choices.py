"""The fixed choices of command-line options, as enums: `--help` lists them and the parser refuses a typo.

They mirror names owned elsewhere (registration presets, scan roles) without importing those modules, so that
`metatrack --help` stays light; tests/cli/test_choices.py checks that the two agree.
"""

from __future__ import annotations

import enum


class Modality(enum.StrEnum):
    CT = "CT"
    MR = "MR"


class Role(enum.StrEnum):
    BASELINE = "baseline"
    FOLLOW_UP = "follow-up"


class Preset(enum.StrEnum):
    """Registration presets (``registration.engine.PRESETS``)."""

    ACCURATE = "accurate"
    FAST = "fast"
    DEMONS = "demons"
    SYN = "syn"
    AFFINE = "affine"


class TableFormat(enum.StrEnum):
    TABLE = "table"
    CSV = "csv"
    PARQUET = "parquet"


class FileFormat(enum.StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


class RecordFormat(enum.StrEnum):
    CSV = "csv"
    JSON = "json"

"""The lesion table: long rows pivoted into wide rows as they stream, written as CSV and Parquet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tracker.errors import MetatrackError
from tracker.exports.tables import (
    KEY_COLUMNS,
    TableFormat,
    lesion_columns,
    pivot_lesion_rows,
    table_format,
    write_table,
)

TAGS = ("morph_volume", "stat_mean")


def _keys(lesion_id: int, region: str | None, track: int | None = 1) -> tuple:
    cfg = ("ct_default", "ab" * 32, "engine 0.1") if region else (None, None, None)
    lesion = ("P1", "2024-01-02", 7, lesion_id, lesion_id, track, "new", "target", "liver", 100.0, 9.0, 6.0)
    return (*lesion, "given", None, region, *cfg)


def _long_rows() -> list[tuple]:
    return [
        (*_keys(1, "lesion"), "morph_volume", 100.0, 101.0),
        (*_keys(1, "lesion"), "stat_mean", 40.0, None),
        (*_keys(1, "shell"), "stat_mean", -20.0, -19.0),
        (*_keys(2, None, track=None), None, None, None),  # a lesion without features
    ]


def test_pivot_gives_one_wide_row_per_lesion_region() -> None:
    rows = list(pivot_lesion_rows([_long_rows()[:2], _long_rows()[2:]], TAGS))
    n = len(KEY_COLUMNS)
    assert len(rows) == 3 and all(len(r) == len(lesion_columns(TAGS)) for r in rows)
    assert rows[0][:n] == list(_keys(1, "lesion")) and rows[0][n:] == [100.0, 40.0, 101.0, None]
    assert rows[1][:n] == list(_keys(1, "shell")) and rows[1][n:] == [None, -20.0, None, -19.0]
    assert rows[2][:n] == list(_keys(2, None, track=None)) and rows[2][n:] == [None] * 4


def test_pivot_streams_batch_by_batch() -> None:
    consumed = []

    def batches() -> Iterator[list[tuple]]:
        for i, row in enumerate(_long_rows()):
            consumed.append(i)
            yield [row]

    wide = pivot_lesion_rows(batches(), TAGS)
    next(wide)  # the first lesion region is complete once the next one's first row arrives
    assert consumed == [0, 1, 2]


def test_a_tag_outside_the_columns_is_refused() -> None:
    with pytest.raises(MetatrackError, match="'stat_mean' appeared after"):
        list(pivot_lesion_rows([_long_rows()], ("morph_volume",)))


@pytest.mark.parametrize("fmt", list(TableFormat))
def test_written_table_reads_back(tmp_path: Path, fmt: TableFormat) -> None:
    path = tmp_path / f"lesions.{fmt.value}"
    wide = list(pivot_lesion_rows([_long_rows()], TAGS))
    assert write_table(iter(wide), lesion_columns(TAGS), path, fmt, batch_rows=2) == 3
    df = pd.read_csv(path) if fmt is TableFormat.CSV else pd.read_parquet(path)
    assert list(df.columns) == lesion_columns(TAGS)
    assert df["lesion_id"].tolist() == [1, 1, 2] and df["region"].tolist()[:2] == ["lesion", "shell"]
    np.testing.assert_array_equal(df["stat_mean"], [40.0, -20.0, np.nan])
    np.testing.assert_array_equal(df["harmonised_morph_volume"], [101.0, np.nan, np.nan])
    assert df["track"].tolist()[:2] == [1, 1] and pd.isna(df["track"].iloc[2])
    assert df["patient_id"].tolist() == ["P1"] * 3


def test_unknown_format_is_refused() -> None:
    assert table_format(" Parquet ") is TableFormat.PARQUET
    with pytest.raises(MetatrackError, match="--format 'xlsx': expected one of csv, parquet"):
        table_format("xlsx")

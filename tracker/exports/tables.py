"""The lesion table: long feature rows (one tag a row) pivoted lesion region by lesion region into wide rows and
written as CSV or Parquet in batches, so memory stays flat whatever the number of rows."""

from __future__ import annotations

import csv
import enum
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

from tracker.errors import MetatrackError

# Columns before the features; `db.exports.LESION_STREAM_COLUMNS` is these and then tag, value, harmonised.
# `region` is "lesion" or "shell" (the peritumoral shell), empty for a lesion without features.
KEY_COLUMNS = (
    "patient_id",
    "date",
    "scan_id",
    "lesion_id",
    "label",
    "track",
    "change",
    "recist_role",
    "organ",
    "volume_mm3",
    "long_axis_mm",
    "short_axis_mm",
    "source",
    "confidence",
    "region",
    "feature_config",
    "feature_config_sha256",
    "engine_version",
)
_INT_COLUMNS = {"scan_id", "lesion_id", "label", "track"}
_FLOAT_COLUMNS = {"volume_mm3", "long_axis_mm", "short_axis_mm", "confidence"}
HARMONISED_PREFIX = "harmonised_"
# a lesion region's key: lesion id, feature config hash, region
_GROUP = itemgetter(
    KEY_COLUMNS.index("lesion_id"), KEY_COLUMNS.index("feature_config_sha256"), KEY_COLUMNS.index("region")
)


class TableFormat(enum.StrEnum):
    CSV = "csv"
    PARQUET = "parquet"


def table_format(value: str) -> TableFormat:
    """The format named by `value` (case-insensitive); anything else is refused naming the choices."""
    try:
        return TableFormat(value.strip().lower())
    except ValueError as exc:
        raise MetatrackError(f"--format {value!r}: expected one of {', '.join(f.value for f in TableFormat)}") from exc


def lesion_columns(tags: Sequence[str]) -> list[str]:
    """The wide table's columns: the keys, each tag's raw value, then each tag's harmonised value."""
    return [*KEY_COLUMNS, *tags, *(f"{HARMONISED_PREFIX}{t}" for t in tags)]


def pivot_lesion_rows(batches: Iterable[Sequence[tuple]], tags: Sequence[str]) -> Iterator[list[Any]]:
    """Wide rows (`lesion_columns(tags)`) from long rows that arrive grouped by lesion region (keys, tag, value,
    harmonised). A tag missing from `tags` is refused: the columns are fixed before the first row is written."""
    position = {t: i for i, t in enumerate(tags)}
    n_keys, n_tags = len(KEY_COLUMNS), len(tags)
    current: list[Any] | None = None
    key: tuple[Any, ...] | None = None
    for batch in batches:
        for row in batch:
            row_key = _GROUP(row)
            if row_key != key:
                if current is not None:
                    yield current
                key = row_key
                current = [*row[:n_keys], *([None] * (2 * n_tags))]
            tag = row[n_keys]
            if tag is None:
                continue
            if tag not in position:
                raise MetatrackError(f"feature tag {tag!r} appeared after the table's columns were fixed; export again")
            assert current is not None
            current[n_keys + position[tag]] = row[n_keys + 1]
            current[n_keys + n_tags + position[tag]] = row[n_keys + 2]
    if current is not None:
        yield current


def _batched(rows: Iterable[list[Any]], size: int) -> Iterator[list[list[Any]]]:
    batch: list[list[Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_table(
    rows: Iterable[list[Any]], columns: Sequence[str], path: Path, fmt: TableFormat, batch_rows: int = 2000
) -> int:
    """Write rows to `path` as CSV or Parquet, `batch_rows` at a time; returns the number of rows.

    Parquet columns are typed: ids as int64, text as strings, everything else float64 (nulls kept).
    """
    n = 0
    if fmt is TableFormat.CSV:
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for batch in _batched(rows, batch_rows):
                writer.writerows(["" if v is None else v for v in row] for row in batch)
                n += len(batch)
        return n
    import pyarrow as pa
    import pyarrow.parquet as pq

    def arrow_type(name: str) -> pa.DataType:
        if name in _INT_COLUMNS:
            return pa.int64()
        if name in KEY_COLUMNS and name not in _FLOAT_COLUMNS:
            return pa.string()
        return pa.float64()

    schema = pa.schema([(c, arrow_type(c)) for c in columns])
    with pq.ParquetWriter(path, schema) as writer:
        for batch in _batched(rows, batch_rows):
            arrays = [pa.array([row[i] for row in batch], type=schema.field(i).type) for i in range(len(columns))]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            n += len(batch)
    return n

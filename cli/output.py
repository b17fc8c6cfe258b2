"""Printing: data to stdout (rich tables or JSON/CSV), logs and progress to stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Piped output is not wrapped at 80 columns: tables keep their rows on one line.
PIPE_WIDTH = 200
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, soft_wrap=True)


def _default(o: Any) -> Any:
    if isinstance(o, date | datetime):
        return o.isoformat()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_json(data: Any) -> None:
    """JSON on stdout (plain print: no markup, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_default, allow_nan=True) + "\n")


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """A readable table on stdout."""
    cols = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title, show_lines=False)
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in cols])
    out.print(table)


def log(msg: str) -> None:
    err.print(msg, highlight=False)


@contextmanager
def progress(description: str, total: int, enabled: bool = True) -> Iterator[Any]:
    """A progress bar on stderr; yields a function advance(n=1)."""
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)

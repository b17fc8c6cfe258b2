"""Printing: data to stdout (rich tables or JSON/CSV), logs and progress to stderr."""

from __future__ import annotations

import enum
import json
import logging
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tracker.errors import one_line, redact_url

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


# Characters a terminal would act on or hide (controls, ANSI escapes, zero-width and bidi marks, line separators)
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def escape(text: str, keep: str = "") -> str:
    """`text` with control and invisible characters written as escapes (``\\x1b``, ``\\u200b``), so that a patient
    ID or a file name prints as what it is; characters in `keep` (e.g. a newline) stay."""
    if not any(unicodedata.category(c) in _INVISIBLE for c in text):
        return text
    return "".join(
        c if c in keep or unicodedata.category(c) not in _INVISIBLE else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def _cell(v: Any) -> Text:
    """A table cell as plain text: no rich markup (an ID like ``[bold]x[/]`` prints as it is), escapes visible."""
    if v is None:
        return Text("-")
    if isinstance(v, float):
        return Text(f"{v:.4g}")
    return Text(escape(str(v)))


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    """A readable table on stdout."""
    cols = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=Text(escape(title)) if title is not None else None, show_lines=False)
    for c in cols:
        table.add_column(Text(escape(str(c))), overflow="fold")
    for r in rows:
        table.add_row(*[_cell(r.get(c)) for c in cols])
    out.print(table)


class Verbosity(enum.IntEnum):
    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


_verbosity = Verbosity.NORMAL


def set_verbosity(level: Verbosity | None) -> None:
    """Quiet: no messages (errors and results still print). Verbose: the library's diagnostic log on stderr too."""
    global _verbosity
    _verbosity = Verbosity.NORMAL if level is None else level
    logger = logging.getLogger("metatrack")
    for handler in [h for h in logger.handlers if getattr(h, "_metatrack_cli", False)]:
        logger.removeHandler(handler)
    if _verbosity is Verbosity.VERBOSE:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler._metatrack_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    else:
        logger.setLevel(logging.WARNING if _verbosity is Verbosity.NORMAL else logging.ERROR)


def print_text(text: str) -> None:
    """A plain line on stdout (a result, never suppressed)."""
    sys.stdout.write(text + "\n")


def log(msg: str) -> None:
    """A message on stderr, printed as it is (no markup; control characters escaped); nothing with --quiet."""
    if _verbosity is Verbosity.QUIET:
        return
    err.print(escape(msg, keep="\n"), highlight=False, markup=False)


def error(msg: str) -> None:
    """``error: <msg>`` on stderr, on one line, printed as it is, any password in a URL masked."""
    err.print(f"error: {escape(redact_url(one_line(msg)))}", highlight=False, markup=False, soft_wrap=True)


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

"""The one exception type metatrack raises for user-facing problems, and what keeps secrets out of messages."""

from __future__ import annotations

import errno
import re

# scheme://user:password@ -- the password runs to the token's last '@' (an unescaped '@' in a password is kept
# secret too), or, when the token has none, to the first '@' on the line (a password with spaces)
_SCHEME_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][\w+.\-]*:/{1,3}[^\s:/@'\"]*):(?:\S*|[^@/\n]*)@")
# user:password@host without a scheme (a URL SQLAlchemy cannot parse)
_BARE_CREDENTIALS = re.compile(r"(?:^|(?<=[\s'\"(<=,/]))(?P<head>[\w.%+\-]+):(?!/)\S*@(?=\S)")
# libpq keyword/value connection strings and URL query parameters
_KEYWORD_PASSWORD = re.compile(r"(?i)(?P<head>\b(?:password|passwd|pwd)\s*=\s*)(?:'[^']*'|\"[^\"]*\"|[^\s&;,)'\"]+)")


class MetatrackError(Exception):
    """A problem with the user's input or data, reported as one line.

    The message names the file, field or value at fault and, where possible, what was expected,
    e.g. ``"mask.nii.gz: spacing differs from image by 0.5 mm (image 1.0, mask 1.5)"``.
    """


def redact_url(text: str) -> str:
    """`text` with the password of every ``user:password@`` (and ``password=...``) in it replaced by ``***``.

    Works on any string -- a URL, an unparsable one, a driver's error message -- and never raises.
    """
    text = _SCHEME_CREDENTIALS.sub(r"\g<head>:***@", text)
    text = _BARE_CREDENTIALS.sub(r"\g<head>:***@", text)
    return _KEYWORD_PASSWORD.sub(r"\g<head>***", text)


def one_line(text: str) -> str:
    """`text` on one line: its lines joined, SQLAlchemy's "Background on this error" link dropped."""
    lines = (ln.strip() for ln in str(text).splitlines())
    return " ".join(ln for ln in lines if ln and not ln.startswith("(Background on this error"))


def is_database_error(exc: BaseException) -> bool:
    """SQLAlchemy's and the drivers' exceptions, recognised by their module (no database code imported here)."""
    return any(c.__module__.split(".")[0] in ("sqlalchemy", "psycopg", "sqlite3") for c in type(exc).__mro__)


def describe_db_error(exc: BaseException) -> str:
    """One line naming a database error's cause, password masked: the driver's message without SQL."""
    orig = getattr(exc, "orig", None) or exc
    return redact_url(one_line(f"{type(orig).__name__}: {orig}"))


def os_error_message(exc: OSError) -> str:
    """One line for a file-system error: ENOSPC as "no space left on device writing <path>"."""
    path = exc.filename2 if exc.filename2 is not None else exc.filename
    if exc.errno == errno.ENOSPC:
        return "no space left on device" + (f" writing {path}" if path is not None else "")
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{path}: {reason}" if path is not None else reason

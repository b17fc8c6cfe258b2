"""The one exception type metatrack raises for user-facing problems, and what keeps secrets out of messages."""

from __future__ import annotations

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

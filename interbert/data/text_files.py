"""Text files users hand us (manifests, caption files) must be UTF-8; a byte that is not becomes
an error naming the file, line and column instead of a bare UnicodeDecodeError."""
from __future__ import annotations

from contextlib import contextmanager

from interbert.errors import UserError


class NotUtf8Error(UserError, ValueError):
    pass


def not_utf8(path) -> NotUtf8Error | None:
    """The error for `path`, naming its first line that is not UTF-8; None when every line is."""
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return NotUtf8Error(f"{path}:{line_number}: byte 0x{line[error.start]:02x} at column {error.start + 1} "
                                    "is not UTF-8; convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    return None


@contextmanager
def utf8_errors_named(*paths):
    """Turn a UnicodeDecodeError raised while reading `paths` into the error naming the line."""
    try:
        yield
    except UnicodeDecodeError as original:
        for path in paths:
            error = not_utf8(path)
            if error is not None:
                raise error from None
        raise NotUtf8Error(f"{', '.join(map(str, paths))}: not UTF-8 text ({original})") from None

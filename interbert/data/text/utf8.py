"""Text that users hand us (manifests, caption files) must be UTF-8; a byte that is not becomes
an error naming the file, line and column instead of a bare UnicodeDecodeError."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from interbert.data.text.input_streams import input_parts
from interbert.errors import UserError


class NotUtf8Error(UserError, ValueError):
    pass


def decode_utf8(data: bytes, name: str, first_line: int = 1) -> str:
    """``data`` (lines of the input ``name``, the first of them line ``first_line``) as text; a
    byte that is not UTF-8 is a NotUtf8Error naming its line and column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + data.count(b"\n", 0, error.start)
        column = error.start - data.rfind(b"\n", 0, error.start)
        raise NotUtf8Error(f"{name}:{line}: byte 0x{data[error.start]:02x} at column {column} is not UTF-8; "
                           "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def utf8_lines(path: str, members: Iterable[str] = ("*",)) -> Iterator[tuple]:
    """``(part name, line number, text)`` of every line of the input at ``path`` (a file, a pipe,
    ``-``, compressed: ``input_streams``), line endings kept."""
    for part in input_parts(path, members):
        for number, line in enumerate(part.stream, 1):
            yield part.name, number, decode_utf8(line, part.name, number)


def not_utf8(path) -> NotUtf8Error | None:
    """The error for `path`, naming its first line that is not UTF-8; None when every line is."""
    with open(path, "rb") as handle:
        for line_number, line in enumerate(handle, 1):
            try:
                decode_utf8(line, str(path), line_number)
            except NotUtf8Error as error:
                return error
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

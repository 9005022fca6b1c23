"""Opening what a user names as input: a plain file, a pipe or FIFO (``<(zcat x.tsv.gz)``,
``/dev/stdin``), standard input (``-``), or a gzip, bzip2 or zip file.

Compression is recognised by the first bytes, whatever the name says. A zip archive gives its
members whose names match the caller's patterns, in name order, each as its own part (named
``ARCHIVE!MEMBER`` in messages); it must be a file, since its index is at its end. What is not
read (xz, zstd, 7z, rar, lz4, compress, tar, also inside gzip or bzip2) is one ``InputError``
naming the file, what it is and how to decompress it. So are damaged or cut-short compressed
data, found while reading.

Converters split a *plain file* (``is_plain_file``: a regular, uncompressed file) into byte
ranges that workers read themselves; anything else is read once, in order, by the main process
(``input_parts``; ``line_blocks`` cuts a part into blocks of whole lines for the workers).
"""
from __future__ import annotations

import bz2
import fnmatch
import gzip
import io
import os
import stat
import sys
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from interbert.errors import UserError

STDIN = "-"
HEAD_BYTES = 265  # enough to see tar's "ustar" at offset 257
READ_BUFFER = 1 << 20
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"PK\x03\x04": "zip", b"PK\x05\x06": "zip"}
NOT_READ = {  # magic bytes -> (what it is, how to decompress it to a pipe)
    b"\xfd7zXZ\x00": ("xz-compressed", "xz -dc FILE"),
    b"\x28\xb5\x2f\xfd": ("zstd-compressed", "zstd -dc FILE"),
    b"7z\xbc\xaf\x27\x1c": ("a 7z archive", "7z e -so FILE"),
    b"Rar!\x1a\x07": ("a rar archive", "unrar p -inul FILE"),
    b"\x04\x22\x4d\x18": ("lz4-compressed", "lz4 -dc FILE"),
    b"\x1f\x9d": ("compressed with compress (.Z)", "uncompress -c FILE"),
}
TAR_MAGIC_AT = 257
READS = "plain, gzip, bzip2 and zip files, pipes and stdin (-)"
DECODE_ERRORS = (EOFError, OSError, zlib.error, zipfile.BadZipFile, NotImplementedError)


class InputError(UserError, ValueError):
    """An input that cannot be opened or read; the message names it and what to do."""


def input_name(path: str) -> str:
    """How messages name an input."""
    return "stdin" if path == STDIN else str(path)


def check_input(path: str) -> None:
    """Stop early for an input that does not exist, is a directory, or (a regular file) is of a
    kind that is not read. Pipes and FIFOs are only checked when they are read."""
    if path == STDIN:
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be opened ({error.strerror})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{path}: is a directory; give the file(s) in it")
    if stat.S_ISREG(mode):
        with _open_raw(path) as handle:
            _kind(handle.read(HEAD_BYTES), path)


def is_plain_file(path: str) -> bool:
    """A regular file that is not compressed: it may be split by size and read from several
    processes. ``/dev/stdin`` redirected from a file counts; ``-`` never does."""
    if path == STDIN or not os.path.isfile(path):
        return False
    with _open_raw(path) as handle:
        return _kind(handle.read(HEAD_BYTES), path) == "plain"


@dataclass
class InputPart:
    """One readable stream of an input: the input itself, or one member of a zip archive."""

    name: str
    stream: BinaryIO


def input_parts(path: str, members: Iterable[str] = ("*",)) -> Iterator[InputPart]:
    """The parts of the input at ``path`` (``-``: stdin), opened in turn and closed when the next
    is asked for. ``members``: name patterns (``fnmatch``, on the member's base name) of the zip
    members to read."""
    name = input_name(path)
    if path == STDIN and sys.stdin is None:
        raise InputError("- names stdin, but this process has no standard input; give a file")
    from_stdin = path == STDIN
    raw = sys.stdin.buffer if from_stdin else _open_raw(path)
    try:
        head = _read_head(raw)
        kind = _kind(head, name)
        if kind == "zip":
            if from_stdin or not os.path.isfile(path):
                raise InputError(f"{name}: a zip archive cannot be read from a pipe (its index is at its end); "
                                 "give the .zip file itself, or pipe one member: "
                                 "unzip -p FILE MEMBER | interbert data ... -")
            yield from _zip_parts(path, tuple(members))
            return
        stream = _buffered(_Reader(raw, name, head))
        if kind == "plain":
            yield InputPart(name, stream)
            return
        opened = gzip.GzipFile(fileobj=stream, mode="rb") if kind == "gzip" else bz2.BZ2File(stream)
        reader = _Reader(opened, name, what=kind)
        inner = _read_head(reader)
        inner_kind = _kind(inner, name, inside=kind)
        if inner_kind != "plain":
            raise InputError(f"{name}: {inner_kind} data inside {kind}, which is not read; decompress the outer "
                             f"layer first and give the result")
        yield InputPart(name, _buffered(_Reader(reader, name, inner)))
    finally:
        if not from_stdin:
            raw.close()


def whole_parts(path: str, members: Iterable[str] = ("*",)) -> Iterator[tuple]:
    """``(part name, bytes)`` of each part of a small input (a JSON file), read whole."""
    for part in input_parts(path, members):
        yield part.name, part.stream.read()


def whole_input(path: str, members: Iterable[str] = ("*",)) -> tuple:
    """``(name, bytes)`` of an input that must be one part (a zip archive with one matching member)."""
    parts = list(whole_parts(path, members))
    if len(parts) != 1:
        names = ", ".join(name for name, _ in parts)
        raise InputError(f"{input_name(path)}: {len(parts)} zip members match {' or '.join(members)} ({names}); "
                         "pipe the one to use: unzip -p FILE MEMBER | interbert data ... -")
    return parts[0]


def line_blocks(stream: BinaryIO, block_bytes: int, first_line: int = 1, head: bytes = b"") -> Iterator[tuple]:
    """``(number of its first line, block)``: the rest of ``stream`` after ``head`` (bytes already
    read from it, whole lines) in blocks of about ``block_bytes`` that end at a line end."""
    line = first_line
    while True:
        block = head + stream.read(block_bytes)
        head = b""
        if not block:
            return
        if not block.endswith(b"\n"):
            block += stream.readline()
        yield line, block
        line += block.count(b"\n")


def _open_raw(path: str):
    try:
        return open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory; give the file(s) in it") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be opened ({error.strerror})") from None


def _read_head(source) -> bytes:
    """Up to HEAD_BYTES from the start of ``source`` (a pipe may give them in several reads)."""
    head = b""
    while len(head) < HEAD_BYTES:
        data = source.read(HEAD_BYTES - len(head))
        if not data:
            break
        head += data
    return head


def _unpack_hint(head: bytes) -> str:
    if head[TAR_MAGIC_AT:TAR_MAGIC_AT + 5] == b"ustar":
        return "tar -xf FILE, then give the files in it"
    for magic, (_, hint) in NOT_READ.items():
        if head.startswith(magic):
            return f"{hint} | interbert data ... -"
    return "decompress it to a plain file"


def _kind(head: bytes, name: str, inside: str = "") -> str:
    """``plain``, ``gzip``, ``bzip2`` or ``zip`` from an input's first bytes (``inside``: of the
    data inside that compression); InputError for the kinds that are not read."""
    for magic, kind in COMPRESSED.items():
        if head.startswith(magic):
            return kind
    within = f" inside {inside}" if inside else ""
    for magic, (what, _) in NOT_READ.items():
        if head.startswith(magic):
            raise InputError(f"{name}: {what}{within}, which is not read (the converters read {READS}); "
                             f"decompress it first, e.g. {_unpack_hint(head)}")
    if head[TAR_MAGIC_AT:TAR_MAGIC_AT + 5] == b"ustar":
        raise InputError(f"{name}: a tar archive{within}, which is not read (the converters read {READS}); "
                         f"{_unpack_hint(head)}")
    return "plain"


def _zip_parts(path: str, members: tuple) -> Iterator[InputPart]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{path}: not a readable zip archive ({error})") from None
    with archive:
        names = sorted(info.filename for info in archive.infolist() if not info.is_dir())
        chosen = [n for n in names if any(fnmatch.fnmatch(os.path.basename(n), p) for p in members)]
        if not chosen:
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none"
            raise InputError(f"{path}: no member of the zip archive matches {' or '.join(members)} (members: "
                             f"{shown}); unzip it and give the file")
        for member in chosen:
            part_name = f"{path}!{member}"
            try:
                opened = archive.open(member)
            except (*DECODE_ERRORS, RuntimeError) as error:  # RuntimeError: an encrypted member
                raise InputError(f"{part_name}: cannot be read ({type(error).__name__}: {error}); unzip it and "
                                 "give the file") from None
            with opened:
                yield InputPart(part_name, _buffered(_Reader(opened, part_name, what="zip member")))


def _buffered(raw: io.RawIOBase) -> io.BufferedReader:
    return io.BufferedReader(raw, buffer_size=READ_BUFFER)


class _Reader(io.RawIOBase):
    """A raw stream over ``source`` that first gives ``head`` (bytes already taken from it) and
    turns a failure to read or decompress into an InputError naming the input."""

    def __init__(self, source, name: str, head: bytes = b"", what: str | None = None):
        super().__init__()
        self._source, self._name, self._head, self._what = source, name, head, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        try:
            data = self._source.read(len(buffer))
        except DECODE_ERRORS as error:
            if self._what is None:
                raise InputError(f"{self._name}: cannot be read ({error})") from None
            raise InputError(f"{self._name}: the {self._what} data is damaged or cut short ({type(error).__name__}: "
                             f"{error}); check the download, or decompress it to see where it ends") from None
        buffer[:len(data)] = data
        return len(data)

"""Bottom-up-attention TSV files → feature store (``interbert data convert-tsv``).

Tab-separated, no quoting, one image per row, arrays as base64 of raw little-endian bytes. The
layout comes from, in order: ``--columns`` (names or a preset of ``TSV_LAYOUTS``); a header row
(first field ``image_id``/``img_id``); else the first row's column count together with which
columns parse as numbers, so LXMERT's 10 columns (``img_id, img_h, img_w, objects_id, ...,
num_boxes, boxes, features``) are told apart from bottom-up-attention's 10. A row that matches
no known layout stops the conversion with the layouts listed. Array dtypes: float32; ids int64
when 8 bytes per box, else int32.

A plain file is split into byte ranges of whole lines that each worker reads itself; a record's
place is reported as ``file:line`` (the line is counted only when a message needs it). Any other
input (a pipe, FIFO or ``-``, a gzip / bzip2 file, the ``.tsv`` members of a zip archive:
``input_streams``) is read once, in order, by the main process, which hands blocks of whole lines
to the workers; their lines are counted as they are read.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np

from interbert.data.ingest.conversion import (
    ConversionOptions,
    ConversionResult,
    ConvertedImage,
    each_record,
    ensure_new_output,
    run_conversion,
)
from interbert.data.ingest.detections import ConversionError, array_from_bytes, decode_base64, detections_to_record
from interbert.data.text.input_streams import check_input, input_name, input_parts, is_plain_file, line_blocks

BASE = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
DETECTIONS = ["objects_id", "objects_conf", "attrs_id", "attrs_conf"]
TSV_LAYOUTS = {
    "bottom-up": BASE,
    "bottom-up-cls-prob": BASE + ["cls_prob"],
    "bottom-up-detections": BASE + DETECTIONS,
    "bottom-up-cls-prob-detections": BASE + ["cls_prob"] + DETECTIONS,
    "lxmert": ["image_id", "image_h", "image_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
               "num_boxes", "boxes", "features"],
}
ALIASES = {"img_id": "image_id", "img_w": "image_w", "img_h": "image_h"}
NUMBER_COLUMNS = ("image_w", "image_h", "num_boxes")
ARRAY_COLUMNS = ("boxes", "features", "cls_prob", *DETECTIONS)
CHUNK_BYTES = 4 << 20  # one unit of work: ~10 rows of 36 regions
TSV_MEMBERS = ("*.tsv", "*.tsv.[0-9]*")  # the zip members read: bottom-up-attention's GPUs write NAME.tsv.0, ...
_NUMBER = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True)
class SourceLine:
    """A row of a text file, by byte offset; ``str`` counts the line number (only when asked)."""

    path: str
    offset: int

    def __str__(self) -> str:
        line, left = 1, self.offset
        with open(self.path, "rb") as handle:
            while left > 0:  # in blocks: the offset may lie hundreds of GB into the file
                block = handle.read(min(left, 16 << 20))
                if not block:
                    break
                line += block.count(b"\n")
                left -= len(block)
        return f"{self.path}:{line}"


@dataclass(frozen=True)
class NumberedLine:
    """A row of an input read in order (a pipe, a compressed file), its line counted as it was read."""

    name: str
    line: int

    def __str__(self) -> str:
        return f"{self.name}:{self.line}"


@dataclass(frozen=True)
class FileRange:
    """A unit of work on a plain file: the whole lines from byte ``begin`` to ``end``, read by the worker."""

    path: str
    begin: int
    end: int

    def lines(self) -> Iterable[tuple]:
        with open(self.path, "rb") as handle:
            handle.seek(self.begin)
            block = handle.read(self.end - self.begin)
        offset = self.begin
        for line in block.split(b"\n"):
            yield SourceLine(self.path, offset), line
            offset += len(line) + 1


@dataclass(frozen=True)
class LineBlock:
    """A unit of work on an input read in order: whole lines, the first of them line ``first_line``."""

    name: str
    first_line: int
    data: bytes

    def lines(self) -> Iterable[tuple]:
        for number, line in enumerate(self.data.split(b"\n"), self.first_line):
            yield NumberedLine(self.name, number), line


def layout_from_row(row: list, where: str) -> list:
    """The layout whose number columns are exactly the fields of ``row`` that parse as numbers."""
    numeric = {i for i, value in enumerate(row) if _NUMBER.fullmatch(value.strip())}
    matches = [name for name, columns in TSV_LAYOUTS.items() if len(columns) == len(row)
               and {columns.index(c) for c in NUMBER_COLUMNS} <= numeric
               and not numeric & {columns.index(c) for c in ARRAY_COLUMNS if c in columns}]
    if len(matches) != 1:
        known = "; ".join(f"{name} ({', '.join(columns)})" for name, columns in TSV_LAYOUTS.items())
        found = f"{len(row)} columns, numbers in columns {sorted(i + 1 for i in numeric)}"
        raise ConversionError(f"{where}: the row matches {'no' if not matches else 'more than one'} known TSV "
                              f"layout ({found}). Known layouts: {known}. Name the columns with --columns "
                              "PRESET or --columns image_id,image_w,...")
    return TSV_LAYOUTS[matches[0]]


def tsv_columns(first: bytes, name: str, columns: str | None) -> tuple:
    """``(column names, whether ``first`` is a header row)`` of the TSV input ``name`` whose first
    line is ``first``."""
    row = first.rstrip(b"\r\n").split(b"\t")
    header = False
    if columns:
        names = TSV_LAYOUTS.get(columns) or [c.strip() for c in columns.split(",")]
    elif row and row[0] in (b"image_id", b"img_id"):
        names, header = [c.decode("utf-8", "replace") for c in row], True
    elif not first.strip():
        raise ConversionError(f"{name}:1: the input is empty or starts with an empty line; give a TSV of "
                              "detector output")
    else:
        names = layout_from_row(row, f"{name}:1")
    names = [ALIASES.get(n, n) for n in names]
    missing = [c for c in BASE if c not in names]
    if missing:
        raise ConversionError(f"{name}: columns {missing} are missing from {names}; name them with --columns")
    return names, header


def byte_ranges(path: str, start: int, chunk: int = CHUNK_BYTES) -> Iterable[FileRange]:
    """Ranges of whole lines covering the plain file ``path`` from byte ``start``."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        begin = start
        while begin < size:
            handle.seek(min(begin + chunk, size))
            handle.readline()
            end = min(handle.tell(), size)
            yield FileRange(path, begin, end)
            begin = end


def plain_file_units(path: str, columns: str | None) -> tuple:
    """``(column names, FileRange units)`` of a plain file (its layout read before any work starts)."""
    with open(path, "rb") as handle:
        first = handle.readline()
    names, header = tsv_columns(first, path, columns)
    return names, byte_ranges(path, len(first) if header else 0)


def stream_units(path: str, columns: str | None) -> Iterable[tuple]:
    """``(column names, LineBlock)`` units of an input read in order, each part's layout from its
    own first line."""
    for part in input_parts(path, TSV_MEMBERS):
        first = part.stream.readline()
        names, header = tsv_columns(first, part.name, columns)
        head, first_line = (b"", 2) if header else (first, 1)
        for number, block in line_blocks(part.stream, CHUNK_BYTES, first_line, head):
            yield names, LineBlock(part.name, number, block)


def _number(value: bytes, column: str, where) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConversionError(f"{where}: column {column} is {value[:40]!r}, not a number; the file does not "
                              "follow the layout (see --columns)") from None


def parse_row(fields: dict, where, feature_size: int, objects_id_base: int) -> ConvertedImage:
    """One TSV row (column name → bytes) → ConvertedImage."""
    image_id = fields["image_id"].decode("utf-8")
    num_boxes = _number(fields["num_boxes"], "num_boxes", where)
    if num_boxes != int(num_boxes) or num_boxes < 0:
        raise ConversionError(f"{where} (image {image_id!r}): num_boxes is {num_boxes:g}, not a count")
    num_boxes = int(num_boxes)
    width, height = _number(fields["image_w"], "image_w", where), _number(fields["image_h"], "image_h", where)
    arrays = {}
    for column in ARRAY_COLUMNS:
        text = fields.get(column)
        if column in ("boxes", "features") or text:
            raw = decode_base64(text, lambda column=column: f"{where} (image {image_id!r}) column {column}")
            dtype: type[np.number] = np.float32
            if column in ("objects_id", "attrs_id"):  # one id per box: 8 bytes each is int64, else int32
                dtype = np.int64 if len(raw) == 8 * num_boxes else np.int32
            columns = {"boxes": 4, "objects_id": 1, "objects_conf": 1}.get(column)
            arrays[column] = array_from_bytes(raw, dtype, num_boxes, lambda column=column: f"{where} (image "
                                              f"{image_id!r}) column {column}, num_boxes {num_boxes}", columns)
    features = arrays["features"]
    if num_boxes and features.shape[1] != feature_size:
        raise ConversionError(f"{where} (image {image_id!r}): {features.shape[1]} values per region, the store "
                              f"holds {feature_size}; pass --feature-size if the whole input really has that size")
    record = detections_to_record(image_id, width, height, objects_id_base=objects_id_base, **arrays)
    return ConvertedImage(where, record)


def parse_line(names: list, feature_size: int, objects_id_base: int, place: tuple) -> ConvertedImage:
    """One line (``(SourceLine, bytes)``) of a TSV file → ConvertedImage."""
    where, line = place
    row = line.split(b"\t")
    if len(row) != len(names):
        raise ConversionError(f"{where}: {len(row)} columns, expected {len(names)} ({', '.join(names)}); "
                              "the line is truncated or the file mixes layouts")
    return parse_row(dict(zip(names, row)), where, feature_size, objects_id_base)


def parse_block(names: list, feature_size: int, objects_id_base: int, block) -> list:
    """Every row of one unit (a FileRange or LineBlock; runs in a worker); a row that cannot be
    read is its ConversionError in the list."""
    lines = [(where, line.rstrip(b"\r")) for where, line in block.lines() if line.rstrip(b"\r")]
    return each_record(partial(parse_line, names, feature_size, objects_id_base), lines)


def convert_tsv(paths: Iterable, options: ConversionOptions, columns: str | None = None) -> ConversionResult:
    """Bottom-up-attention / LXMERT TSV inputs (files, pipes, ``-``, gzip / bzip2 / zip) → the
    store ``options.out``."""
    ensure_new_output(options)
    paths = [str(p) for p in paths]
    if paths.count("-") > 1:
        raise ConversionError("- (stdin) is given more than once; it can be read only once")
    for path in paths:
        check_input(path)
    plain = {path: plain_file_units(path, columns) for path in paths if is_plain_file(path)}

    def units():
        for path in paths:
            if path in plain:
                names, ranges = plain[path]
                yield from ((names, unit) for unit in ranges)
            else:
                yield from stream_units(path, columns)

    return run_conversion(units(), _ParseTsv(options.feature_size, options.objects_id_base), options,
                          "interbert data convert-tsv " + " ".join(map(input_name, paths)),
                          total=None, desc="convert-tsv", unit_name="chunk")


@dataclass(frozen=True)
class _ParseTsv:
    """The picklable parse function of convert-tsv: a unit is ``(column names, FileRange or LineBlock)``."""

    feature_size: int
    objects_id_base: int

    def __call__(self, unit) -> list:
        names, block = unit
        return parse_block(names, self.feature_size, self.objects_id_base, block)

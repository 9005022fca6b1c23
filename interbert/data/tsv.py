"""Bottom-up-attention TSV files → feature store (``interbert data convert-tsv``).

Tab-separated, no quoting, one image per row, arrays as base64 of raw little-endian bytes. The
layout comes from, in order: ``--columns`` (names or a preset of ``TSV_LAYOUTS``); a header row
(first field ``image_id``/``img_id``); else the first row's column count together with which
columns parse as numbers, so LXMERT's 10 columns (``img_id, img_h, img_w, objects_id, ...,
num_boxes, boxes, features``) are told apart from bottom-up-attention's 10. A row that matches
no known layout stops the conversion with the layouts listed. Array dtypes: float32; ids int64
when 8 bytes per box, else int32.

Work is split into byte ranges of whole lines that each worker reads itself; a record's place is
reported as ``file:line`` (the line is counted only when a message needs it).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from interbert.data.conversion import (ConversionOptions, ConversionResult, ConvertedImage, each_record,
                                      ensure_new_output, run_conversion)
from interbert.data.detections import ConversionError, array_from_bytes, decode_base64, detections_to_record

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


def tsv_columns(path: str, columns: Optional[str]) -> tuple:
    """``(column names, byte offset of the first data row)`` of the TSV file at ``path``."""
    with open(path, "rb") as handle:
        first = handle.readline()
    row = first.rstrip(b"\r\n").split(b"\t")
    if columns:
        names = TSV_LAYOUTS.get(columns) or [c.strip() for c in columns.split(",")]
        start = 0
    elif row and row[0] in (b"image_id", b"img_id"):
        names, start = [c.decode("utf-8", "replace") for c in row], len(first)
    elif not first.strip():
        raise ConversionError(f"{path}:1: the file is empty or starts with an empty line; give a TSV of "
                              "detector output")
    else:
        names, start = layout_from_row(row, f"{path}:1"), 0
    names = [ALIASES.get(n, n) for n in names]
    missing = [c for c in BASE if c not in names]
    if missing:
        raise ConversionError(f"{path}: columns {missing} are missing from {names}; name them with --columns")
    return names, start


def byte_ranges(path: str, start: int, chunk: int = CHUNK_BYTES) -> Iterable[tuple]:
    """``(path, begin, end)`` ranges of whole lines covering ``path`` from ``start``."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        begin = start
        while begin < size:
            handle.seek(min(begin + chunk, size))
            handle.readline()
            end = min(handle.tell(), size)
            yield path, begin, end
            begin = end


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
            raw = decode_base64(text, lambda: f"{where} (image {image_id!r}) column {column}")
            dtype = np.float32
            if column in ("objects_id", "attrs_id"):  # one id per box: 8 bytes each is int64, else int32
                dtype = np.int64 if len(raw) == 8 * num_boxes else np.int32
            columns = {"boxes": 4, "objects_id": 1, "objects_conf": 1}.get(column)
            arrays[column] = array_from_bytes(raw, dtype, num_boxes, lambda: f"{where} (image {image_id!r}) "
                                              f"column {column}, num_boxes {num_boxes}", columns)
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


def parse_range(names: list, feature_size: int, objects_id_base: int, unit: tuple) -> list:
    """Every row in one byte range of a TSV file (runs in a worker); a row that cannot be read is
    its ConversionError in the list."""
    path, begin, end = unit
    with open(path, "rb") as handle:
        handle.seek(begin)
        block = handle.read(end - begin)
    lines, offset = [], begin
    for line in block.split(b"\n"):
        where = SourceLine(path, offset)
        offset += len(line) + 1
        line = line.rstrip(b"\r")
        if line:
            lines.append((where, line))
    return each_record(partial(parse_line, names, feature_size, objects_id_base), lines)


def convert_tsv(paths: Iterable, options: ConversionOptions, columns: Optional[str] = None) -> ConversionResult:
    """Bottom-up-attention / LXMERT TSV files → the store ``options.out``."""
    ensure_new_output(options)
    paths = [str(p) for p in paths]
    for path in paths:
        if not Path(path).is_file():
            raise ConversionError(f"{path}: no such file")
    layouts = [(path, *tsv_columns(path, columns)) for path in paths]

    def units():
        for path, names, start in layouts:
            for unit in byte_ranges(path, start):
                yield names, unit

    return run_conversion(units(), _ParseTsv(options.feature_size, options.objects_id_base), options,
                          "interbert data convert-tsv " + " ".join(paths),
                          total=None, desc="convert-tsv", unit_name="chunk")


@dataclass(frozen=True)
class _ParseTsv:
    """The picklable parse function of convert-tsv: a unit is ``(column names, byte range)``."""

    feature_size: int
    objects_id_base: int

    def __call__(self, unit) -> list:
        names, byte_range = unit
        return parse_range(names, self.feature_size, self.objects_id_base, byte_range)

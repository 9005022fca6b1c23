"""Where convert-vinvl's rows come from.

Plain files (``input_streams.is_plain_file``) are read by offset: a feature TSV's rows from its
``NAME.lineidx`` (``os.path.splitext(tsv)[0]``, as microsoft/Oscar ``oscar/utils/tsv_file.py`` and
microsoft/scene_graph_benchmark's ``tsv_writer`` name it: one byte offset per row, as text; checked
against the TSV) or by scanning it, the predictions rows by scanning; units carry offsets and each
worker reads its rows. Any other input is read in order by the main process (``rows_in_order``),
whose units carry the lines themselves; a predictions input that is not a plain file is copied,
decompressed, to an unnamed temporary file to be looked up by image id (``prediction_rows``).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.formats.tsv import NumberedLine
from interbert.data.text.input_streams import input_parts, is_plain_file

ROWS_PER_UNIT = 16
TSV_MEMBERS = ("*.tsv",)  # the zip members read


def lineidx_path(tsv: str) -> str:
    """Where Oscar's TSVFile looks for the line index of ``tsv``."""
    return os.path.splitext(tsv)[0] + ".lineidx"


def scanned_rows(path: str):
    """``(byte offset, line)`` of every line of ``path``, read in order."""
    position = 0
    with open(path, "rb") as handle:
        for line in handle:
            yield position, line
            position += len(line)


def row_offsets(tsv: str) -> list:
    """The byte offset of every row of ``tsv``: from its ``.lineidx`` (checked against the TSV's
    size), else by scanning the TSV."""
    size = os.path.getsize(tsv)
    index = lineidx_path(tsv)
    if not os.path.isfile(index):
        return [offset for offset, _ in scanned_rows(tsv)]
    offsets = []
    with open(index, encoding="ascii", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            try:
                offset = int(line)
            except ValueError:
                raise ConversionError(f"{index}:{number}: {line.strip()!r} is not a byte offset") from None
            if not 0 <= offset < size:
                raise ConversionError(f"{index}:{number}: offset {offset} points past the end of {tsv} ({size} "
                                      "bytes); the .lineidx belongs to another version of the TSV: regenerate it, "
                                      "or delete it to have the TSV scanned")
            offsets.append(offset)
    return offsets


def first_columns(tsv: str, offsets: list) -> list:
    """The image id (first column) of the row at each offset; an offset that is not at the start
    of a row is an error naming the TSV and its ``.lineidx``."""
    ids = []
    with open(tsv, "rb") as handle:
        for number, offset in enumerate(offsets, 1):
            handle.seek(max(offset - 1, 0))
            if offset and handle.read(1) != b"\n":
                raise ConversionError(f"{lineidx_path(tsv)}:{number}: offset {offset} is not the start of a row of "
                                      f"{tsv}; regenerate the .lineidx, or delete it to have the TSV scanned")
            ids.append(row_image_id(handle.readline()))
    return ids


def read_line(path: str, offset: int) -> bytes:
    """The row of the plain file ``path`` at byte ``offset``, without its line end."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.readline().rstrip(b"\r\n")


def row_image_id(line: bytes) -> str:
    """The image id (first column) of a row."""
    return line.split(b"\t", 1)[0].strip().decode("utf-8", "replace")


def prediction_offsets(path: str) -> dict:
    """Image id → byte offset of its row in a predictions TSV."""
    offsets: dict[str, int] = {}
    for offset, line in scanned_rows(path):
        offsets.setdefault(row_image_id(line), offset)
    return offsets


class PredictionRows:
    """Image id → its row of a predictions input read in order, kept in ``file``."""

    def __init__(self, file, parts):
        """Index ``parts`` (``(name, binary stream)``); the lines of a part that is not ``file``
        itself are copied into ``file`` as they are indexed."""
        self._file = file
        self._rows: dict = {}  # image id -> (offset in file, NumberedLine)
        offset = 0
        for name, stream in parts:
            for number, line in enumerate(stream, 1):
                if stream is not file:
                    file.write(line)
                self._rows.setdefault(row_image_id(line), (offset, NumberedLine(name, number)))
                offset += len(line)

    def row(self, image_id: str) -> tuple:
        """``(place, line)`` of the image's row, ``(None, None)`` when it has none."""
        found = self._rows.get(image_id)
        if found is None:
            return None, None
        self._file.seek(found[0])
        return found[1], self._file.readline().rstrip(b"\r\n")


@contextmanager
def prediction_rows(path: str) -> Iterator[PredictionRows]:
    """The PredictionRows of the predictions input ``path``: a plain file is indexed where it lies,
    anything else copied (decompressed) into an unnamed temporary file as it is indexed."""
    if is_plain_file(path):
        with open(path, "rb") as handle:
            yield PredictionRows(handle, [(path, handle)])
        return
    with tempfile.TemporaryFile() as copy:
        yield PredictionRows(copy, ((part.name, part.stream) for part in input_parts(path, TSV_MEMBERS)))


def rows_in_order(features: str, predictions: PredictionRows | None):
    """Units of ``(place, feature line, predictions place, predictions line)`` rows of a features
    input read in order."""
    unit: list = []
    for part in input_parts(features, TSV_MEMBERS):
        for number, line in enumerate(part.stream, 1):
            line = line.rstrip(b"\r\n")
            found = predictions.row(row_image_id(line)) if predictions else (None, None)
            unit.append((NumberedLine(part.name, number), line, *found))
            if len(unit) == ROWS_PER_UNIT:
                yield tuple(unit)
                unit = []
    if unit:
        yield tuple(unit)


def units_by_offset(features: str, predictions: str | None) -> list:
    """Units of ``(feature row offset, predictions row offset)`` of plain files."""
    offsets = row_offsets(features)
    ids = first_columns(features, offsets)
    by_id = prediction_offsets(predictions) if predictions else {}
    rows = [(offset, by_id.get(image_id)) for offset, image_id in zip(offsets, ids)]
    return [tuple(rows[i:i + ROWS_PER_UNIT]) for i in range(0, len(rows), ROWS_PER_UNIT)]

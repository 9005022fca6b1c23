"""The conversion pipeline every converter shares: N parsing processes, one LMDB writer.

A converter supplies *units* (small, picklable descriptions of work: a byte range of a file, a
file path, a batch of keys of a source LMDB) and a *parse* function (module level, or a
``functools.partial`` of one) that reads one unit itself and returns its images as
``ConvertedImage`` objects, a ``ConversionError`` (naming the file and record) in the place of a
record it could not read (``each_record`` does this), or raises ``ConversionError`` when the
whole unit is unreadable. With
``workers`` > 1, units are parsed, checked (``record_problems``) and encoded in worker processes,
in order, with at most a few units in flight per worker (memory stays bounded whatever the
corpus size); the main process only writes. With one worker everything runs in-process.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from tqdm import tqdm

from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.ordered_workers import results_in_order
from interbert.data.store.errors import FeatureStoreError
from interbert.data.store.metadata import DEFAULT_FEATURE_SIZE, DEFAULT_NUM_CLASSES, StoreMetadata
from interbert.data.store.record_checks import record_problems
from interbert.data.store.record_format import RegionRecord, encode_record
from interbert.data.store.writer import FeatureStoreWriter, stale_temporaries

UNITS_IN_FLIGHT_PER_WORKER = 3


@dataclass
class ConversionOptions:
    """What every converter takes from its command line (``commands.store_flags``)."""

    out: str
    feature_size: int = DEFAULT_FEATURE_SIZE
    num_classes: int = DEFAULT_NUM_CLASSES
    strict: bool = False
    overwrite: bool = False
    workers: int = 1
    shards: int = 1
    skip_unreadable: bool = False
    objects_id_base: int = 0
    box_tolerance: float = 1.0


@dataclass
class ConvertedImage:
    """One parsed image: ``where`` names it (``file:line``, ``lmdb:key``), ``captions`` are
    texts that came with it (written to a manifest by converters that have them)."""

    where: str
    record: RegionRecord
    captions: tuple = ()


@dataclass
class ConversionResult:
    """The written store's metadata, what was skipped (with the first places), and captions."""

    metadata: StoreMetadata
    skipped: Counter
    skip_examples: dict
    captions: list = field(default_factory=list)  # (image_id, caption) in input order


def ensure_new_output(options: ConversionOptions) -> None:
    """Stop before any input is read when ``options.out`` exists and may not be replaced."""
    if os.path.lexists(options.out) and not options.overwrite:
        raise ConversionError(f"{options.out} already exists; choose another --out or pass --overwrite to "
                              "replace it")


def _check_and_encode(image: ConvertedImage, metadata: StoreMetadata, box_tolerance: float) -> tuple:
    record = image.record
    problems = record_problems(record, metadata, box_tolerance)
    data = None if problems else encode_record(record)
    return (image.where, record.image_id, data, record.num_regions, record.class_probs is not None, problems,
            tuple(image.captions))


def each_record(convert: Callable, items: Iterable) -> list:
    """``convert(item)`` for every item of a unit, a record that fails to convert replaced by its
    ``ConversionError`` (so one bad record costs only itself when the user asked for skips)."""
    converted = []
    for item in items:
        try:
            converted.append(convert(item))
        except ConversionError as error:
            converted.append(error)
    return converted


def process_unit(parse: Callable, metadata: StoreMetadata, box_tolerance: float, unit) -> list:
    """Parse one unit and encode its images; runs in a worker. An unreadable record (or unit)
    becomes an ``("unreadable", message)`` entry so the main process decides: skip or stop."""
    try:
        images = parse(unit)
    except ConversionError as error:
        return [("unreadable", str(error))]
    return [("unreadable", str(image)) if isinstance(image, ConversionError)
            else _check_and_encode(image, metadata, box_tolerance) for image in images]


def _results_in_order(worker: Callable, units: Iterable, workers: int):
    if workers <= 1:
        return (worker(unit) for unit in units)
    return results_in_order(worker, units, workers, UNITS_IN_FLIGHT_PER_WORKER)


def run_conversion(units: Iterable, parse: Callable, options: ConversionOptions, created_by: str,
                   total: int | None = None, desc: str = "convert", unit_name: str = "unit") -> ConversionResult:
    """Parse ``units`` with ``parse`` in ``options.workers`` processes and write the store ``options.out``.

    ``total``: the number of units, for the progress bar. Raises ConversionError for the first
    unreadable unit (unless ``skip_unreadable``: counted) and for fatal record problems.
    """
    if options.workers < 1:
        raise ConversionError(f"--workers is {options.workers}; give 1 or more")
    for stale in stale_temporaries(options.out):
        print(f"note: {stale} is left from an earlier run of this conversion that was killed (its process is "
              "gone); it is not used: remove it (rm -r) unless you want to look at it", file=sys.stderr)
    captions: list = []
    try:
        with FeatureStoreWriter(options.out, feature_size=options.feature_size, num_classes=options.num_classes,
                                created_by=created_by, strict=options.strict, overwrite=options.overwrite,
                                box_tolerance=options.box_tolerance, shards=options.shards) as writer:
            worker = partial(process_unit, parse, writer.metadata, options.box_tolerance)
            # closed on the way out, whatever ends the loop: the workers stop before the store is removed
            with closing(_results_in_order(worker, units, options.workers)) as results:
                for entries in tqdm(results, total=total, desc=desc, unit=unit_name, mininterval=1.0):
                    for entry in entries:
                        if entry[0] == "unreadable":
                            if not options.skip_unreadable:
                                raise ConversionError(f"{entry[1]} (--skip-unreadable counts such records and "
                                                      "goes on)")
                            writer.skip("unreadable record", entry[1])
                            continue
                        where, image_id, data, num_regions, has_class_probs, problems, texts = entry
                        if writer.add_encoded(image_id, data, num_regions, has_class_probs, problems, where):
                            captions.extend((image_id, text) for text in texts)
    except FeatureStoreError as error:
        raise ConversionError(str(error)) from None
    return ConversionResult(writer.metadata, writer.skipped, writer.skip_examples, captions)

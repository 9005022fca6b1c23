"""``interbert data migrate``: a schema-1 store → a new schema-2 store (checksums, one label convention).

Schema 1 stored ``objects_id`` as the extractor wrote it (0-based without the background) but
labels derived from ``cls_prob`` in the background-at-0 space, and did not record which. The
migration decides per store (``--labels``):

- ``auto``: a store written by ``interbert data synth`` is already in the new convention; a store
  with class distributions is judged by whether its labels are ``argmax(cls_prob[:, 1:]) + 1``
  (kept) or ``argmax(cls_prob[:, 1:])`` (shifted); otherwise it cannot be told and the command
  stops, asking for ``--labels``;
- ``shift``: every label ≥ 0 becomes label + 1 (stores built from ``objects_id``);
- ``keep``: labels are kept.

Confidences that were derived from the class distribution at the old label are derived again at
the new one. The source store is only read; the new store is written beside it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from interbert.data.ingest.conversion import ConversionOptions, ConvertedImage, ensure_new_output, run_conversion
from interbert.data.ingest.detections import ConversionError
from interbert.data.store.environment_cache import shared_environment
from interbert.data.store.layout import read_shard_metadata
from interbert.data.store.metadata import METADATA_KEY, StoreMetadata
from interbert.data.store.record_checks import label_disagreements
from interbert.data.store.record_format import FORMAT_VERSION, RecordFormatError, RegionRecord, decode_record

KEYS_PER_UNIT = 64
SAMPLE_RECORDS = 200  # records read to judge the label convention of a store with class distributions


def _judge_labels(path: str, metadata: StoreMetadata) -> str:
    """``"keep"`` or ``"shift"`` for a schema-1 store, or ConversionError when it cannot be told."""
    if metadata.created_by.startswith("interbert data synth"):
        return "keep"
    if not metadata.has_class_probs:
        raise ConversionError(f"{path}: cannot tell whether the labels of this schema-1 store are 0-based "
                              f"objects_id (written by: {metadata.created_by or 'unknown'}); pass --labels shift "
                              "if it was converted from TSV/npz files carrying objects_id (bottom-up-attention, "
                              "LXMERT, MILVLG), --labels keep if its labels came from cls_prob")
    votes = {"keep": 0, "shift": 0}
    with shared_environment(path).begin(buffers=False) as txn:
        for count, (key, value) in enumerate(txn.cursor()):
            if count >= SAMPLE_RECORDS:
                break
            if key == METADATA_KEY:
                continue
            record = decode_record(value, legacy=True)
            if record.labels is None or record.class_probs is None:
                continue
            shifted = np.where(record.labels >= 0, record.labels + 1, record.labels)
            votes["keep"] += label_disagreements(record.labels, record.class_probs) == 0
            votes["shift"] += label_disagreements(shifted, record.class_probs) == 0
    if votes["keep"] == votes["shift"]:
        raise ConversionError(f"{path}: the labels agree with the class distributions neither as they are nor "
                              "shifted by one; pass --labels keep or --labels shift")
    return max(votes, key=lambda choice: votes[choice])


def migrate_record(record: RegionRecord, shift: bool) -> RegionRecord:
    """A schema-1 record in the background-at-0 label convention."""
    if not shift or record.labels is None:
        return record
    old = record.labels.astype(np.int64)
    labels = np.where(old >= 0, old + 1, old)
    confidences = record.confidences
    probs = record.class_probs
    if probs is not None and confidences is not None and (old >= 0).all() and (labels < probs.shape[1]).all():
        rows = np.arange(len(old))
        derived = np.allclose(confidences, probs[rows, old].astype(np.float32), rtol=1e-3, atol=1e-4)
        if derived:
            confidences = probs[rows, labels].astype(np.float32)
    return RegionRecord(record.image_id, record.width, record.height, record.features, record.boxes, labels,
                        confidences, probs, dict(record.extras))


@dataclass(frozen=True)
class _ParseLegacy:
    """The picklable parse function of migrate: a unit is a list of keys of the source store."""

    path: str
    shift: bool

    def __call__(self, keys) -> list:
        images = []
        with shared_environment(self.path).begin(buffers=False) as txn:
            for key in keys:
                where = f"{self.path} (record {key.decode('utf-8', 'replace')!r})"
                try:
                    record = decode_record(txn.get(key), legacy=True)
                except RecordFormatError as error:
                    raise ConversionError(f"{where}: {error}") from None
                images.append(ConvertedImage(where, migrate_record(record, self.shift)))
        return images


def _key_batches(path: str):
    with shared_environment(path).begin(buffers=False) as txn:
        batch = []
        for key in txn.cursor().iternext(keys=True, values=False):
            if key != METADATA_KEY:
                batch.append(bytes(key))
            if len(batch) == KEYS_PER_UNIT:
                yield batch
                batch = []
        if batch:
            yield batch


def migrate_store(source: str | os.PathLike, options: ConversionOptions, labels: str = "auto") -> tuple:
    """Write ``options.out`` from the schema-1 store ``source``; returns ``(result, label decision)``."""
    source = str(source)
    ensure_new_output(options)
    metadata = read_shard_metadata(source, legacy=True)
    if metadata.schema_version >= FORMAT_VERSION:
        raise ConversionError(f"{source}: schema version {metadata.schema_version} is current; nothing to migrate")
    decision = _judge_labels(source, metadata) if labels == "auto" else labels
    options = ConversionOptions(**{**options.__dict__, "feature_size": metadata.feature_size,
                                   "num_classes": metadata.num_classes})
    result = run_conversion(_key_batches(source), _ParseLegacy(source, decision == "shift"), options,
                            f"interbert data migrate (labels {decision}) of {source}; first written by "
                            f"{metadata.created_by or 'unknown'}", total=-(-metadata.record_count // KEYS_PER_UNIT),
                            desc="migrate", unit_name="batch")
    return result, decision

"""The region-feature store: LMDB environments (directories), one record per image.

A single store is one LMDB environment: keys are image ids (utf-8), values are records in the
layout of ``record_format``, and one reserved key, ``__interbert_metadata__``, holds a JSON object
(``StoreMetadata``). A sharded store is a directory with ``store.json`` (the same metadata plus
``groups``: lists of shard directories, each a single store) for terabyte corpora; an image lives
in shard ``xxh3_64(id) % len(group)`` of its group, and stores made on different machines are
merged by listing their groups (``interbert data merge``). Readers treat both alike.

Writers (``store_writer``) build under ``<path>.tmp-<pid>`` and rename on success, so an
interrupted run leaves nothing under the final name. Readers open lazily, read-only, without
locks or readahead, and reopen after a fork, so one ``FeatureStore`` object can be handed to
forked data-loader workers.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import lmdb
import numpy as np

import xxhash

from interbert.data.record_format import (CHECKSUM, FORMAT_VERSION, LEGACY_VERSION, RecordFormatError,
                                          RegionRecord, decode_record)
from interbert.errors import UserError

METADATA_KEY = b"__interbert_metadata__"
SHARDED_METADATA_FILE = "store.json"
DEFAULT_FEATURE_SIZE = 2048
DEFAULT_NUM_CLASSES = 1601
STORE_FORMAT = "interbert-feature-store"
# Labels index the detector's class space with the background at 0 (1601 classes for the Visual
# Genome detector); -1 means the detector gave no class. Extractors' 0-based ``objects_id``
# (argmax over the classes without the background) is stored as ``objects_id + 1``.
LABEL_CONVENTION = "detector-classes-background-0"


def shard_of(image_id: str, shards: int) -> int:
    """The shard (0..shards-1) an image id lives in within a group of ``shards`` shards."""
    return xxhash.xxh3_64_intdigest(image_id.encode("utf-8")) % shards if shards > 1 else 0


class FeatureStoreError(UserError):
    """A feature store is missing, unreadable or holds a bad record; the message says where."""


class MissingImageError(FeatureStoreError, KeyError):
    """An image id has no record in the store."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class CorruptRecordError(FeatureStoreError):
    """A record's bytes cannot be decoded, fail their checksum, or disagree with the metadata."""


class LegacyStoreError(FeatureStoreError):
    """The store predates the current schema; the message says how to migrate or rebuild it."""


@dataclass
class StoreMetadata:
    """The store-wide facts every record must agree with."""

    feature_size: int = DEFAULT_FEATURE_SIZE
    num_classes: int = DEFAULT_NUM_CLASSES
    record_count: int = 0
    region_count: int = 0
    has_class_probs: bool = False
    created_by: str = ""
    created_at: str = ""
    schema_version: int = FORMAT_VERSION
    format: str = STORE_FORMAT
    label_convention: str = LABEL_CONVENTION
    checksum: str = CHECKSUM

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    def consistency_key(self) -> tuple:
        """What every shard of one store must share."""
        return (self.feature_size, self.num_classes, self.schema_version, self.label_convention)

    @classmethod
    def from_bytes(cls, data: bytes, path: str, legacy: bool = False) -> "StoreMetadata":
        """Parse and check a metadata record; ``legacy=True`` accepts schema version 1 (migration)."""
        try:
            fields = json.loads(data)
            known = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__}
            if fields.get("schema_version", LEGACY_VERSION) < FORMAT_VERSION:
                known.setdefault("label_convention", "unknown")
                known.setdefault("checksum", "none")
            metadata = cls(**known)
        except (ValueError, TypeError) as error:
            raise FeatureStoreError(f"feature store {path}: the metadata record is unreadable ({error}); "
                                    "rebuild the store") from None
        if metadata.format != STORE_FORMAT:
            raise FeatureStoreError(f"feature store {path}: metadata format is {metadata.format!r}, "
                                    f"not {STORE_FORMAT!r}")
        if metadata.schema_version > FORMAT_VERSION:
            raise FeatureStoreError(f"feature store {path}: schema version {metadata.schema_version} is "
                                    f"newer than this interbert ({FORMAT_VERSION}); upgrade interbert")
        if metadata.schema_version < FORMAT_VERSION and not legacy:
            raise LegacyStoreError(
                f"feature store {path}: schema version {metadata.schema_version} was written before records "
                "carried checksums and before labels followed one convention (extractors' 0-based objects_id "
                "may be stored unshifted); migrate it with `interbert data migrate --out NEW_STORE "
                f"{path}` or rebuild it with the command that wrote it ({metadata.created_by or 'unknown'})")
        return metadata


def record_problems(record: RegionRecord, metadata: StoreMetadata, box_tolerance: float = 1.0) -> list:
    """What is wrong with ``record`` under ``metadata``: a list of ``(problem, detail)`` pairs.

    The same checks guard the writers (a record with problems is not written) and ``verify``.
    """
    problems = []
    n = record.num_regions
    if not (np.isfinite(record.width) and np.isfinite(record.height)) or record.width <= 0 or record.height <= 0:
        problems.append(("bad image size", f"width {record.width}, height {record.height}"))
    if n == 0:
        problems.append(("no regions", "the detector output has zero boxes"))
        return problems
    if record.features.shape[1] != metadata.feature_size:
        problems.append(("wrong feature size", f"{record.features.shape[1]} values per region, "
                                               f"the store holds {metadata.feature_size}"))
    for name, array in record.arrays().items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            problems.append((f"non-finite {name}", f"{int((~np.isfinite(array)).sum())} NaN/Inf values"))
    boxes = record.boxes.astype(np.float64)
    if np.isfinite(boxes).all():
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            problems.append(("zero-area box", f"{int(degenerate.sum())} boxes with x2<=x1 or y2<=y1"))
        outside = ((boxes[:, :2] < -box_tolerance).any(1) | (boxes[:, 2] > record.width + box_tolerance)
                   | (boxes[:, 3] > record.height + box_tolerance))
        if outside.any():
            problems.append(("box outside image", f"{int(outside.sum())} boxes beyond the "
                                                  f"{record.width:g}x{record.height:g} image"))
    if record.class_probs is not None and record.class_probs.shape[1] != metadata.num_classes:
        problems.append(("wrong class count", f"class distribution over {record.class_probs.shape[1]} "
                                              f"classes, the store holds {metadata.num_classes}"))
    if record.labels is not None and ((record.labels < -1) | (record.labels >= metadata.num_classes)).any():
        problems.append(("label out of range", f"labels outside -1..{metadata.num_classes - 1}"))
    elif record.labels is not None and record.class_probs is not None and record.class_probs.shape[1] > 1:
        disagree = label_disagreements(record.labels, record.class_probs)
        if disagree:
            problems.append(("labels disagree with class distribution",
                             f"{disagree} of {n} labels are not the most likely non-background class"))
    return problems


def label_disagreements(labels: np.ndarray, class_probs: np.ndarray) -> int:
    """How many labels (background at 0, -1 = none) are not an argmax of ``class_probs[:, 1:]``.

    Exact in float16: rounding keeps order, so a true argmax stays one after the cast.
    """
    given = labels >= 0
    if not given.any():
        return 0
    rows = np.flatnonzero(given)
    best = class_probs[rows, 1:].max(axis=1)
    chosen = class_probs[rows, labels[rows]]
    return int(((chosen < best) | (labels[rows] == 0)).sum())


# py-lmdb allows one open handle per path and process, so every FeatureStore of one path in one
# process shares it: realpath -> (pid that opened it, environment).
_ENVIRONMENTS: dict = {}


def forget_environment(path) -> None:
    """Close this process's handle on ``path`` (the store there is being replaced)."""
    entry = _ENVIRONMENTS.pop(os.path.realpath(path), None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


def shared_environment(path: str) -> lmdb.Environment:
    """This process's read-only handle on the single store at ``path``."""
    key, pid = os.path.realpath(path), os.getpid()
    entry = _ENVIRONMENTS.get(key)
    if entry is not None and entry[0] == pid:
        return entry[1]
    if entry is not None:
        # Inherited through fork: a handle must not be used across fork. Without a lock file,
        # closing it here only unmaps the child's copy; the parent's handle is untouched.
        entry[1].close()
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, max_readers=2048)
    except lmdb.Error as error:
        raise FeatureStoreError(f"feature store {path}: cannot open ({error})") from None
    _ENVIRONMENTS[key] = (pid, env)
    return env


def damaged_store_error(path: str, error: Exception) -> FeatureStoreError:
    """The error for an LMDB environment whose pages are damaged (lmdb.CorruptedError and kin)."""
    return FeatureStoreError(f"feature store {path}: damaged LMDB file ({type(error).__name__}: {error}); "
                             "rebuild the store (or this shard) from its source; `interbert data verify` "
                             "lists what is still readable")


def read_shard_metadata(path: str, legacy: bool = False) -> StoreMetadata:
    """The metadata record of the single store (or shard) at ``path``."""
    if not Path(path, "data.mdb").is_file():
        raise FeatureStoreError(f"feature store {path}: no LMDB environment there (expected "
                                f"{Path(path, 'data.mdb')}); build one with `interbert data convert-tsv`, "
                                "`convert-npz`, `convert-lmdb`, `convert-vinvl` or `synth`")
    try:
        with shared_environment(path).begin(buffers=False) as txn:
            data = txn.get(METADATA_KEY)
    except lmdb.Error as error:
        raise damaged_store_error(path, error) from None
    if data is None:
        raise FeatureStoreError(f"feature store {path}: no metadata record ({METADATA_KEY.decode()}); it was "
                                "not written by interbert or its writer was interrupted: rebuild it")
    return StoreMetadata.from_bytes(data, path, legacy=legacy)


def read_sharded_layout(path: str) -> tuple:
    """``(metadata, groups)`` of the sharded store at ``path``: groups are lists of shard paths."""
    file = Path(path, SHARDED_METADATA_FILE)
    try:
        fields = json.loads(file.read_text(encoding="utf-8"))
        groups = [[str(Path(path, shard)) for shard in group] for group in fields.pop("groups")]
        if not groups or not all(groups):
            raise ValueError("no shards listed")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise FeatureStoreError(f"feature store {path}: {file} is unreadable ({error}); rebuild the store or "
                                "list its shards again with `interbert data merge`") from None
    return StoreMetadata.from_bytes(json.dumps(fields).encode("utf-8"), str(file)), groups


class FeatureStore:
    """Read-only access to a feature store (single or sharded); lookup by image id, nothing
    loaded into RAM.

    Each LMDB environment is opened on first use in each process and shared by every
    FeatureStore of the same path there (py-lmdb allows one handle per path and process); the
    opening pid is recorded and the environment reopened after a fork. The object itself holds
    no handle, so it pickles and forks freely. ``get`` reads through a ``buffers=False`` transaction:
    LMDB copies the record's bytes once into a Python ``bytes`` object, which stays valid after
    the transaction ends, and the arrays are ``np.frombuffer`` views of it (no further copy).
    Every record's checksum is checked when it is decoded.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if Path(self.path, SHARDED_METADATA_FILE).is_file():
            self._metadata, self.groups = read_sharded_layout(self.path)
        elif Path(self.path, "data.mdb").is_file():
            self._metadata, self.groups = None, [[self.path]]
        else:
            raise FeatureStoreError(f"feature store {self.path}: no LMDB environment there (expected "
                                    f"{Path(self.path, 'data.mdb')} or {Path(self.path, SHARDED_METADATA_FILE)}); "
                                    "build one with `interbert data convert-tsv`, `convert-npz`, `convert-lmdb`, "
                                    "`convert-vinvl` or `synth`")
        if self._metadata is None:
            self._metadata = read_shard_metadata(self.path)

    @property
    def metadata(self) -> StoreMetadata:
        return self._metadata

    @property
    def shard_paths(self) -> list:
        return [shard for group in self.groups for shard in group]

    def _candidates(self, image_id: str) -> list:
        """The shard paths that may hold ``image_id``: one per group."""
        return [group[shard_of(image_id, len(group))] for group in self.groups]

    def __len__(self) -> int:
        return self.metadata.record_count

    def __contains__(self, image_id: str) -> bool:
        return not self.missing([image_id])

    def _lookup_many(self, image_ids, buffers: bool, open_transactions: Optional[list] = None):
        """Yield ``(image_id, bytes or None)`` for ``image_ids``, one transaction per shard touched.
        With ``open_transactions`` the transactions are left open there for the caller to end
        (``buffers=True`` values are valid only until then)."""
        pending = list(image_ids)
        for level in range(len(self.groups)):
            by_shard: dict = {}
            for image_id in pending:
                by_shard.setdefault(self._candidates(image_id)[level], []).append(image_id)
            pending = []
            for shard, ids in by_shard.items():
                try:
                    txn = shared_environment(shard).begin(buffers=buffers)
                    try:
                        found = [(image_id, txn.get(image_id.encode("utf-8"))) for image_id in ids]
                    finally:
                        if open_transactions is None:
                            txn.abort()  # a read transaction: nothing to commit
                        else:
                            open_transactions.append(txn)
                except lmdb.Error as error:
                    raise damaged_store_error(shard, error) from None
                for image_id, data in found:
                    if data is not None:
                        yield image_id, data
                    elif level + 1 < len(self.groups):
                        pending.append(image_id)
                    else:
                        yield image_id, None

    def missing(self, image_ids) -> list:
        """The ids among ``image_ids`` that have no record (one transaction per shard, no copy)."""
        found = {image_id for image_id, data in self._lookup_many(image_ids, True) if data is not None}
        return [image_id for image_id in image_ids if image_id not in found]

    def _missing_error(self, image_id: str) -> MissingImageError:
        return MissingImageError(f"feature store {self.path}: no record for image id {image_id!r}; check that "
                                 "the caption manifest and the store use the same ids (`interbert data verify "
                                 "--features STORE --captions FILE`)")

    def get_bytes(self, image_id: str) -> bytes:
        for _, data in self._lookup_many([image_id], False):
            if data is not None:
                return data
        raise self._missing_error(image_id)

    def decode(self, image_id: str, data: bytes) -> RegionRecord:
        """Decode a record's bytes, checking its checksum, layout and feature size."""
        try:
            record = decode_record(data)
        except RecordFormatError as error:
            raise CorruptRecordError(f"feature store {self.path}: record {image_id!r} is corrupt: {error}; "
                                     "run `interbert data verify` to list every bad record, then rebuild the store "
                                     "(training can skip such records with --skip-corrupt)") from None
        size = self.metadata.feature_size
        if record.features.shape[1] != size:
            raise CorruptRecordError(f"feature store {self.path}: record {image_id!r} has "
                                     f"{record.features.shape[1]} features per region but the store's "
                                     f"metadata says {size}; rebuild the store from consistent detector output")
        return record

    def get(self, image_id: str) -> RegionRecord:
        """The record of ``image_id`` (arrays are read-only views; see the class docstring)."""
        return self.decode(image_id, self.get_bytes(image_id))

    def _in_order(self, image_ids, found: dict) -> list:
        for image_id in image_ids:
            if found.get(image_id) is None:
                raise self._missing_error(image_id)
        return [found[image_id] for image_id in image_ids]

    def get_many_bytes(self, image_ids) -> list:
        """The records' bytes of ``image_ids``, in order (one transaction per shard touched)."""
        return self._in_order(image_ids, dict(self._lookup_many(image_ids, False)))

    @contextmanager
    def viewing(self, image_ids):
        """``with store.viewing(ids) as views``: the records of ``ids`` in order, as memoryviews
        into LMDB's memory map (no copy), valid only inside the block, whose read transactions
        stay open until it ends. Arrays decoded from them must be copied before it ends."""
        transactions: list = []
        try:
            yield self._in_order(image_ids, dict(self._lookup_many(image_ids, True, transactions)))
        finally:
            for txn in transactions:
                txn.abort()

    def get_many(self, image_ids) -> list:
        """The records of ``image_ids``, in order, read in one transaction per shard touched."""
        return [self.decode(i, data) for i, data in zip(image_ids, self.get_many_bytes(image_ids))]

    def keys(self) -> Iterator[str]:
        """Every image id, shard by shard, in key order within a shard (streams through cursors)."""
        for shard in self.shard_paths:
            with shared_environment(shard).begin(buffers=False) as txn:
                for key in txn.cursor().iternext(keys=True, values=False):
                    if key != METADATA_KEY:
                        yield key.decode("utf-8")

    def items_raw(self, with_shard: bool = False) -> Iterator[tuple]:
        """``(image_id, record bytes)`` for every record (``with_shard``: ``(shard, id, bytes)``)."""
        for shard in self.shard_paths:
            with shared_environment(shard).begin(buffers=False) as txn:
                for key, value in txn.cursor():
                    if key != METADATA_KEY:
                        yield (shard, key.decode("utf-8"), value) if with_shard else (key.decode("utf-8"), value)

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for shard in self.shard_paths for f in Path(shard).iterdir() if f.is_file())

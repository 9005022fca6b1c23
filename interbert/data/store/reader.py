"""Reading a feature store (single or sharded) by image id: ``FeatureStore``."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

from interbert.data.store.environment_cache import shared_environment
from interbert.data.store.errors import CorruptRecordError, FeatureStoreError, MissingImageError, damaged_store_error
from interbert.data.store.layout import read_shard_metadata, read_sharded_layout, shard_of
from interbert.data.store.metadata import METADATA_KEY, SHARDED_METADATA_FILE, StoreMetadata
from interbert.data.store.record_format import RecordFormatError, RegionRecord, decode_record


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

    def _lookup_many(self, image_ids, buffers: bool, open_transactions: list | None = None):
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
                    txn = shared_environment(shard).begin(buffers=buffers)  # type: ignore[call-overload]  # lmdb's stubs take only a literal
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

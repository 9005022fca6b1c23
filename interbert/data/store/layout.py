"""Where a store keeps its records and metadata: a single LMDB environment (the metadata record),
or a sharded directory (``store.json`` listing groups of shards); and which shard holds an image id."""
from __future__ import annotations

import json
from pathlib import Path

import lmdb
import xxhash

from interbert.data.store.environment_cache import shared_environment
from interbert.data.store.errors import FeatureStoreError, damaged_store_error
from interbert.data.store.metadata import METADATA_KEY, SHARDED_METADATA_FILE, StoreMetadata


def shard_of(image_id: str, shards: int) -> int:
    """The shard (0..shards-1) an image id lives in within a group of ``shards`` shards."""
    return xxhash.xxh3_64_intdigest(image_id.encode("utf-8")) % shards if shards > 1 else 0


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

"""``interbert data merge``: one store from several, by listing their shards (nothing is copied).

Stores converted on different machines (``--shards K`` or single) are brought onto one file
system and listed: ``merge --out ALL PART_A PART_B ...`` writes ``ALL/store.json`` whose groups
are the parts' groups, as paths relative to ``ALL`` (so the tree can move as a whole). Every part
must agree on feature size, class count, schema and label convention, and no image id may be in
two parts (checked through 64-bit key hashes, confirmed by lookup).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import xxhash

from interbert.data.ingest.detections import ConversionError
from interbert.data.store.metadata import SHARDED_METADATA_FILE, StoreMetadata
from interbert.data.store.reader import FeatureStore


def _key_hashes(store: FeatureStore) -> np.ndarray:
    return np.fromiter((xxhash.xxh3_64_intdigest(key.encode("utf-8")) for key in store.keys()), dtype=np.uint64)


def _check_disjoint(parts: list) -> None:
    """ConversionError naming an image id that two parts hold."""
    hashes = [_key_hashes(part) for part in parts]
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            common = np.intersect1d(hashes[i], hashes[j])
            if not common.size:
                continue
            wanted = set(common.tolist())
            for key in parts[i].keys():
                if xxhash.xxh3_64_intdigest(key.encode("utf-8")) in wanted and key in parts[j]:
                    raise ConversionError(f"image {key!r} is in both {parts[i].path} and {parts[j].path}; a merged "
                                          "store needs disjoint parts: rebuild one part without those images")


def merge_stores(out: str | os.PathLike, paths: list) -> StoreMetadata:
    """Write the merged store ``out`` listing the stores at ``paths``; returns its metadata."""
    out = Path(out)
    if os.path.lexists(out):
        raise ConversionError(f"{out} already exists; a merged store is written to a new directory")
    if len(paths) < 2:
        raise ConversionError("give at least two stores to merge")
    parts = [FeatureStore(path) for path in paths]
    first = parts[0].metadata
    for part in parts[1:]:
        for name in ("feature_size", "num_classes", "schema_version", "label_convention"):
            if getattr(part.metadata, name) != getattr(first, name):
                raise ConversionError(f"{part.path}: {name} is {getattr(part.metadata, name)!r} but "
                                      f"{parts[0].path} has {getattr(first, name)!r}; only stores of one detector "
                                      "and one schema can be merged")
    _check_disjoint(parts)
    metadata = StoreMetadata(**{**asdict(first), "record_count": sum(p.metadata.record_count for p in parts),
                                "region_count": sum(p.metadata.region_count for p in parts),
                                "has_class_probs": all(p.metadata.has_class_probs for p in parts),
                                "created_by": "interbert data merge " + " ".join(map(str, paths)),
                                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    groups = [[os.path.relpath(shard, out) for shard in group] for part in parts for group in part.groups]
    tmp = Path(f"{out}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    (tmp / SHARDED_METADATA_FILE).write_text(json.dumps({**asdict(metadata), "groups": groups}, indent=1,
                                                        sort_keys=True))
    os.replace(tmp, out)
    return metadata

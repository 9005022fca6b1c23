"""The region-feature store: one LMDB environment (a directory), one record per image.

Keys are image ids (utf-8); values are records in the layout of ``record_format``. One reserved
key, ``__interbert_metadata__``, holds a JSON object (``StoreMetadata``). Writers build the store
under ``<path>.tmp-<pid>`` and rename it on success, so an interrupted run leaves nothing under
the final name. Readers open lazily, read-only, without locks or readahead, and reopen after a
fork, so one ``FeatureStore`` object can be handed to forked data-loader workers.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

import lmdb
import numpy as np

from interbert.data.record_format import (FORMAT_VERSION, RecordFormatError, RegionRecord,
                                          decode_record, encode_record)

METADATA_KEY = b"__interbert_metadata__"
DEFAULT_FEATURE_SIZE = 2048
DEFAULT_NUM_CLASSES = 1601
STORE_FORMAT = "interbert-feature-store"


class FeatureStoreError(Exception):
    """A feature store is missing, unreadable or holds a bad record; the message says where."""


class MissingImageError(FeatureStoreError, KeyError):
    """An image id has no record in the store."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class CorruptRecordError(FeatureStoreError):
    """A record's bytes cannot be decoded, or disagree with the store's metadata."""


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

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, path: str) -> "StoreMetadata":
        try:
            fields = json.loads(data)
            known = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__}
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
    return problems


# py-lmdb allows one open handle per path and process, so every FeatureStore of one path in one
# process shares it: realpath -> (pid that opened it, environment).
_ENVIRONMENTS: dict = {}


def _forget_environment(path) -> None:
    """Close this process's handle on ``path`` (the store there is being replaced)."""
    entry = _ENVIRONMENTS.pop(os.path.realpath(path), None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


def _shared_environment(path: str, key: str) -> lmdb.Environment:
    """This process's handle on the store at ``path`` (``key``: its real path)."""
    pid = os.getpid()
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


class FeatureStore:
    """Read-only access to a feature store; O(1) lookup by image id, nothing loaded into RAM.

    The LMDB environment is opened on first use in each process and shared by every
    FeatureStore of the same path there (py-lmdb allows one handle per path and process); the
    opening pid is recorded and the environment reopened after a fork. The object itself holds
    no handle, so it pickles and forks freely. ``get`` reads through a ``buffers=False`` transaction:
    LMDB copies the record's bytes once into a Python ``bytes`` object, which stays valid after
    the transaction ends, and the arrays are ``np.frombuffer`` views of it (no further copy).
    A ``buffers=True`` read would avoid that one copy but its memory is invalid once the
    transaction closes, which is unsafe for arrays returned to callers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        if not Path(self.path, "data.mdb").is_file():
            raise FeatureStoreError(f"feature store {self.path}: no LMDB environment there (expected "
                                    f"{Path(self.path, 'data.mdb')}); build one with `interbert data "
                                    "convert-tsv`, `convert-npz` or `synth`")
        self._key = os.path.realpath(self.path)
        self._metadata: Optional[StoreMetadata] = None

    def _environment(self) -> lmdb.Environment:
        return _shared_environment(self.path, self._key)

    @property
    def metadata(self) -> StoreMetadata:
        if self._metadata is None:
            with self._environment().begin(buffers=False) as txn:
                data = txn.get(METADATA_KEY)
            if data is None:
                raise FeatureStoreError(f"feature store {self.path}: no metadata record "
                                        f"({METADATA_KEY.decode()}); it was not written by interbert or "
                                        "its writer was interrupted: rebuild it")
            self._metadata = StoreMetadata.from_bytes(data, self.path)
        return self._metadata

    def __len__(self) -> int:
        return self.metadata.record_count

    def __contains__(self, image_id: str) -> bool:
        with self._environment().begin(buffers=True) as txn:
            return txn.get(image_id.encode("utf-8")) is not None

    def missing(self, image_ids) -> list:
        """The ids among ``image_ids`` that have no record (one transaction, no record copied)."""
        with self._environment().begin(buffers=True) as txn:
            return [i for i in image_ids if txn.get(i.encode("utf-8")) is None]

    def get_bytes(self, image_id: str) -> bytes:
        with self._environment().begin(buffers=False) as txn:
            data = txn.get(image_id.encode("utf-8"))
        if data is None:
            raise MissingImageError(f"feature store {self.path}: no record for image id {image_id!r}; "
                                    "check that the caption manifest and the store use the same ids "
                                    "(`interbert data verify --features STORE --captions FILE`)")
        return data

    def decode(self, image_id: str, data: bytes) -> RegionRecord:
        """Decode a record's bytes, checking the layout and the feature size against the metadata."""
        try:
            record = decode_record(data)
        except RecordFormatError as error:
            raise CorruptRecordError(f"feature store {self.path}: record {image_id!r} is corrupt: {error}; "
                                     "run `interbert data verify` to list every bad record, then rebuild "
                                     "the store") from None
        size = self.metadata.feature_size
        if record.features.shape[1] != size:
            raise CorruptRecordError(f"feature store {self.path}: record {image_id!r} has "
                                     f"{record.features.shape[1]} features per region but the store's "
                                     f"metadata says {size}; rebuild the store from consistent detector output")
        return record

    def get(self, image_id: str) -> RegionRecord:
        """The record of ``image_id`` (arrays are read-only views; see the class docstring)."""
        return self.decode(image_id, self.get_bytes(image_id))

    def keys(self) -> Iterator[str]:
        """Every image id, in key order (streams through a cursor)."""
        with self._environment().begin(buffers=False) as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                if key != METADATA_KEY:
                    yield key.decode("utf-8")

    def items_raw(self) -> Iterator[tuple]:
        """``(image_id, record bytes)`` for every record, in key order."""
        with self._environment().begin(buffers=False) as txn:
            for key, value in txn.cursor():
                if key != METADATA_KEY:
                    yield key.decode("utf-8"), value

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in Path(self.path).iterdir() if f.is_file())


class FeatureStoreWriter:
    """Builds a store at ``path`` through a temporary directory renamed on success.

    Use as a context manager; ``add`` validates each record (``record_problems``). A record with
    problems is skipped and counted in ``skipped`` (``strict=True`` raises instead), except a
    wrong feature size, which is always an error: it means the wrong detector output.
    """

    def __init__(self, path: str | os.PathLike, feature_size: int = DEFAULT_FEATURE_SIZE,
                 num_classes: int = DEFAULT_NUM_CLASSES, created_by: str = "", strict: bool = False,
                 overwrite: bool = False, commit_every: int = 512, box_tolerance: float = 1.0,
                 map_size: int = 1 << 40):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FeatureStoreError(f"{self.path} already exists; remove it or pass --overwrite")
        self.tmp_path = Path(f"{self.path}.tmp-{os.getpid()}")
        self.metadata = StoreMetadata(feature_size=feature_size, num_classes=num_classes,
                                      created_by=created_by)
        self.strict = strict
        self.overwrite = overwrite
        self.commit_every = commit_every
        self.box_tolerance = box_tolerance
        self.map_size = map_size
        self.skipped: Counter = Counter()
        self.skip_examples: dict = {}
        self._env = None
        self._txn = None
        self._pending = 0

    def __enter__(self) -> "FeatureStoreWriter":
        if self.tmp_path.exists():
            shutil.rmtree(self.tmp_path)
        # The map size only reserves address space; the file grows with what is written.
        self._env = lmdb.open(str(self.tmp_path), map_size=self.map_size, subdir=True, meminit=False,
                              readahead=False)
        self._txn = self._env.begin(write=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._finish()
        else:
            self._abort()

    def _skip(self, problem: str, where: str) -> None:
        self.skipped[problem] += 1
        examples = self.skip_examples.setdefault(problem, [])
        if len(examples) < 5:
            examples.append(where)

    def add(self, record: RegionRecord, source: str = "") -> bool:
        """Write ``record``; ``source`` (e.g. ``file.tsv:12``) names it in errors. True if written."""
        where = f"{source} (image {record.image_id!r})" if source else f"image {record.image_id!r}"
        key = record.image_id.encode("utf-8")
        if key.startswith(b"__interbert"):
            raise FeatureStoreError(f"{where}: image ids starting with '__interbert' are reserved")
        problems = record_problems(record, self.metadata, self.box_tolerance)
        for problem, detail in problems:
            if problem in ("wrong feature size", "wrong class count"):
                raise FeatureStoreError(f"{where}: {detail}; pass --feature-size/--num-classes if the whole "
                                        "input really has that size")
        if problems:
            if self.strict:
                raise FeatureStoreError(f"{where}: " + "; ".join(f"{p}: {d}" for p, d in problems)
                                        + " (without --strict such records are skipped and counted)")
            self._skip(problems[0][0], where)
            return False
        if not self._txn.put(key, encode_record(record), overwrite=False):
            if self.strict:
                raise FeatureStoreError(f"{where}: duplicate image id (an earlier record has it)")
            self._skip("duplicate image id", where)
            return False
        self.metadata.record_count += 1
        self.metadata.region_count += record.num_regions
        self.metadata.has_class_probs |= record.class_probs is not None
        self._pending += 1
        if self._pending >= self.commit_every:
            self._commit()
        return True

    def _commit(self) -> None:
        self._txn.commit()
        self._txn = self._env.begin(write=True)
        self._pending = 0

    def _finish(self) -> None:
        self.metadata.created_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._txn.put(METADATA_KEY, self.metadata.to_bytes())
        self._txn.commit()
        self._env.sync(True)
        self._env.close()
        if self.path.exists():  # only reachable with overwrite=True
            _forget_environment(self.path)
            shutil.rmtree(self.path)
        os.replace(self.tmp_path, self.path)

    def _abort(self) -> None:
        if self._txn is not None:
            self._txn.abort()
        if self._env is not None:
            self._env.close()
        shutil.rmtree(self.tmp_path, ignore_errors=True)

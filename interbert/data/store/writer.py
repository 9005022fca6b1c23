"""Writing a feature store: one writer, one or K LMDB shards, built aside and renamed on success.

``FeatureStoreWriter(path, shards=K)`` builds under ``<path>.tmp-<pid>``: with K = 1 a single
LMDB environment; with K > 1 the shards ``shard-00000-of-0000K`` ... (each a single store with its
own metadata record) and ``store.json`` listing them. Records are validated before they are
written (``record_problems``); ``add_encoded`` takes records already encoded and checked in a
worker process (``conversion``), so the writer's own work is one LMDB put per image.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import lmdb

from interbert.data.store.environment_cache import forget_environment
from interbert.data.store.errors import FeatureStoreError
from interbert.data.store.layout import shard_of
from interbert.data.store.metadata import (
    DEFAULT_FEATURE_SIZE,
    DEFAULT_NUM_CLASSES,
    METADATA_KEY,
    SHARDED_METADATA_FILE,
    StoreMetadata,
)
from interbert.data.store.record_checks import record_problems
from interbert.data.store.record_format import RegionRecord, encode_record

# A record problem that means the whole input is of another kind than the flags say: never a skip.
FATAL_PROBLEMS = {
    "wrong feature size": "pass --feature-size if the whole input really has that size",
    "wrong class count": "pass --num-classes if the whole input really has that many classes",
    "labels disagree with class distribution": "the labels are not in the background-at-0 class space of "
                                               "the class distribution; pass --objects-id-base 1 if the input's "
                                               "objects_id already counts the background, 0 if it does not",
}


def shard_name(index: int, shards: int) -> str:
    return f"shard-{index:05d}-of-{shards:05d}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_temporaries(path: str | os.PathLike) -> list:
    """``PATH.tmp-<pid>`` directories of earlier runs writing ``path`` whose process is gone (a
    SIGKILL or a crash of the machine: every other stop removes its own)."""
    path = Path(path)
    found = []
    for candidate in path.parent.glob(f"{path.name}.tmp-*"):
        pid = candidate.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            found.append(candidate)
    return sorted(found)


def remove_leftover(path: Path) -> None:
    """Remove ``path`` (a directory or a file) if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class FeatureStoreWriter:
    """Builds a store at ``path`` through a temporary directory renamed on success.

    Use as a context manager. ``add`` validates and writes a record; a record with problems is
    skipped and counted in ``skipped`` (``strict=True`` raises instead), except the problems of
    ``FATAL_PROBLEMS``, which are always errors. ``shards`` > 1 writes a sharded store.
    """

    def __init__(self, path: str | os.PathLike, feature_size: int = DEFAULT_FEATURE_SIZE,
                 num_classes: int = DEFAULT_NUM_CLASSES, created_by: str = "", strict: bool = False,
                 overwrite: bool = False, commit_every: int = 512, box_tolerance: float = 1.0,
                 map_size: int = 1 << 40, shards: int = 1):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FeatureStoreError(f"{self.path} already exists; choose another --out or pass --overwrite "
                                    "to replace it")
        if shards < 1:
            raise FeatureStoreError(f"--shards is {shards}; give 1 or more")
        self.tmp_path = Path(f"{self.path}.tmp-{os.getpid()}")
        self.metadata = StoreMetadata(feature_size=feature_size, num_classes=num_classes, created_by=created_by)
        self.shards = shards
        self.strict = strict
        self.overwrite = overwrite
        self.commit_every = commit_every
        self.box_tolerance = box_tolerance
        self.map_size = map_size
        self.skipped: Counter = Counter()
        self.skip_examples: dict = {}
        self._envs: list = []
        self._txns: list = []
        self._shard_metadata: list = []
        self._pending = 0

    def _shard_paths(self) -> list:
        if self.shards == 1:
            return [self.tmp_path]
        return [self.tmp_path / shard_name(i, self.shards) for i in range(self.shards)]

    def __enter__(self) -> FeatureStoreWriter:
        remove_leftover(self.tmp_path)
        if self.shards > 1:
            self.tmp_path.mkdir(parents=True)
        for shard in self._shard_paths():
            # The map size only reserves address space; the file grows with what is written. No
            # fsync per commit: the store lives under its temporary name until _finish has synced
            # it once, so a crash before then loses nothing the user could have used.
            env = lmdb.open(str(shard), map_size=self.map_size, subdir=True, meminit=False, readahead=False,
                            sync=False)
            self._envs.append(env)
            self._txns.append(env.begin(write=True))
            self._shard_metadata.append(StoreMetadata(**{**asdict(self.metadata), "record_count": 0,
                                                         "region_count": 0}))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._finish()
        else:
            self._abort()

    def skip(self, problem: str, where) -> None:
        """Count one skipped input under ``problem``; the first few places are kept (``where``: a
        string, or a function giving one, called only for those)."""
        self.skipped[problem] += 1
        examples = self.skip_examples.setdefault(problem, [])
        if len(examples) < 5:
            examples.append(where() if callable(where) else str(where))

    def add(self, record: RegionRecord, source: str = "") -> bool:
        """Check and write ``record``; ``source`` (e.g. ``file.tsv:12``) names it in errors. True if written."""
        problems = record_problems(record, self.metadata, self.box_tolerance)
        data = None if problems else encode_record(record)
        return self.add_encoded(record.image_id, data, record.num_regions, record.class_probs is not None,
                                problems, source)

    def add_encoded(self, image_id: str, data: bytes | None, num_regions: int, has_class_probs: bool,
                    problems: list, source: str = "") -> bool:
        """Write an encoded record that ``record_problems`` judged (``problems``; ``data`` None if any).

        ``source`` may be any object whose ``str`` names the input; it is formatted only for messages.
        """
        def where() -> str:
            return f"{source} (image {image_id!r})" if source != "" else f"image {image_id!r}"

        key = image_id.encode("utf-8")
        if key.startswith(b"__interbert"):
            raise FeatureStoreError(f"{where()}: image ids starting with '__interbert' are reserved")
        if not key or len(key) > 511:
            raise FeatureStoreError(f"{where()}: an image id must be 1 to 511 bytes long (LMDB's key limit)")
        for problem, detail in problems:
            if problem in FATAL_PROBLEMS:
                raise FeatureStoreError(f"{where()}: {detail}; {FATAL_PROBLEMS[problem]}")
        if problems:
            if self.strict:
                raise FeatureStoreError(f"{where()}: " + "; ".join(f"{p}: {d}" for p, d in problems)
                                        + " (without --strict such records are skipped and counted)")
            self.skip(problems[0][0], where)
            return False
        shard = shard_of(image_id, self.shards)
        try:
            written = self._txns[shard].put(key, data, overwrite=False)
        except lmdb.Error as error:
            raise FeatureStoreError(f"{where()}: writing {self.tmp_path} failed ({error}); check free disk "
                                    "space, then run the command again") from None
        if not written:
            if self.strict:
                raise FeatureStoreError(f"{where()}: duplicate image id (an earlier record has it)")
            self.skip("duplicate image id", where)
            return False
        for metadata in (self.metadata, self._shard_metadata[shard]):
            metadata.record_count += 1
            metadata.region_count += num_regions
            metadata.has_class_probs |= has_class_probs
        self._pending += 1
        if self._pending >= self.commit_every:
            self._commit()
        return True

    def _commit(self) -> None:
        for i, env in enumerate(self._envs):
            self._txns[i].commit()
            self._txns[i] = env.begin(write=True)
        self._pending = 0

    def _finish(self) -> None:
        self.metadata.created_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            for txn, env, metadata in zip(self._txns, self._envs, self._shard_metadata):
                metadata.created_at = self.metadata.created_at
                metadata.has_class_probs = self.metadata.has_class_probs
                txn.put(METADATA_KEY, metadata.to_bytes())
                txn.commit()
                env.sync(True)
                env.close()
        except lmdb.Error as error:
            self._txns, self._envs = [], []
            self._abort()
            raise FeatureStoreError(f"finishing {self.tmp_path} failed ({error}); check free disk space, then "
                                    "run the command again") from None
        if self.shards > 1:
            layout = {**asdict(self.metadata),
                      "groups": [[shard_name(i, self.shards) for i in range(self.shards)]]}
            (self.tmp_path / SHARDED_METADATA_FILE).write_text(json.dumps(layout, indent=1, sort_keys=True))
        if self.path.exists() and self.overwrite:
            forget_environment(self.path)
            remove_leftover(self.path)
        try:
            if self.path.exists():
                raise FileExistsError(self.path)
            os.replace(self.tmp_path, self.path)  # refuses a non-empty directory: no store is ever replaced
        except OSError:
            raise FeatureStoreError(
                f"{self.path} appeared while this run was writing (another process finished it first); this "
                f"run's store is kept in {self.tmp_path}: compare the two, then move the one you want into "
                "place") from None

    def _abort(self) -> None:
        for txn in self._txns:
            txn.abort()
        for env in self._envs:
            env.close()
        shutil.rmtree(self.tmp_path, ignore_errors=True)

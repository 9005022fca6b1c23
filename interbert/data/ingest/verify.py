"""``interbert data verify``: check every record of a store and every line of caption manifests."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import lmdb
from tqdm import tqdm

from interbert.data.store.errors import FeatureStoreError
from interbert.data.store.layout import shard_of
from interbert.data.store.reader import FeatureStore
from interbert.data.store.record_checks import record_problems
from interbert.data.store.record_format import ChecksumError, RecordFormatError, decode_record
from interbert.data.text.manifests import ManifestError, read_manifest


@dataclass
class VerifyReport:
    """Counts of each problem, with the first few places (record keys or ``file:line``) for each."""

    records: int = 0
    captions: int = 0
    problems: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    max_examples: int = 5

    def add(self, problem: str, where: str) -> None:
        self.problems[problem] += 1
        places = self.examples.setdefault(problem, [])
        if len(places) < self.max_examples:
            places.append(where)

    @property
    def clean(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"checked {self.records} records and {self.captions} captions"]
        if self.clean:
            lines.append("no problems found")
        for problem, count in sorted(self.problems.items()):
            lines.append(f"  {problem}: {count}  (first: {'; '.join(self.examples[problem])})")
        return "\n".join(lines)


def verify_store(path: str | os.PathLike, report: VerifyReport, box_tolerance: float = 1.0,
                 progress: bool = True) -> FeatureStore | None:
    """Decode every record of the store at ``path`` (checksum included); adds problems to ``report``."""
    try:
        store = FeatureStore(path)
    except FeatureStoreError as error:
        report.add("damaged LMDB file" if "damaged LMDB file" in str(error) else "unreadable store", str(error))
        return None
    try:
        _verify_records(store, report, box_tolerance, progress)
    except lmdb.Error as error:  # a damaged B-tree page: the environment itself is broken
        report.add("damaged LMDB file", f"{path}: {type(error).__name__}: {error}; rebuild the store from its "
                                        "source (records read before the damage were checked)")
    except FeatureStoreError as error:
        report.add("damaged LMDB file", str(error))
    return store


def _verify_records(store: FeatureStore, report: VerifyReport, box_tolerance: float, progress: bool) -> None:
    metadata = store.metadata
    shards = {shard: group for group in store.groups for shard in group}
    items = store.items_raw(with_shard=True)
    for shard, key, data in tqdm(items, total=len(store), desc="verify", unit="record", disable=not progress):
        report.records += 1
        try:
            record = decode_record(data)
        except ChecksumError as error:
            report.add("checksum mismatch", f"{key!r}: {error}")
            continue
        except RecordFormatError as error:
            report.add("corrupt record", f"{key!r}: {error}")
            continue
        group = shards[shard]
        if group[shard_of(key, len(group))] != shard:
            report.add("record in the wrong shard", f"{key!r} in {shard} (readers never look there)")
        if record.image_id != key:
            report.add("key and image id differ", f"{key!r} holds {record.image_id!r}")
        if metadata.has_class_probs and record.class_probs is None:
            report.add("missing class distribution", repr(key))
        for problem, detail in record_problems(record, metadata, box_tolerance):
            report.add(problem, f"{key!r}: {detail}")
    if report.records != metadata.record_count:
        report.add("record count differs from metadata",
                   f"{report.records} records, metadata says {metadata.record_count}")


def verify_captions(paths: Iterable, store: FeatureStore | None, report: VerifyReport) -> None:
    """Every manifest line parses, has a caption, and names an image the store holds."""
    for path in paths:
        try:
            lines = list(read_manifest(path))
        except (ManifestError, OSError) as error:
            report.add("unreadable manifest", str(error))
            continue
        for line_number, entry in lines:
            report.captions += 1
            if not str(entry["caption"]).strip():
                report.add("empty caption", f"{path}:{line_number}")
        if store is not None:
            ids = sorted({entry["image_id"] for _, entry in lines})
            missing = set(store.missing(ids))
            for line_number, entry in lines:
                if entry["image_id"] in missing:
                    report.add("caption image missing from store", f"{path}:{line_number} ({entry['image_id']!r})")


def verify(features: str | None, captions: Iterable = (), box_tolerance: float = 1.0,
           progress: bool = True) -> VerifyReport:
    report = VerifyReport()
    store = verify_store(features, report, box_tolerance, progress) if features else None
    verify_captions(captions, store, report)
    return report

"""Stores of schema 1 are recognised: refused with how to migrate, and migrated by a command."""
from __future__ import annotations

import json

import lmdb
import numpy as np
import pytest

from interbert.cli import main
from interbert.data.store.errors import LegacyStoreError
from interbert.data.store.metadata import METADATA_KEY
from interbert.data.store.reader import FeatureStore
from interbert.data.store.record_format import LEGACY_VERSION, RegionRecord, encode_record
from tests.helpers.data import make_record


def write_schema1_store(path, records, created_by: str, has_class_probs: bool) -> str:
    """A store as the schema-1 writer left it: version-1 records, no checksum, no label convention."""
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for record in records:
            txn.put(record.image_id.encode(), encode_record(record, version=LEGACY_VERSION))
        metadata = {"feature_size": 2048, "num_classes": 1601, "record_count": len(records),
                    "region_count": sum(r.num_regions for r in records), "has_class_probs": has_class_probs,
                    "created_by": created_by, "created_at": "2026-11-01T00:00:00+0000", "schema_version": 1,
                    "format": "interbert-feature-store"}
        txn.put(METADATA_KEY, json.dumps(metadata, sort_keys=True).encode())
    env.close()
    return str(path)


def unshifted(record: RegionRecord, derived_confidences: bool = False) -> RegionRecord:
    """``record`` as schema 1 stored it from a 0-based objects_id."""
    labels = record.labels - 1
    confidences = record.confidences
    if derived_confidences:
        confidences = record.class_probs[np.arange(len(labels)), labels].astype(np.float32)
    return RegionRecord(record.image_id, record.width, record.height, record.features, record.boxes, labels,
                        confidences, record.class_probs)


def test_a_schema1_store_is_refused_with_the_migration_command(tmp_path):
    path = write_schema1_store(tmp_path / "old", [make_record("a")], "interbert data convert-tsv x.tsv", False)
    with pytest.raises(LegacyStoreError, match=r"schema version 1.*interbert data migrate --out NEW_STORE"):
        FeatureStore(path)


def test_migrate_judges_objects_id_stores_from_their_class_distributions(tmp_path, capsys):
    records = [make_record(f"{i}", seed=i, class_probs=True) for i in range(5)]
    old = write_schema1_store(tmp_path / "old", [unshifted(r, derived_confidences=True) for r in records],
                              "interbert data convert-tsv a.tsv", True)
    assert main(["data", "migrate", "--out", str(tmp_path / "new"), old]) == 0
    assert "labels: shifted by one" in capsys.readouterr().out
    store = FeatureStore(tmp_path / "new")
    for record in records:
        back = store.get(record.image_id)
        np.testing.assert_array_equal(back.labels, record.labels)
        rows = np.arange(record.num_regions)
        np.testing.assert_allclose(back.confidences, record.class_probs[rows, record.labels], rtol=1e-3)
    assert main(["data", "verify", "--features", str(tmp_path / "new")]) == 0


def test_migrate_keeps_labels_that_came_from_cls_prob(tmp_path, capsys):
    records = [make_record(f"{i}", seed=i, class_probs=True) for i in range(3)]
    old = write_schema1_store(tmp_path / "old", records, "interbert data convert-tsv a.tsv", True)
    assert main(["data", "migrate", "--out", str(tmp_path / "new"), old]) == 0
    assert "labels: kept" in capsys.readouterr().out
    np.testing.assert_array_equal(FeatureStore(tmp_path / "new").get("1").labels, records[1].labels)


def test_migrate_asks_for_labels_when_it_cannot_tell(tmp_path, capsys):
    old = write_schema1_store(tmp_path / "old", [make_record("a")], "interbert data convert-npz d", False)
    assert main(["data", "migrate", "--out", str(tmp_path / "new"), old]) == 2
    assert "pass --labels shift" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert main(["data", "migrate", "--labels", "shift", "--out", str(tmp_path / "new"), old]) == 0
    np.testing.assert_array_equal(FeatureStore(tmp_path / "new").get("a").labels, make_record("a").labels + 1)


def test_migrate_never_replaces_its_source_or_an_existing_store(tmp_path, capsys):
    old = write_schema1_store(tmp_path / "old", [make_record("a")], "interbert data synth --images 1", False)
    assert main(["data", "migrate", "--out", old, old]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(LegacyStoreError):
        FeatureStore(old)  # untouched

"""Sharded stores: K LMDB environments read exactly like one; stores merged by listing."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from interbert.cli import main
from interbert.data.pretraining.dataset import PretrainingDataset
from interbert.data.pretraining.tasks import PretrainingTasks
from interbert.data.store.environment_cache import forget_environment
from interbert.data.store.errors import MissingImageError
from interbert.data.store.layout import shard_of
from interbert.data.store.reader import FeatureStore
from tests.helpers.data import make_record, write_manifest_lines, write_store


def records(ids, seed0: int = 0):
    return [make_record(image_id, num_regions=3 + i % 4, seed=seed0 + i) for i, image_id in enumerate(ids)]


def test_a_sharded_store_reads_like_a_single_one(tmp_path):
    items = records([f"img{i}" for i in range(40)])
    single = FeatureStore(write_store(tmp_path / "single", items))
    sharded = FeatureStore(write_store(tmp_path / "sharded", items, shards=4))
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == [
        "shard-00000-of-00004", "shard-00001-of-00004", "shard-00002-of-00004", "shard-00003-of-00004",
        "store.json"]
    assert len(sharded) == len(single) == 40
    assert sharded.metadata.region_count == single.metadata.region_count
    assert sorted(sharded.keys()) == sorted(single.keys())
    for image_id in ("img0", "img17", "img39"):
        np.testing.assert_array_equal(sharded.get(image_id).features, single.get(image_id).features)
    ids = ["img5", "img30", "img1"]
    assert [r.image_id for r in sharded.get_many(ids)] == ids
    assert sharded.missing(["img3", "nope"]) == ["nope"]
    with pytest.raises(MissingImageError, match="'nope'"):
        sharded.get("nope")
    # every shard holds a share, each a valid single store on its own
    counts = [len(FeatureStore(tmp_path / "sharded" / f"shard-0000{k}-of-00004")) for k in range(4)]
    assert sum(counts) == 40 and min(counts) > 0


def test_the_pretraining_dataset_reads_a_sharded_store(tmp_path, vocab_file):
    items = records(["a", "b", "c"])
    store = write_store(tmp_path / "store", items, shards=2)
    manifest = write_manifest_lines(tmp_path / "c.jsonl", [
        {"image_id": i, "caption": f"a {word}", "split": "train", "source": "test"}
        for i, word in (("a", "dog"), ("b", "cat"), ("c", "car"))])
    dataset = PretrainingDataset(store, manifest, vocab_file, tasks=PretrainingTasks(itm_negative_prob=0.0))
    sample = dataset[1]
    assert sample["region_features"].shape[0] == items[1].num_regions + 1


def test_stores_made_apart_merge_by_listing(tmp_path, capsys):
    part_a = write_store(tmp_path / "machine-a", records([f"a{i}" for i in range(10)]), shards=3)
    part_b = write_store(tmp_path / "machine-b", records([f"b{i}" for i in range(7)], 50))
    assert main(["data", "merge", "--out", str(tmp_path / "all"), part_a, part_b]) == 0
    layout = json.loads((tmp_path / "all" / "store.json").read_text())
    assert layout["groups"] == [["../machine-a/shard-00000-of-00003", "../machine-a/shard-00001-of-00003",
                                 "../machine-a/shard-00002-of-00003"], ["../machine-b"]]
    merged = FeatureStore(tmp_path / "all")
    assert len(merged) == 17 and sorted(merged.keys()) == sorted([f"a{i}" for i in range(10)]
                                                                + [f"b{i}" for i in range(7)])
    np.testing.assert_array_equal(merged.get("b3").boxes, records([f"b{i}" for i in range(7)], 50)[3].boxes)
    assert main(["data", "verify", "--features", str(tmp_path / "all")]) == 0
    for shard in merged.shard_paths:  # as a new process would, after the move
        forget_environment(shard)
    shutil.move(tmp_path, tmp_path.parent / (tmp_path.name + "-moved"))  # the tree moves as a whole
    moved = FeatureStore(tmp_path.parent / (tmp_path.name + "-moved") / "all")
    assert moved.get("a4").image_id == "a4"


def test_merge_refuses_a_part_with_another_feature_size(tmp_path, capsys):
    part_a = write_store(tmp_path / "a", records(["x"]))
    part_b = write_store(tmp_path / "b", [make_record("y", feature_size=1024)], feature_size=1024)
    assert main(["data", "merge", "--out", str(tmp_path / "all"), part_a, part_b]) == 2
    err = capsys.readouterr().err
    assert f"{part_b}: feature_size is 1024" in err and "Traceback" not in err
    assert not (tmp_path / "all").exists()


def test_merge_refuses_an_image_in_two_parts(tmp_path, capsys):
    part_a = write_store(tmp_path / "a", records(["x", "shared"]))
    part_b = write_store(tmp_path / "b", records(["shared", "z"], 9), shards=2)
    assert main(["data", "merge", "--out", str(tmp_path / "all"), part_a, part_b]) == 2
    assert "image 'shared' is in both" in capsys.readouterr().err


def test_verify_finds_a_record_in_the_wrong_shard(tmp_path, capsys):
    from interbert.data.store.record_format import encode_record
    from tests.helpers.data import put_raw

    path = write_store(tmp_path / "store", records(["a", "b", "c"]), shards=2)
    stray = next(f"s{i}" for i in range(100) if shard_of(f"s{i}", 2) == 1)
    put_raw(tmp_path / "store" / "shard-00000-of-00002", stray, encode_record(make_record(stray)))
    assert main(["data", "verify", "--features", path]) == 1
    assert "record in the wrong shard: 1" in capsys.readouterr().out

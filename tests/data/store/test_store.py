"""The feature store: round trips, metadata, lazy per-process opening, and clear errors."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from interbert.data.store.environment_cache import shared_environment
from interbert.data.store.errors import CorruptRecordError, FeatureStoreError, MissingImageError
from interbert.data.store.reader import FeatureStore
from interbert.data.store.record_format import decode_record, encode_record
from interbert.data.store.writer import FeatureStoreWriter
from tests.helpers.data import make_record, put_raw, write_store


def test_record_round_trip_keeps_arrays_up_to_fp16(tmp_path):
    record = make_record("img-1", num_regions=7, class_probs=True)
    store = FeatureStore(write_store(tmp_path / "store", [record]))
    back = store.get("img-1")
    assert back.features.dtype == np.float16 and back.features.shape == (7, 2048)
    np.testing.assert_array_equal(back.features, record.features.astype(np.float16))
    np.testing.assert_array_equal(back.boxes, record.boxes)
    np.testing.assert_array_equal(back.labels, record.labels)
    np.testing.assert_array_equal(back.confidences, record.confidences)
    np.testing.assert_array_equal(back.class_probs, record.class_probs.astype(np.float16))
    assert (back.width, back.height) == (640.0, 480.0)


def test_decoded_arrays_are_views_of_the_record_bytes():
    data = encode_record(make_record("img", num_regions=3))
    record = decode_record(data)
    assert record.features.base is not None and not record.features.flags.owndata
    assert not record.features.flags.writeable  # a view of immutable bytes, not a copy


def test_metadata_describes_the_store(tmp_path):
    records = [make_record(f"img-{i}", num_regions=3 + i, seed=i) for i in range(4)]
    metadata = FeatureStore(write_store(tmp_path / "store", records, created_by="test")).metadata
    assert (metadata.record_count, metadata.region_count) == (4, 3 + 4 + 5 + 6)
    assert (metadata.feature_size, metadata.num_classes, metadata.schema_version) == (2048, 1601, 2)
    assert metadata.created_by == "test" and not metadata.has_class_probs


def test_keys_lists_every_image_but_not_the_metadata(tmp_path):
    store = FeatureStore(write_store(tmp_path / "store", [make_record(f"img-{i}") for i in range(3)]))
    assert sorted(store.keys()) == ["img-0", "img-1", "img-2"]
    assert len(store) == 3 and "img-1" in store and "img-9" not in store


def test_missing_image_error_names_store_and_key(tmp_path):
    store = FeatureStore(write_store(tmp_path / "store", [make_record("img-1")]))
    with pytest.raises(MissingImageError, match=r"store.*'img-404'"):
        store.get("img-404")


def test_bad_magic_names_the_corrupt_key(tmp_path):
    path = write_store(tmp_path / "store", [make_record("img-1")])
    put_raw(path, "img-bad", b"XXXX" + encode_record(make_record("img-bad"))[4:])
    with pytest.raises(CorruptRecordError, match=r"record 'img-bad' is corrupt: bad magic"):
        FeatureStore(path).get("img-bad")


def test_truncated_record_names_its_key(tmp_path):
    path = write_store(tmp_path / "store", [make_record("img-1")])
    put_raw(path, "img-cut", encode_record(make_record("img-cut"))[:5000])
    with pytest.raises(CorruptRecordError, match=r"'img-cut'.*outside the 4992-byte record body"):
        FeatureStore(path).get("img-cut")


def test_header_length_past_the_end_is_reported(tmp_path):
    path = write_store(tmp_path / "store", [make_record("img-1")])
    data = bytearray(encode_record(make_record("img-hdr")))
    struct.pack_into("<I", data, 8, 10 ** 7)
    put_raw(path, "img-hdr", bytes(data))
    with pytest.raises(CorruptRecordError, match=r"'img-hdr'.*header length"):
        FeatureStore(path).get("img-hdr")


def test_feature_size_disagreeing_with_metadata_is_an_error(tmp_path):
    path = write_store(tmp_path / "store", [make_record("img-1")])
    put_raw(path, "img-small", encode_record(make_record("img-small", feature_size=1024)))
    with pytest.raises(CorruptRecordError, match=r"'img-small' has 1024 features per region.*2048"):
        FeatureStore(path).get("img-small")


def test_writer_refuses_a_record_with_the_wrong_feature_size(tmp_path):
    with pytest.raises(FeatureStoreError, match=r"'img-small'.*1024 values per region"):
        write_store(tmp_path / "store", [make_record("img-1"), make_record("img-small", feature_size=1024)])


def test_interrupted_writer_leaves_nothing_under_the_final_name(tmp_path):
    out = tmp_path / "store"
    with pytest.raises(RuntimeError):
        with FeatureStoreWriter(out) as writer:
            writer.add(make_record("img-1"))
            raise RuntimeError("interrupted")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_non_store_path_gives_a_clear_error(tmp_path):
    with pytest.raises(FeatureStoreError, match="no LMDB environment"):
        FeatureStore(tmp_path / "nowhere")


def test_reader_reopens_after_a_fork(tmp_path):
    store = FeatureStore(write_store(tmp_path / "store", [make_record("img-1")]))
    store.get("img-1")
    parent_env = shared_environment(store.path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must open its own environment, then read
        try:
            ok = store.get("img-1").num_regions == 5 and shared_environment(store.path) is not parent_env
        except Exception:
            ok = False
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"


class _StoreReads(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return float(self.store.get(f"img-{index % 4}").features[0, 0]), os.getpid()


def test_store_opens_in_forked_dataloader_workers(tmp_path):
    records = [make_record(f"img-{i}", seed=i) for i in range(4)]
    store = FeatureStore(write_store(tmp_path / "store", records))
    store.get("img-0")  # opened in the parent first: workers must not reuse that handle
    loader = torch.utils.data.DataLoader(_StoreReads(store), batch_size=2, num_workers=2,
                                         multiprocessing_context="fork")
    values, pids = zip(*[(v, p) for batch in loader for v, p in zip(*batch)])
    expected = [float(records[i % 4].features[0, 0].astype(np.float16)) for i in range(8)]
    assert list(map(float, values)) == expected
    assert os.getpid() not in {int(p) for p in pids}


def test_a_store_finished_by_another_process_meanwhile_is_never_replaced(tmp_path):
    path = tmp_path / "store"
    with pytest.raises(FeatureStoreError, match="appeared while this run was writing") as caught:
        with FeatureStoreWriter(path) as mine:
            mine.add(make_record("mine"))
            child = os.fork()
            if child == 0:  # another conversion to the same --out, finishing first
                try:
                    with FeatureStoreWriter(path) as theirs:
                        theirs.add(make_record("theirs"))
                finally:
                    os._exit(0)
            os.waitpid(child, 0)
    assert sorted(FeatureStore(path).keys()) == ["theirs"]  # the finished store is untouched
    kept = Path(f"{path}.tmp-{os.getpid()}")
    assert str(kept) in str(caught.value) and (kept / "data.mdb").is_file()  # and this run's work is kept

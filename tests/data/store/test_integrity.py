"""Record checksums: altered bytes are caught on every read and by verify, never trained on."""
from __future__ import annotations

import numpy as np
import pytest

from interbert.cli import main
from interbert.data.store.errors import CorruptRecordError
from interbert.data.store.reader import FeatureStore
from interbert.data.store.record_format import ChecksumError, decode_record, encode_record
from tests.helpers.data import make_record, put_raw, write_store


def flip_byte(data: bytes, position: int) -> bytes:
    flipped = bytearray(data)
    flipped[position] ^= 0x10
    return bytes(flipped)


def test_a_flipped_feature_byte_fails_the_checksum():
    data = encode_record(make_record("a"))
    decode_record(data)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        decode_record(flip_byte(data, len(data) - 100))


def test_a_flipped_byte_in_the_header_fails_the_checksum():
    data = encode_record(make_record("a"))
    position = data.index(b'"width":640') + len('"width":6')
    with pytest.raises(ChecksumError):
        decode_record(data[:position] + b"5" + data[position + 1:])  # the width reads 650


def test_reading_an_altered_record_is_an_error_naming_the_image(tmp_path):
    path = write_store(tmp_path / "store", [make_record("a"), make_record("b", seed=1)])
    put_raw(path, "b", flip_byte(encode_record(make_record("b", seed=1)), 500))
    store = FeatureStore(path)
    np.testing.assert_array_equal(store.get("a").features, make_record("a").features.astype(np.float16))
    with pytest.raises(CorruptRecordError, match=r"record 'b' is corrupt: checksum mismatch"):
        store.get("b")
    with pytest.raises(CorruptRecordError, match=r"record 'b'"):
        store.get_many(["a", "b"])


def test_verify_reports_altered_records_by_key_and_exits_1(tmp_path, capsys):
    path = write_store(tmp_path / "store", [make_record(f"{i}", seed=i) for i in range(4)])
    put_raw(path, "2", flip_byte(encode_record(make_record("2", seed=2)), 900))
    assert main(["data", "verify", "--features", path]) == 1
    out = capsys.readouterr().out
    assert "checksum mismatch: 1" in out and "'2'" in out


def test_verify_reports_a_damaged_lmdb_page_without_a_traceback(tmp_path, capsys):
    path = write_store(tmp_path / "store", [make_record(f"{i}", seed=i, num_regions=30) for i in range(40)])
    data_file = tmp_path / "store" / "data.mdb"
    raw = bytearray(data_file.read_bytes())
    page = 4096
    for start in range(2 * page, len(raw), page):  # zero every page after the two meta pages
        if raw[start:start + 16] != bytes(16):
            raw[start:start + page] = bytes(page)
            break
    data_file.write_bytes(bytes(raw))
    status = main(["data", "verify", "--features", path])
    out = capsys.readouterr().out
    assert status == 1
    assert "damaged LMDB file" in out and "Traceback" not in out

"""convert-tsv: layouts recognised without flags, unknown ones refused, N workers, no half stores."""
from __future__ import annotations

import base64
import csv
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from interbert.cli import main
from interbert.data.ingest.conversion import ConversionOptions
from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.formats.tsv import convert_tsv
from interbert.data.store.reader import FeatureStore
from tests.helpers.data import make_record, write_bottom_up_tsv

# LXMERT / py-bottom-up-attention: csv.DictWriter(delimiter="\t", fieldnames=...) with the
# defaults (lines end in "\r\n"), arrays base64 of float32 / int64 (airsplay/py-bottom-up-attention,
# demo/detectron2_mscoco_proposal_maxnms.py; airsplay/lxmert, src/utils.py reads it).
LXMERT_FIELDS = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
                 "num_boxes", "boxes", "features"]


def b64(array) -> str:
    return base64.b64encode(np.ascontiguousarray(array)).decode()


def write_lxmert_tsv(path, records) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, delimiter="\t", fieldnames=LXMERT_FIELDS)
        for r in records:
            n = r.num_regions
            writer.writerow({"img_id": r.image_id, "img_h": int(r.height), "img_w": int(r.width),
                             "objects_id": b64((r.labels - 1).astype(np.int64)),
                             "objects_conf": b64(r.confidences.astype(np.float32)),
                             "attrs_id": b64(np.zeros(n, np.int64)), "attrs_conf": b64(np.ones(n, np.float32)),
                             "num_boxes": n, "boxes": b64(r.boxes.astype(np.float32)),
                             "features": b64(r.features.astype(np.float32))})


def test_the_lxmert_layout_is_recognised_without_flags(tmp_path):
    records = [make_record(f"COCO_val2014_{i:012d}", num_regions=4 + i, seed=i) for i in range(3)]
    write_lxmert_tsv(tmp_path / "val.tsv", records)
    convert_tsv([tmp_path / "val.tsv"], ConversionOptions(str(tmp_path / "store")))
    store = FeatureStore(tmp_path / "store")
    for r in records:
        back = store.get(r.image_id)
        assert (back.width, back.height) == (r.width, r.height)  # img_h comes before img_w
        np.testing.assert_array_equal(back.labels, r.labels)  # 0-based objects_id + 1
        np.testing.assert_array_equal(back.boxes, r.boxes)
        np.testing.assert_array_equal(back.features, r.features.astype(np.float16))


def test_an_unknown_layout_stops_with_the_known_layouts_listed(tmp_path, capsys):
    (tmp_path / "odd.tsv").write_text("x\t12\tAAAA\tAAAA\t3\n")
    assert main(["data", "convert-tsv", "--out", str(tmp_path / "store"), str(tmp_path / "odd.tsv")]) == 2
    err = capsys.readouterr().err
    assert "odd.tsv:1: the row matches no known TSV layout" in err
    assert "lxmert (image_id, image_h" in err and "--columns" in err
    assert not (tmp_path / "store").exists()


def test_a_row_whose_numbers_are_not_numbers_names_the_line(tmp_path):
    records = [make_record("1"), make_record("2", seed=1)]
    write_bottom_up_tsv(tmp_path / "a.tsv", records)
    lines = (tmp_path / "a.tsv").read_bytes().split(b"\r\n")
    lines[1] = lines[1].replace(b"\t5\t", b"\tfive\t", 1)
    (tmp_path / "a.tsv").write_bytes(b"\r\n".join(lines))
    with pytest.raises(ConversionError, match=r"a\.tsv:2: column num_boxes is b'five', not a number"):
        convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store")))


def test_num_boxes_that_disagrees_with_the_arrays_is_named(tmp_path):
    write_bottom_up_tsv(tmp_path / "a.tsv", [make_record("1")])
    text = (tmp_path / "a.tsv").read_text().replace("\t5\t", "\t6\t", 1)
    (tmp_path / "a.tsv").write_text(text)
    with pytest.raises(ConversionError, match=r"a\.tsv:1 \(image '1'\) column boxes, num_boxes 6.*num_boxes"):
        convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store")))


def test_characters_outside_base64_are_an_error_not_dropped(tmp_path):
    write_bottom_up_tsv(tmp_path / "a.tsv", [make_record("1")])
    fields = (tmp_path / "a.tsv").read_text().split("\t")
    fields[4] = fields[4][:10] + "!" + fields[4][10:]
    (tmp_path / "a.tsv").write_text("\t".join(fields))
    with pytest.raises(ConversionError, match=r"a\.tsv:1 \(image '1'\) column boxes: not valid base64"):
        convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "store")))


def test_two_workers_write_the_same_store_as_one(tmp_path, monkeypatch):
    from interbert.data.ingest.formats import tsv

    monkeypatch.setattr(tsv, "CHUNK_BYTES", 20_000)  # many units, so the order across workers matters
    records = [make_record(f"{i}", num_regions=2 + i % 5, seed=i) for i in range(30)]
    records.append(make_record("3", seed=99))  # a duplicate id: the first one in file order must win
    write_bottom_up_tsv(tmp_path / "a.tsv", records)
    one = convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "one"), workers=1))
    two = convert_tsv([tmp_path / "a.tsv"], ConversionOptions(str(tmp_path / "two"), workers=2, shards=3))
    assert one.skipped == two.skipped == {"duplicate image id": 1}
    first, second = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "two")
    image_ids = sorted(first.keys())
    assert image_ids == sorted(second.keys())
    for image_id in image_ids:
        assert first.get_bytes(image_id) == second.get_bytes(image_id)


def test_an_interrupted_conversion_leaves_no_store_under_the_final_name(tmp_path):
    records = [make_record(f"{i}", num_regions=36, seed=i) for i in range(300)]
    write_bottom_up_tsv(tmp_path / "big.tsv", records)
    # SIGINT as a terminal gives it, also under a runner started in the background (which ignores it)
    cli = ("import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
           "from interbert.cli import main\nsys.exit(main())")
    process = subprocess.Popen([sys.executable, "-c", cli, "data", "convert-tsv", "--workers", "2",
                                "--out", str(tmp_path / "store"), str(tmp_path / "big.tsv")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list(tmp_path.glob("store.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert not (tmp_path / "store").exists()
    assert not list(tmp_path.glob("store.tmp-*"))


def test_the_data_commands_start_without_torch(tmp_path):
    write_bottom_up_tsv(tmp_path / "a.tsv", [make_record("1")])
    code = ("import sys\nfrom interbert.cli import main\n"
            f"status = main(['data', 'convert-tsv', '--out', {str(tmp_path / 'store')!r}, "
            f"{str(tmp_path / 'a.tsv')!r}])\n"
            "print(status, 'torch' in sys.modules)")
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert probe.stdout.strip().splitlines()[-1] == "0 False"

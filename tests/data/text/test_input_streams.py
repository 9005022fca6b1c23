"""Inputs that are not plain files: FIFOs, process substitution, stdin, gzip / bzip2 / zip, and
the kinds that are refused. Each store must hold exactly the records of the plain-file conversion."""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import threading
import zipfile

import pytest

from interbert.cli import main
from interbert.data.ingest.conversion import ConversionOptions
from interbert.data.ingest.formats.tsv import convert_tsv
from interbert.data.ingest.formats.vinvl import convert_vinvl
from interbert.data.store.reader import FeatureStore
from tests.helpers.data import make_record, write_bottom_up_tsv
from tests.helpers.peer_writers import (
    assert_one_error_line,
    detections,
    tsv_writer,
    vinvl_feature_row,
    vinvl_labelmap,
    vinvl_prediction_row,
)

FEATURE_SIZE = 64


def tsv_source(tmp_path, count: int = 24) -> tuple:
    """A bottom-up-attention TSV (with one duplicate id: the first in input order must win) and its
    plain-file conversion."""
    records = [make_record(f"{i}", num_regions=2 + i % 5, seed=i, feature_size=FEATURE_SIZE) for i in range(count)]
    records.append(make_record("3", seed=99, feature_size=FEATURE_SIZE))
    write_bottom_up_tsv(tmp_path / "plain.tsv", records)
    convert_tsv([tmp_path / "plain.tsv"], ConversionOptions(str(tmp_path / "plain"), feature_size=FEATURE_SIZE))
    return tmp_path / "plain.tsv", tmp_path / "plain"


def assert_same_store(store, expected) -> None:
    """Both stores hold exactly the same records, byte for byte."""
    got, want = FeatureStore(store), FeatureStore(expected)
    image_ids = sorted(want.keys())
    assert sorted(got.keys()) == image_ids
    for image_id in image_ids:
        assert got.get_bytes(image_id) == want.get_bytes(image_id)


def interbert_data(*args, **kwargs) -> subprocess.CompletedProcess:
    """``interbert data ARGS`` as a separate process."""
    return subprocess.run([sys.executable, "-m", "interbert.cli", "data", *map(str, args)], capture_output=True,
                          timeout=120, check=False, **kwargs)


class Feeder(threading.Thread):
    """Writes ``data`` into a FIFO (by path) or a pipe's write end (by descriptor), then closes it;
    ``stop()`` unblocks a writer whose reader never came."""

    def __init__(self, target, data: bytes):
        super().__init__(daemon=True)
        self.target, self.data = target, data

    def run(self) -> None:
        try:
            with open(self.target, "wb") as handle:
                handle.write(self.data)
        except BrokenPipeError:
            pass

    def stop(self) -> None:
        self.join(timeout=10)
        if self.is_alive() and isinstance(self.target, str):
            os.close(os.open(self.target, os.O_RDONLY | os.O_NONBLOCK))
            self.join(timeout=10)


def test_a_fifo_read_with_two_workers_gives_the_store_of_the_plain_file(tmp_path, monkeypatch):
    from interbert.data.ingest.formats import tsv

    monkeypatch.setattr(tsv, "CHUNK_BYTES", 4_000)  # many blocks, so their order across workers matters
    plain, expected = tsv_source(tmp_path)
    fifo = str(tmp_path / "features.fifo")
    os.mkfifo(fifo)
    feeder = Feeder(fifo, plain.read_bytes())
    feeder.start()
    try:
        result = convert_tsv([fifo], ConversionOptions(str(tmp_path / "store"), feature_size=FEATURE_SIZE,
                                                       workers=2))
    finally:
        feeder.stop()
    assert result.skipped == {"duplicate image id": 1}
    assert f"{fifo}:25" in result.skip_examples["duplicate image id"][0]  # lines counted as they are read
    assert_same_store(tmp_path / "store", expected)


def test_stdin_holding_gzip_is_recognised_by_its_bytes(tmp_path):
    plain, expected = tsv_source(tmp_path)
    run = interbert_data("convert-tsv", "--feature-size", FEATURE_SIZE, "--workers", 2, "--out", tmp_path / "store",
                         "-", input=gzip.compress(plain.read_bytes()))
    assert run.returncode == 0, run.stderr.decode()
    assert b"skipped 1 images (duplicate image id); first: stdin:25" in run.stdout
    assert_same_store(tmp_path / "store", expected)


def test_process_substitution_path_is_read_with_two_workers(tmp_path):
    plain, expected = tsv_source(tmp_path)
    read_end, write_end = os.pipe()
    feeder = Feeder(write_end, plain.read_bytes())  # as <(zcat x.tsv.gz) hands /dev/fd/N to the command
    feeder.start()
    try:
        run = interbert_data("convert-tsv", "--feature-size", FEATURE_SIZE, "--workers", 2, "--out",
                             tmp_path / "store", f"/dev/fd/{read_end}", pass_fds=(read_end,))
    finally:
        os.close(read_end)
        feeder.stop()
    assert run.returncode == 0, run.stderr.decode()
    assert_same_store(tmp_path / "store", expected)


def compressed(kind: str, data: bytes, tmp_path) -> str:
    """``data`` as a gzip file, a bzip2 file named like a plain TSV (the bytes decide), or a zip
    whose two .tsv members (in name order) hold its two halves, beside a README."""
    if kind == "gz":
        (tmp_path / "features.tsv.gz").write_bytes(gzip.compress(data))
        return str(tmp_path / "features.tsv.gz")
    if kind == "bz2":
        (tmp_path / "features.tsv").write_bytes(bz2.compress(data))
        return str(tmp_path / "features.tsv")
    lines = data.splitlines(keepends=True)
    with zipfile.ZipFile(tmp_path / "features.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("trainval/b_second.tsv", b"".join(lines[len(lines) // 2:]))
        archive.writestr("README.txt", b"not features\n")
        archive.writestr("trainval/a_first.tsv", b"".join(lines[:len(lines) // 2]))
    return str(tmp_path / "features.zip")


@pytest.mark.parametrize("kind", ["gz", "bz2", "zip"])
def test_compressed_files_give_the_store_of_the_plain_file(tmp_path, kind):
    plain, expected = tsv_source(tmp_path)
    source = compressed(kind, plain.read_bytes(), tmp_path)
    run = interbert_data("convert-tsv", "--feature-size", FEATURE_SIZE, "--workers", 2, "--out", tmp_path / "store",
                         source)
    assert run.returncode == 0, run.stderr.decode()
    assert_same_store(tmp_path / "store", expected)


def test_an_xz_input_is_one_line_and_exit_status_2(tmp_path):
    plain, _ = tsv_source(tmp_path)
    (tmp_path / "features.tsv.xz").write_bytes(lzma.compress(plain.read_bytes()))
    run = interbert_data("convert-tsv", "--out", tmp_path / "store", tmp_path / "features.tsv.xz")
    err = run.stderr.decode()
    assert run.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{tmp_path / 'features.tsv.xz'}: xz-compressed, which is not read" in err and "xz -dc FILE" in err
    assert not (tmp_path / "store").exists()


def tar_gz(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("features.tsv")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("name, content, message", [
    ("features.tar.gz", tar_gz, ("features.tar.gz: a tar archive inside gzip, which is not read (the converters "
                                 "read plain, gzip, bzip2 and zip files, pipes and stdin (-)); tar -xf FILE, then "
                                 "give the files in it")),
    ("features.tsv.gz", lambda data: gzip.compress(data)[:-300],
     "features.tsv.gz: the gzip data is damaged or cut short (EOFError"),
    ("features.7z", lambda data: b"7z\xbc\xaf\x27\x1c" + data, "features.7z: a 7z archive, which is not read"),
    ("empty.zip", lambda data: zipfile_bytes({"notes.txt": b"x"}),
     "empty.zip: no member of the zip archive matches *.tsv or *.tsv.[0-9]* (members: notes.txt)"),
])
def test_inputs_that_cannot_be_read_are_one_line(tmp_path, capsys, name, content, message):
    plain, _ = tsv_source(tmp_path)
    (tmp_path / name).write_bytes(content(plain.read_bytes()))
    assert main(["data", "convert-tsv", "--feature-size", str(FEATURE_SIZE), "--out", str(tmp_path / "store"),
                 str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert message in err
    assert not (tmp_path / "store").exists() and not list(tmp_path.glob("store.tmp-*"))


def zipfile_bytes(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_on_stdin_is_refused_naming_what_to_do(tmp_path):
    run = interbert_data("convert-tsv", "--out", tmp_path / "store", "-",
                         input=zipfile_bytes({"a.tsv": b"1\t2\t3\n"}))
    err = run.stderr.decode()
    assert run.returncode == 2 and "Traceback" not in err
    assert "stdin: a zip archive cannot be read from a pipe" in err and "unzip -p FILE MEMBER" in err


def test_caption_inputs_may_be_stdin_gzip_or_zip(tmp_path):
    rows = "".join(f"a photo of thing {i}\thttp://x/{i}.jpg\n" for i in range(5))
    (tmp_path / "cc.tsv").write_text(rows)
    assert main(["data", "captions", "--format", "cc", "--out", str(tmp_path / "plain.jsonl"),
                 str(tmp_path / "cc.tsv")]) == 0
    run = interbert_data("captions", "--format", "cc", "--out", tmp_path / "stdin.jsonl", "-",
                         input=gzip.compress(rows.encode()))
    assert run.returncode == 0, run.stderr.decode()
    assert (tmp_path / "stdin.jsonl").read_text() == (tmp_path / "plain.jsonl").read_text()

    def coco(image_ids):
        return json.dumps({"annotations": [{"image_id": i, "caption": f"cap {i}"} for i in image_ids]}).encode()

    (tmp_path / "annotations.zip").write_bytes(zipfile_bytes({
        "annotations/captions_val2014.json": coco([3]), "annotations/instances_train2014.json": b"{}",
        "annotations/captions_train2014.json": coco([1, 2])}))
    assert main(["data", "captions", "--format", "coco", "--out", str(tmp_path / "coco.jsonl"),
                 str(tmp_path / "annotations.zip")]) == 0
    lines = [json.loads(line) for line in (tmp_path / "coco.jsonl").read_text().splitlines()]
    assert [(line["image_id"], line["split"]) for line in lines] == [("1", "train"), ("2", "train"), ("3", "val")]


def test_a_gzip_caption_file_that_is_not_utf8_names_its_line(tmp_path, capsys):
    (tmp_path / "cc.tsv.gz").write_bytes(gzip.compress(b"fine\thttp://x/1.jpg\ncaf\xe9\thttp://x/2.jpg\n"))
    assert main(["data", "captions", "--format", "cc", "--out", str(tmp_path / "m.jsonl"),
                 str(tmp_path / "cc.tsv.gz")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'cc.tsv.gz'}:2: byte 0xe9 at column 4 is not UTF-8")


def test_vinvl_features_on_stdin_with_bzip2_predictions(tmp_path):
    names = [f"class{i}" for i in range(1, 1601)]
    images = [detections(f"coco_{i}", num_regions=3 + i % 3, seed=i, feature_size=FEATURE_SIZE) for i in range(20)]
    tsv_writer([vinvl_feature_row(image) for image in images], tmp_path / "features.tsv")
    tsv_writer([vinvl_prediction_row(image, names) for image in reversed(images)], tmp_path / "predictions.tsv")
    vinvl_labelmap(tmp_path / "labelmap.json", names)
    options = ConversionOptions(str(tmp_path / "plain"), feature_size=FEATURE_SIZE)
    convert_vinvl(str(tmp_path / "features.tsv"), options, predictions=str(tmp_path / "predictions.tsv"),
                  labelmap=str(tmp_path / "labelmap.json"))
    (tmp_path / "predictions.tsv.bz2").write_bytes(bz2.compress((tmp_path / "predictions.tsv").read_bytes()))
    run = interbert_data("convert-vinvl", "--feature-size", FEATURE_SIZE, "--workers", 2, "--predictions",
                         tmp_path / "predictions.tsv.bz2", "--labelmap", tmp_path / "labelmap.json", "--out",
                         tmp_path / "store", "-", input=gzip.compress((tmp_path / "features.tsv").read_bytes()))
    assert run.returncode == 0, run.stderr.decode()
    assert_same_store(tmp_path / "store", tmp_path / "plain")

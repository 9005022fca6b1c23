"""The data path at corpus scale: conversion speed beside its floor, bytes per image, read cost as
the store grows, and what Conceptual Captions + SBU + COCO would take.

1. Writes a TSV of LXMERT layout (``img_id, img_h, img_w, objects_id, objects_conf, attrs_id,
   attrs_conf, num_boxes, boxes, features``; float32 arrays in base64, as extractors write it).
2. The floor, in-process on one core: split each row, base64-decode its arrays, cast the
   features to float16: the bare work every converter has to do.
3. ``convert_tsv`` (``interbert data convert-tsv``) with 1 and 2 workers: images/s from the first
   byte read to the store synced and renamed into place, and bytes on disk per image; the same at
   100 regions. Once with the store on the work folder's disk and once in RAM (``--memory-dir``,
   default /dev/shm), each beside the time to write and fsync the same bytes there: the one
   writer cannot go faster than its disk.
4. Read cost: stores of 1k, 10k and 100k records (written through the real writer); microseconds
   per record for random single reads: first in the process, then the bytes alone and ``get``
   (read + checksum + decode).
5. Projection for ~4.3M images at 36 and 100 regions from the figures of this run.

    .venv/bin/python benchmarks/data_scale.py [--images 1500] [--read-sizes 1000 10000 100000]
        [--workdir DIR] [--json out.json]

The read-cost stores are written once per size (reused from --workdir if present). Their first read
in the process depends on the page cache (the machine's memory against the store's size); the
repeated reads are the cost of the store's own work.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from interbert.data.ingest.conversion import ConversionOptions  # noqa: E402
from interbert.data.ingest.detections import decode_base64  # noqa: E402
from interbert.data.ingest.formats.tsv import convert_tsv  # noqa: E402
from interbert.data.store.reader import FeatureStore  # noqa: E402
from interbert.data.store.record_format import RegionRecord, encode_record  # noqa: E402
from interbert.data.store.writer import FeatureStoreWriter  # noqa: E402

FEATURE_SIZE = 2048
# Images with detector features: Conceptual Captions (train + val as downloadable, ~3.3M), SBU (~0.86M
# still downloadable of 1M), COCO 2014 train + val (123,287). The paper pretrains on these three.
CORPUS_IMAGES = {"Conceptual Captions": 3_300_000, "SBU Captions": 860_000, "COCO": 123_287}


def _b64(array: np.ndarray) -> bytes:
    return base64.b64encode(np.ascontiguousarray(array).tobytes())


def write_lxmert_tsv(path: Path, images: int, regions: int, seed: int = 0) -> None:
    """``images`` rows of LXMERT layout with ``regions`` boxes each (non-negative features, as after
    the detector's ReLU, so float16 does not saturate)."""
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    with open(path, "wb") as handle:
        for i in range(images):
            xy = rng.uniform(0, 300, (regions, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(20, 150, (regions, 2))], 1).astype(np.float32)
            features = np.maximum(rng.normal(0, 1, (regions, FEATURE_SIZE)), 0).astype(np.float32)
            fields = [f"COCO_{i:012d}".encode(), str(height).encode(), str(width).encode(),
                      _b64(rng.integers(0, 1600, regions).astype(np.int64)),
                      _b64(rng.uniform(0.2, 1, regions).astype(np.float32)),
                      _b64(rng.integers(0, 400, regions).astype(np.int64)),
                      _b64(rng.uniform(0, 1, regions).astype(np.float32)),
                      str(regions).encode(), _b64(boxes), _b64(features)]
            handle.write(b"\t".join(fields) + b"\n")


def warm(path: Path) -> None:
    """Read ``path`` once, so that the floor and the conversions all find it in the page cache."""
    with open(path, "rb") as handle:
        while handle.read(16 << 20):
            pass


def floor_images_per_s(path: Path) -> float:
    """Split, base64-decode every array column, cast the features to float16: one core."""
    warm(path)
    start, count = time.perf_counter(), 0
    with open(path, "rb") as handle:
        for line in handle:
            fields = line.rstrip(b"\n").split(b"\t")
            n = int(fields[7])
            for column in (3, 4, 5, 6, 8):
                decode_base64(fields[column], "floor")
            features = np.frombuffer(decode_base64(fields[9], "floor"), np.float32).reshape(n, -1)
            features.astype(np.float16)
            count += 1
    return count / (time.perf_counter() - start)


def disk_floor_images_per_s(directory: Path, bytes_per_image: float, images: int) -> float:
    """Write ``images`` × ``bytes_per_image`` bytes to a file in ``directory`` and fsync it: the
    bare work of the store's one writer."""
    block = np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    total, path = int(bytes_per_image * images), directory / "disk-floor.bin"
    start = time.perf_counter()
    with open(path, "wb") as handle:
        for offset in range(0, total, len(block)):
            handle.write(block[:total - offset])
        handle.flush()
        os.fsync(handle.fileno())
    seconds = time.perf_counter() - start
    path.unlink()
    return images / seconds


def conversion(path: Path, out: Path, workers: int) -> dict:
    """Convert ``path`` with ``workers`` processes: images/s (wall) and bytes per image."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    result = convert_tsv([path], ConversionOptions(str(out), workers=workers))
    seconds = time.perf_counter() - start
    store = FeatureStore(out)
    images = result.metadata.record_count
    return {"workers": workers, "images": images, "seconds": seconds, "images_per_s": images / seconds,
            "bytes_per_image": store.disk_bytes() / images}


def read_store(root: Path, records: int, regions: int) -> Path:
    """A store of ``records`` records of ``regions`` regions, written through the real writer
    (distinct ids and checksums; the feature bytes repeat, which the store does not see)."""
    path = root / f"read-{records}-{regions}"
    if (path / "data.mdb").exists() or (path / "store.json").exists():
        return path
    rng = np.random.default_rng(records)
    xy = rng.uniform(0, 300, (regions, 2))
    template = RegionRecord(image_id="", width=640.0, height=480.0,
                            features=np.maximum(rng.normal(0, 1, (regions, FEATURE_SIZE)), 0).astype(np.float16),
                            boxes=np.concatenate([xy, xy + 50], 1).astype(np.float32),
                            labels=rng.integers(1, 1601, regions).astype(np.int32),
                            confidences=rng.uniform(0.2, 1, regions).astype(np.float32))
    with FeatureStoreWriter(path, created_by="benchmarks/data_scale.py") as writer:
        for i in range(records):
            template.image_id = f"{i:09d}"
            writer.add_encoded(template.image_id, encode_record(template), regions, False, [])
    return path


def read_cost(path: Path, reads: int, seed: int = 0) -> dict:
    """Microseconds per random single-record read of ``reads`` random ids: the first read of each
    in this process (from the page cache or the disk, as found: what a fresh training process
    meets), then again the bytes only and ``get`` (read + checksum + decode) with the pages in
    memory: the store's own cost."""
    store = FeatureStore(path)
    count = len(store)
    ids = [f"{i:09d}" for i in np.random.default_rng(seed).integers(0, count, reads)]
    figures = {"records": count, "store_gib": store.disk_bytes() / 2**30}
    for name, read in (("first_us", store.get_bytes), ("bytes_us", store.get_bytes), ("get_us", store.get)):
        start = time.perf_counter()
        for image_id in ids:
            read(image_id)
        figures[name] = (time.perf_counter() - start) / reads * 1e6
    return figures


def projection(rate: float, bytes_per_image: float) -> dict:
    images = sum(CORPUS_IMAGES.values())
    return {"images": images, "hours": images / rate / 3600, "disk_tib": images * bytes_per_image / 2**40}


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="TSV rows at 36 regions")
    parser.add_argument("--images-100", type=int, default=500, help="TSV rows at 100 regions")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--read-sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--read-regions", type=int, default=36)
    parser.add_argument("--reads", type=int, default=20000, help="random reads per store")
    parser.add_argument("--workdir", help="keep the TSVs and stores here (default: a temporary folder)")
    parser.add_argument("--memory-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="a RAM file system for the same conversions without the disk ('' for none)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        figures = {"cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0], "by_regions": {}}
        targets = [("disk", work)]
        if args.memory_dir:  # the same conversions into RAM: what the cores do when the disk is not the limit
            memory = Path(tempfile.mkdtemp(prefix="data-scale-", dir=args.memory_dir))
            targets.append(("memory", memory))
        for regions, images in ((36, args.images), (100, args.images_100)):
            tsv = work / f"lxmert-{regions}x{images}.tsv"
            if not tsv.exists():
                write_lxmert_tsv(tsv, images, regions)
            floor = floor_images_per_s(tsv)
            part = {"tsv_bytes_per_image": tsv.stat().st_size / images, "floor_images_per_s": floor,
                    "conversions": {}, "disk_floor_images_per_s": {}}
            for place, directory in targets:
                runs = [conversion(tsv, directory / f"store-{regions}-{w}", w) for w in args.workers]
                for run in runs:
                    run["of_floor"] = run["images_per_s"] / floor
                    shutil.rmtree(directory / f"store-{regions}-{run['workers']}", ignore_errors=True)
                part["conversions"][place] = runs
                part["disk_floor_images_per_s"][place] = disk_floor_images_per_s(
                    directory, runs[0]["bytes_per_image"], images)
            disk = part["conversions"]["disk"]
            part["projection"] = projection(max(r["images_per_s"] for r in disk), disk[0]["bytes_per_image"])
            figures["by_regions"][regions] = part
        figures["read_cost"] = [read_cost(read_store(work, size, args.read_regions), args.reads)
                                for size in args.read_sizes]
        figures["load_average_at_end"] = os.getloadavg()[0]
        if args.memory_dir:
            shutil.rmtree(memory, ignore_errors=True)
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def report(figures: dict) -> None:
    print(f"{figures['cores']} cores; load average {figures['load_average_at_start']:.2f} at the start, "
          f"{figures['load_average_at_end']:.2f} at the end")
    print("\nconvert-tsv (LXMERT layout) | images/s | of the floor | bytes/image in the store")
    for regions, part in figures["by_regions"].items():
        print(f"{regions} regions: floor (split + base64 + fp16 cast, 1 core) {part['floor_images_per_s']:,.0f} "
              f"images/s; TSV {part['tsv_bytes_per_image'] / 1024:,.0f} KiB/image")
        for place, runs in part["conversions"].items():
            print(f"  store on {place} (writing and fsyncing the same bytes alone: "
                  f"{part['disk_floor_images_per_s'][place]:,.0f} images/s):")
            for run in runs:
                print(f"    --workers {run['workers']}: {run['images_per_s']:,.0f} images/s "
                      f"({run['of_floor']:.2f}x the floor, "
                      f"{run['images_per_s'] / runs[0]['images_per_s']:.2f}x one worker), "
                      f"{run['bytes_per_image'] / 1024:,.1f} KiB/image")
    print("\nrandom reads, µs per record | records | store GiB | first read in the process | bytes only | get "
          "(read + checksum + decode)")
    for row in figures["read_cost"]:
        print(f"  {row['records']:>9,} | {row['store_gib']:.2f} | {row['first_us']:.1f} | {row['bytes_us']:.1f} | "
              f"{row['get_us']:.1f}")
    images = sum(CORPUS_IMAGES.values())
    print(f"\nprojection for {', '.join(CORPUS_IMAGES)} ({images:,} images), at the best rate measured here "
          "with the store on disk:")
    for regions, part in figures["by_regions"].items():
        p = part["projection"]
        print(f"  {regions} regions: {p['hours']:.1f} h of conversion, {p['disk_tib']:.2f} TiB of store")


if __name__ == "__main__":
    sys.exit(main())

"""Data-path throughput: samples/s through the real store + decode + masking + collate.

Builds (or reuses, --store/--captions) a corpus of 36-region records, then iterates the
pretraining loader (MSM + MRM + ITM, batch 64) with 0, 1 and 2 workers and prints samples/s and
the store's size on disk per image.

    .venv/bin/python benchmarks/dataloader.py [--images 2000] [--batches 60] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from interbert.data.feature_store import FeatureStore
from interbert.data.store_writer import FeatureStoreWriter
from interbert.data.loader import build_pretraining_loader
from interbert.data.manifests import write_manifest
from interbert.data.pretraining_dataset import PretrainingDataset
from interbert.data.record_format import RegionRecord
from interbert.data.synth import OBJECT_WORDS, synth_captions


def build_corpus(out: Path, images: int, regions: int, seed: int = 0) -> tuple:
    """A store of ``images`` records of exactly ``regions`` regions, with 5 captions each."""
    rng = np.random.default_rng(seed)
    entries = []
    with FeatureStoreWriter(out / "features", created_by="benchmarks/dataloader.py") as writer:
        for i in range(images):
            xy = rng.uniform(0, 400, (regions, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (regions, 2))], 1).astype(np.float32)
            writer.add(RegionRecord(image_id=str(i), width=600.0, height=600.0,
                                    features=np.maximum(rng.normal(0, 1, (regions, 2048)), 0).astype(np.float16),
                                    boxes=boxes, labels=rng.integers(1, 1601, regions).astype(np.int32),
                                    confidences=rng.uniform(0.2, 1, regions).astype(np.float32)))
            objects = [(int(o), int(c)) for o, c in zip(rng.choice(len(OBJECT_WORDS), 4, replace=False),
                                                         rng.integers(0, 8, 4))]
            entries += [{"image_id": str(i), "caption": c, "split": "train", "source": "bench"}
                        for c in synth_captions(objects, 5, rng)]
    write_manifest(out / "captions.jsonl", entries)
    return out / "features", out / "captions.jsonl"


def measure(dataset, workers: int, batches: int, batch_size: int) -> float:
    loader = build_pretraining_loader(dataset, batch_size=batch_size, num_workers=workers, seed=0)
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start, samples = time.perf_counter(), 0
    for _, batch in zip(range(batches), iterator):
        samples += batch["itm_labels"].shape[0]
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store"), parser.add_argument("--captions")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.store:
            store, captions = Path(args.store), Path(args.captions)
        else:
            store, captions = build_corpus(Path(tmp), args.images, args.regions)
        dataset = PretrainingDataset(store, captions, split=None, max_regions=args.regions)
        opened = FeatureStore(store)
        figures = {"images": len(opened), "regions_per_image": opened.metadata.region_count / len(opened),
                   "bytes_per_image": opened.disk_bytes() / len(opened), "batch_size": args.batch_size,
                   "samples_per_s": {}}
        for workers in args.workers:
            figures["samples_per_s"][workers] = measure(dataset, workers, args.batches, args.batch_size)
    print(f"store: {figures['images']} images, {figures['regions_per_image']:.1f} regions each, "
          f"{figures['bytes_per_image'] / 1024:.1f} KiB on disk per image")
    print("| workers | samples/s |\n| --- | --- |")
    for workers, rate in figures["samples_per_s"].items():
        print(f"| {workers} | {rate:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

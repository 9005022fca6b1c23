"""Data-path throughput: samples/s through the real store + decode + masking + batching.

Builds (or reuses, --store/--captions) a corpus of 36-region records, then iterates the
pretraining train loader (MSM + MRM + ITM, batch 64, the zero-copy hand-off) with 0, 1 and 2
workers and prints samples/s beside the bare read floor of the same run (the same batches'
records read from the store, one transaction per batch, in place, and their bytes stacked into
one array, nothing decoded or masked) and beside the in-process rate, and the training process's
time per batch spent on data (inside ``next(iterator)``; see ``measure``). Every measurement maps
the store afresh, as each epoch's workers do. Also the store's size on disk per image, and the
load average (other work on the cores lowers every figure).

    .venv/bin/python benchmarks/dataloader.py [--images 2000] [--batches 60] [--step-ms MS] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from interbert.data.ingest.synth import OBJECT_WORDS, synth_captions
from interbert.data.loading.loader import build_loader
from interbert.data.pretraining.dataset import PretrainingDataset
from interbert.data.store.environment_cache import forget_environment
from interbert.data.store.reader import FeatureStore
from interbert.data.store.record_format import RegionRecord
from interbert.data.store.writer import FeatureStoreWriter
from interbert.data.text.manifests import write_manifest


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


def read_floor(dataset, batches: int, batch_size: int) -> float:
    """Samples/s of reading the records of the loader's first batches and stacking their bytes."""
    loader = build_loader(dataset, batch_size=batch_size, num_workers=0, seed=0)
    order = list(iter(loader.sampler))[:(batches + 1) * batch_size]
    store = dataset.store
    ids = [dataset.image_ids[dataset.caption_image[i]] for i in order]
    forget_environment(store.path)  # map the store afresh, as each epoch's workers do
    store.get_many_bytes(ids[:batch_size])  # open the environment, as the loader's first batch does
    start, samples = time.perf_counter(), 0
    for first in range(batch_size, len(ids), batch_size):
        with store.viewing(ids[first:first + batch_size]) as records:
            stacked = np.zeros((len(records), max(len(r) for r in records)), dtype=np.uint8)
            for row, data in enumerate(records):
                stacked[row, :len(data)] = np.frombuffer(data, dtype=np.uint8)
        samples += len(records)
    return samples / (time.perf_counter() - start)


def handoff_ms(shape: tuple, repeats: int = 40) -> dict:
    """Milliseconds to allocate and fill one batch's float16 features in private memory (what the
    in-process loader does) and in a fresh shared-memory segment (what a worker must do so the
    batch can reach the training process)."""
    def private():
        torch.empty(shape, dtype=torch.float16).numpy().fill(1)

    def shared():
        torch.empty(0, dtype=torch.float16).share_memory_()  # warm the sharing machinery
        tensor = torch.empty(shape, dtype=torch.float16).share_memory_()
        tensor.numpy().fill(1)

    figures = {}
    for name, work in (("private", private), ("shared", shared)):
        work()
        start = time.perf_counter()
        for _ in range(repeats):
            work()
        figures[name] = (time.perf_counter() - start) / repeats * 1e3
    return figures


def measure(dataset, workers: int, batches: int, batch_size: int, step_s: float | None = None) -> tuple:
    """(samples/s, ms per batch the training process spends on data) of the pretraining train
    loader's configuration (``zero_copy``, as ``interbert/pretraining/data.py`` builds it) with
    ``workers``.

    Samples/s: ``batches`` batches fetched back to back. Data time: the time inside
    ``next(iterator)`` per batch, everything the training process does for a batch (waiting,
    taking it from the workers' ring, freeing the previous one; in-process, building it). With
    workers it is measured in a second pass in which each fetch is followed by a simulated
    training step of ``step_s`` seconds (a sleep: on a GPU node the training process waits for
    the device), so the workers are ahead and what remains is the hand-off itself."""
    def run(pause: float) -> tuple:
        forget_environment(dataset.store.path)  # every configuration maps the store afresh
        loader = build_loader(dataset, batch_size=batch_size, num_workers=workers, seed=0, zero_copy=True)
        iterator = iter(loader)
        batch = next(iterator)  # worker start-up is not throughput
        if pause:
            time.sleep(4 * pause)  # let the workers fill their slots
        samples, fetched, inside = 0, 0, 0.0
        start = time.perf_counter()
        while fetched < batches:
            fetch = time.perf_counter()
            batch = next(iterator, None)
            inside += time.perf_counter() - fetch
            if batch is None:
                break
            samples, fetched = samples + batch["itm_labels"].shape[0], fetched + 1
            if pause:
                time.sleep(pause)
        wall = time.perf_counter() - start
        del batch, iterator, loader  # stops the workers before the next configuration starts
        return samples / wall, inside / max(fetched, 1) * 1e3

    rate, data_ms = run(0.0)
    if workers and step_s:
        _, data_ms = run(step_s)
    return rate, data_ms


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store"), parser.add_argument("--captions")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--step-ms", type=float,
                        help="the simulated training step after each fetch when the workers' data time is measured "
                             "(default: twice the in-process batch time of this run, else 20)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    workers_list = sorted(set(args.workers))
    with tempfile.TemporaryDirectory() as tmp:
        if args.store:
            store, captions = Path(args.store), Path(args.captions)
        else:
            store, captions = build_corpus(Path(tmp), args.images, args.regions)
        dataset = PretrainingDataset(store, captions, split=None, max_regions=args.regions)
        opened = FeatureStore(store)
        figures = {"images": len(opened), "regions_per_image": opened.metadata.region_count / len(opened),
                   "bytes_per_image": opened.disk_bytes() / len(opened), "batch_size": args.batch_size,
                   "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
                   "read_floor_samples_per_s": read_floor(dataset, args.batches, args.batch_size),
                   "samples_per_s": {}, "data_ms_per_batch": {}}
        step_ms = args.step_ms
        for workers in workers_list:
            if step_ms is None and workers > 0:
                in_process = figures["samples_per_s"].get(0)
                step_ms = 2 * args.batch_size / in_process * 1e3 if in_process else 20.0
            rate, data_ms = measure(dataset, workers, args.batches, args.batch_size, (step_ms or 0.0) / 1e3)
            figures["samples_per_s"][workers], figures["data_ms_per_batch"][workers] = rate, data_ms
        figures["simulated_step_ms"] = step_ms
        in_process = figures["samples_per_s"].get(0, float("nan"))
        figures["rate_vs_in_process"] = {w: rate / in_process for w, rate in figures["samples_per_s"].items()}
        figures["batch_ms_in_process"] = args.batch_size / in_process * 1e3
        regions = int(round(figures["regions_per_image"])) + 1
        figures["feature_handoff_ms"] = handoff_ms((args.batch_size, regions, opened.metadata.feature_size))
        figures["load_average_at_end"] = os.getloadavg()[0]
    floor = figures["read_floor_samples_per_s"]
    print(f"store: {figures['images']} images, {figures['regions_per_image']:.1f} regions each, "
          f"{figures['bytes_per_image'] / 1024:.1f} KiB on disk per image; {figures['cores']} cores, load average "
          f"{figures['load_average_at_start']:.2f} at the start, {figures['load_average_at_end']:.2f} at the end")
    print(f"bare read floor (read the batch's records, stack their bytes; in-process): {floor:,.0f} samples/s")
    print("| workers | samples/s | of the floor | of the in-process rate | training side's data time per batch |\n"
          "| --- | --- | --- | --- | --- |")
    for workers, rate in figures["samples_per_s"].items():
        print(f"| {workers} | {rate:,.0f} | {rate / floor:.2f}x | {figures['rate_vs_in_process'][workers]:.2f}x | "
              f"{figures['data_ms_per_batch'][workers]:.2f} ms |")
    if step_ms is not None:
        print(f"data time: inside next(iterator) per batch (the pretraining train loader, zero copy); with workers "
              f"measured with a simulated {step_ms:.1f} ms training step after each fetch, in-process the whole build")
    handoff = figures["feature_handoff_ms"]
    print(f"one batch's float16 features ({args.batch_size} x {regions} x {opened.metadata.feature_size}): "
          f"allocated and filled in private memory {handoff['private']:.1f} ms, in a new shared-memory segment "
          f"(what a worker's hand-off would cost without the ring) {handoff['shared']:.1f} ms; a whole batch "
          f"in-process takes {figures['batch_ms_in_process']:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

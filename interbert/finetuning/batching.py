"""Batches of the fine-tuning tasks and the loader that tracks its position for resume.

A sample is a dict; the collate functions pad it into the batch keys of docs/design.md plus
`labels`. Multiple-choice batches hold B×K×T text and B×K×R region tensors. Keys starting with
`count_` are per-batch counters (e.g. hard negatives that fell back to a random image): the
training loop reports them and does not pass them to the model.
"""
from __future__ import annotations

import numpy as np
import torch

from interbert.batch_contract import PAD_ID
from interbert.data.regions import pad_regions
from interbert.data.sampling import DistributedShardSampler

COUNT_PREFIX = "count_"


def pad_texts(texts: list, length: int | None = None) -> dict:
    """texts: list of (ids, segments) int arrays → input_ids, token_type_ids, text_mask (N×T)."""
    length = length or max(len(ids) for ids, _ in texts)
    input_ids = np.full((len(texts), length), PAD_ID, dtype=np.int64)
    segments = np.zeros((len(texts), length), dtype=np.int64)
    mask = np.zeros((len(texts), length), dtype=bool)
    for row, (ids, segs) in enumerate(texts):
        input_ids[row, :len(ids)], segments[row, :len(ids)], mask[row, :len(ids)] = ids, segs, True
    return {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(segments),
            "text_mask": torch.from_numpy(mask)}


def _counters(samples: list) -> dict:
    names = {key for sample in samples for key in sample if key.startswith(COUNT_PREFIX)}
    return {name: torch.tensor(sum(int(s.get(name, 0)) for s in samples)) for name in sorted(names)}


def collate_choices(samples: list) -> dict:
    """samples: {"texts": K (ids, segments), "images": K (features, locations) or one shared,
    "label": int} → B×K×... tensors and `labels` (B long)."""
    batch_size, choices = len(samples), len(samples[0]["texts"])
    texts = [text for s in samples for text in s["texts"]]
    images = [image for s in samples for image in (s["images"] if len(s["images"]) == choices
                                                   else s["images"] * choices)]
    batch = {**pad_texts(texts), **pad_regions(images)}
    batch = {key: value.view(batch_size, choices, *value.shape[1:]) for key, value in batch.items()}
    batch["labels"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    return {**batch, **_counters(samples)}


def collate_text(samples: list) -> dict:
    """samples: {"text": (ids, segments), "label": int or float} → N×T tensors and `labels`."""
    batch = pad_texts([s["text"] for s in samples])
    label = samples[0]["label"]
    dtype = torch.float32 if isinstance(label, float) else torch.long
    batch["labels"] = torch.tensor([s["label"] for s in samples], dtype=dtype)
    return {**batch, **_counters(samples)}


def split_counters(batch: dict) -> tuple[dict, dict]:
    """(model inputs, counters) of a collated batch."""
    counters = {k: int(v) for k, v in batch.items() if k.startswith(COUNT_PREFIX)}
    return {k: v for k, v in batch.items() if not k.startswith(COUNT_PREFIX)}, counters


class FinetuneLoader(torch.utils.data.DataLoader):
    """A DataLoader over a DistributedShardSampler that marks what the caller has received, so
    `state_dict()` is the exact resume position; `set_epoch` reshuffles (and tells the dataset)."""

    def __iter__(self):
        for batch in super().__iter__():
            self.sampler.mark_consumed(batch["labels"].shape[0])
            yield batch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self.set_epoch(self.sampler.epoch)


def build_loader(dataset, collate, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, num_workers: int = 0,
                 worker_init_fn=None) -> FinetuneLoader:
    sampler = DistributedShardSampler(len(dataset), rank=rank, world_size=world_size, seed=seed,
                                      shuffle=shuffle, drop_last=drop_last)
    return FinetuneLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=num_workers, drop_last=drop_last, worker_init_fn=worker_init_fn,
                          pin_memory=torch.cuda.is_available())


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample in one epoch: the same on resume, in any worker."""
    return np.random.Generator(np.random.PCG64([seed, epoch, index]))

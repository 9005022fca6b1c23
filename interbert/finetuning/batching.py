"""Batches of the fine-tuning tasks (their loader is the one of every run, `interbert.data.loading.loader`).

A sample is a dict; the collate functions pad it into the batch keys of docs/design.md plus
`labels`. Multiple-choice batches hold B×K×T text and B×K×R region tensors. Keys starting with
`count_` are per-batch counters (e.g. hard negatives that fell back to a random image): the
training loop reports them and does not pass them to the model.
"""
from __future__ import annotations

import numpy as np
import torch

from interbert.data.loading.padding import pad_regions, pad_texts

COUNT_PREFIX = "count_"


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


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one sample in one epoch: the same on resume, in any worker."""
    return np.random.Generator(np.random.PCG64([seed, epoch, index]))

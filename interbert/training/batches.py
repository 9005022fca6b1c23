"""Fetching training batches across epoch boundaries, shared by pretraining and fine-tuning."""
from __future__ import annotations

import torch


def fetch_across_epochs(loader, iterator, epoch: int):
    """The next batch of `loader` (which has `set_epoch`), starting a new epoch when one ends.

    Returns (batch, iterator, epoch) for the caller to keep. A DataLoader draws a seed from
    torch's global generator when it starts an epoch (at its first fetch); isolating every
    fetch keeps the dropout stream the same whether or not a run was resumed mid-epoch."""
    while True:
        if iterator is None:
            loader.set_epoch(epoch)
            iterator = iter(loader)
        try:
            with torch.random.fork_rng(devices=[]):
                return next(iterator), iterator, epoch
        except StopIteration:
            iterator = None
            epoch += 1

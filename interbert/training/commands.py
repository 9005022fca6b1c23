"""`interbert pretrain ...`: the pretraining entry point as a subcommand. The DeepSpeed launcher
runs `interbert/pretrain.py` instead."""
from __future__ import annotations


def register(subparsers) -> None:
    from interbert import pretrain
    from interbert.cli import register_entry_point

    register_entry_point(subparsers, "pretrain", pretrain, "pretrain with MSM, MRM and ITM in a DeepSpeed engine")

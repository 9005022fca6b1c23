"""`interbert finetune ...`: the fine-tuning entry point as a subcommand. The DeepSpeed launcher
runs `interbert/finetune.py` instead."""
from __future__ import annotations


def register(subparsers) -> None:
    from interbert import finetune
    from interbert.cli import register_entry_point

    register_entry_point(subparsers, "finetune", finetune, "fine-tune or evaluate on flickr30k, vcr or glue-NAME")

"""The `interbert` command: one entry point, subcommands registered by their owning modules.

Each module in COMMAND_MODULES defines `register(subparsers)`, which adds its subcommands and
sets `func` on each parser; `func(args)` returns the process exit status.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "interbert.modeling.commands",  # info, convert-release
    "interbert.data.commands",  # data synth, convert-tsv, convert-npz, captions, verify
    "interbert.evaluate",  # evaluate retrieval
    "interbert.finetuning.commands",  # finetune
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interbert", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The `interbert` command (also `python -m interbert`): one entry point, subcommands registered
by their owning modules.

Each module in COMMAND_MODULES defines `register(subparsers)`, which adds its subcommands and
sets `func` on each parser; `func(args)` returns the process exit status. The entry points in
ENTRY_POINTS (the scripts the DeepSpeed launcher also runs) are registered here, from their
`add_arguments` and `run_with_errors`, so that no package imports the scripts above it. Only the
module that owns the command being run is imported (so `interbert data ...` starts without
torch's model stack); `interbert --help` imports them all.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from interbert import __version__

# command name -> the module that registers it (for ENTRY_POINTS: the entry-point script itself)
COMMAND_MODULES = {
    "info": "interbert.modeling.commands",
    "convert-release": "interbert.modeling.commands",
    "data": "interbert.data.ingest.commands",  # synth, the converters, captions, verify, migrate, merge
    "evaluate": "interbert.evaluate",  # evaluate retrieval
    "finetune": "interbert.finetuning.command",
    "pretrain": "interbert.pretraining.command",
    "configs": "interbert.resources",
    "cluster-env": "interbert.cluster.commands",
    "launch": "interbert.cluster.launch",
}
# the commands whose module is an entry-point script: command name -> help
ENTRY_POINTS = {
    "finetune": "fine-tune or evaluate on flickr30k, vcr or glue-NAME",
    "pretrain": "pretrain with MSM, MRM and ITM in a DeepSpeed engine",
}


def register_entry_point(subparsers, name: str, module, help: str) -> None:
    """``interbert NAME``: a subcommand that runs an entry-point module (its ``add_arguments`` and
    ``run_with_errors``), as one process or one rank of a torchrun / mpirun job."""
    parser = subparsers.add_parser(name, help=help, description=module.__doc__.split("\n\n")[0])
    module.add_arguments(parser)
    parser.set_defaults(func=lambda args: module.run_with_errors(args, f"interbert {name}"))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: with only the owning module's commands when its first word names one."""
    parser = argparse.ArgumentParser(prog="interbert", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"interbert {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    first = (argv or [""])[0]
    commands = [first] if first in COMMAND_MODULES else list(COMMAND_MODULES)
    registered = set()
    for command in commands:
        name = COMMAND_MODULES[command]
        if command in ENTRY_POINTS:
            register_entry_point(subparsers, command, importlib.import_module(name), ENTRY_POINTS[command])
        elif name not in registered:
            importlib.import_module(name).register(subparsers)
            registered.add(name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_through", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra  # the arguments a pass-through command (launch) hands on unchanged
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

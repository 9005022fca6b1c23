"""The `interbert` command (also `python -m interbert`): one entry point, subcommands registered
by their owning modules.

Each module in COMMAND_MODULES defines `register(subparsers)`, which adds its subcommands and
sets `func` on each parser; `func(args)` returns the process exit status. Only the module that
owns the command being run is imported (so `interbert data ...` starts without torch's model
stack); `interbert --help` imports them all.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from interbert import __version__

# command name -> the module that registers it
COMMAND_MODULES = {
    "info": "interbert.modeling.commands",
    "convert-release": "interbert.modeling.commands",
    "data": "interbert.data.commands",  # synth, the converters, captions, verify, migrate, merge
    "evaluate": "interbert.evaluate",  # evaluate retrieval
    "finetune": "interbert.finetuning.commands",
    "pretrain": "interbert.training.commands",
    "configs": "interbert.resources",
    "cluster-env": "interbert.cluster.commands",
    "launch": "interbert.cluster.launch",
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
    modules = [COMMAND_MODULES[first]] if first in COMMAND_MODULES else list(dict.fromkeys(COMMAND_MODULES.values()))
    for name in modules:
        importlib.import_module(name).register(subparsers)
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

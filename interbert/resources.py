"""The DeepSpeed configs and hostfiles the project ships (``ds_configs/``, ``hostfiles/``), found
in a source checkout or, after ``pip install``, under ``<prefix>/share/interbert/``.

``interbert configs`` lists them with their paths; ``interbert configs --path NAME`` prints one
(for ``deepspeed --hostfile "$(interbert configs --path v100x8)" ...``). A ``--deepspeed_config``
that does not exist as given but names a shipped config is read from there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

KINDS = ("ds_configs", "hostfiles")


def shipped_dirs(kind: str) -> list:
    """Where ``kind`` lives: the source checkout first, then the installed package's share folder."""
    return [Path(__file__).resolve().parents[1] / kind, Path(sys.prefix) / "share" / "interbert" / kind]


def shipped(kind: str) -> dict:
    """File name → path of every shipped file of ``kind`` (the first folder that has it wins)."""
    found: dict = {}
    for folder in shipped_dirs(kind):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    found.setdefault(path.name, path)
    return found


def find_shipped(name: str, kind: str | None = None) -> Path | None:
    """The shipped file called ``name`` (a bare name, or ``ds_configs/NAME``), or None."""
    path = Path(name)
    kinds = [kind] if kind else ([path.parent.name] if path.parent.name in KINDS else list(KINDS))
    for each in kinds:
        found = shipped(each).get(path.name)
        if found is not None:
            return found
    return None


def run_configs(args: argparse.Namespace) -> int:
    if args.path:
        found = find_shipped(args.path)
        if found is None:
            names = ", ".join(name for kind in KINDS for name in shipped(kind))
            print(f"interbert configs: error: no shipped config or hostfile called {args.path!r}; shipped: {names}",
                  file=sys.stderr)
            return 2
        print(found)
        return 0
    for kind in KINDS:
        print(f"{kind}:")
        for name, path in shipped(kind).items():
            print(f"  {name:34} {path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("configs", help="the shipped DeepSpeed configs and hostfiles, with their paths",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--path", metavar="NAME", help="print only the path of this config or hostfile")
    parser.set_defaults(func=run_configs)

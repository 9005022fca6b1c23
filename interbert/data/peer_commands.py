"""``interbert data convert-lmdb`` and ``convert-vinvl``: the stores other projects wrote."""
from __future__ import annotations


def register_peer_converters(commands) -> None:
    """Add the peer converters' subcommands to ``interbert data``."""

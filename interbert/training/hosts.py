"""Which host of the job this rank runs on, as the launcher named it.

DeepSpeed's per-node launcher (`python -m deepspeed.launcher.launch`, the parent of every rank it
starts) carries the hostfile's hosts (`--world_info`, base64 JSON) and this node's index
(`--node_rank`). From them:
- `host_label()`: the host as the hostfile names it ("worker-2", "127.0.0.2"), for messages that
  must say which host a rank runs on; the machine's hostname where no launcher says otherwise;
- `check_launch_host()`: the host the launcher meant is this machine. DeepSpeed runs a hostfile
  of one host on the machine the command was typed on, whatever its name: from a login node,
  `deepspeed --hostfile hostfiles/v100x8` would train on the login node.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from interbert.errors import UsageError

LOCAL_NAMES = ("localhost", "localhost.localdomain", "")


@dataclass(frozen=True)
class LaunchHosts:
    hosts: tuple[str, ...]  # in hostfile order
    node_rank: int
    local: bool = True  # started by the `deepspeed` command on this machine, not over ssh (pdsh)

    @property
    def this_host(self) -> str:
        return self.hosts[self.node_rank]


def parse_launch_arguments(arguments: list[str]) -> LaunchHosts | None:
    """The hosts and node rank from a `deepspeed.launcher.launch` command line; None if it is not one."""
    if "deepspeed.launcher.launch" not in arguments:
        return None
    values = dict(a[2:].split("=", 1) for a in arguments if a.startswith("--") and "=" in a)
    try:
        world = json.loads(base64.urlsafe_b64decode(values["world_info"]))
        return LaunchHosts(tuple(world), int(values.get("node_rank", 0)))
    except (KeyError, ValueError, TypeError):
        return None


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


@lru_cache(maxsize=1)
def launch_hosts() -> LaunchHosts | None:
    """What this rank's parent (DeepSpeed's per-node launcher) says; None under another launcher.
    `local`: the launcher's parent is the `deepspeed` command itself (over pdsh it is the remote
    shell that ssh started)."""
    try:
        launcher = os.getppid()
        found = parse_launch_arguments(_cmdline(launcher))
        if found is None:
            return None
        parent = int(Path(f"/proc/{launcher}/stat").read_text().rsplit(")", 1)[1].split()[1])
        runner = any(word.rsplit("/", 1)[-1] == "deepspeed" or "deepspeed.launcher.runner" in word
                     for word in _cmdline(parent)[:3])
    except (OSError, ValueError, IndexError):
        return None
    return LaunchHosts(found.hosts, found.node_rank, local=runner)


def host_label() -> str:
    launched = launch_hosts()
    if launched is None or launched.this_host in LOCAL_NAMES:
        return socket.gethostname()
    return launched.this_host


def is_this_machine(host: str) -> bool:
    """Whether `host` names this machine: a loopback name, or an address this machine holds."""
    if host in LOCAL_NAMES or host == socket.gethostname():
        return True
    try:
        # an IP address string (the (int, bytes) address is of a Python built without IPv6)
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
                     if isinstance(info[4][0], str)}
    except OSError:
        return False
    for address in addresses:
        if ipaddress.ip_address(address.split("%")[0]).is_loopback:
            return True
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, 0))  # only an address of this machine can be bound
                return True
            except OSError:
                continue
    return False


def check_launch_host() -> None:
    """A user error when DeepSpeed's launcher started this rank on another machine than the
    hostfile's host (a one-host hostfile launched from elsewhere)."""
    launched = launch_hosts()
    # Over ssh the rank runs where ssh took it (a name may be an ssh alias no resolver knows).
    if launched is None or not launched.local or is_this_machine(launched.this_host):
        return
    raise UsageError(
        f"the hostfile names {launched.this_host}, but DeepSpeed's launcher started this rank on "
        f"{socket.gethostname()}: with one host in the hostfile it runs locally whatever the name. Run the "
        f"command on {launched.this_host} itself, or from here add --force_multi so it goes over ssh "
        "(`interbert launch` checks a hostfile first; see 'Several hosts' in docs/training.md)")

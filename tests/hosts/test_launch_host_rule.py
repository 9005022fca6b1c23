"""The rank-side rule against training on the wrong machine: only a launch the `deepspeed` command
made locally (a one-host hostfile) is checked against the host it names; a rank that ssh started
runs where ssh took it, whatever its resolver makes of the name (ssh aliases)."""
from __future__ import annotations

import base64
import json

import pytest

from interbert.errors import UsageError
from interbert.training import hosts
from interbert.training.hosts import LaunchHosts, check_launch_host, parse_launch_arguments

ELSEWHERE = "198.51.100.7"  # a documentation address: not this machine, never contacted


def test_the_launchers_command_line_names_the_hosts_and_this_node():
    world = base64.urlsafe_b64encode(json.dumps({"node-a": [0, 1], "node-b": [0, 1]}).encode()).decode()
    found = parse_launch_arguments(["python", "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world}",
                                    "--node_rank=1", "--master_addr=node-a", "train.py"])
    assert found.hosts == ("node-a", "node-b") and found.this_host == "node-b"
    assert parse_launch_arguments(["python", "train.py"]) is None


@pytest.mark.parametrize("local, refused", [(True, True), (False, False)])
def test_only_a_local_launch_is_held_to_the_hostfiles_name(monkeypatch, local, refused):
    monkeypatch.setattr(hosts, "launch_hosts", lambda: LaunchHosts((ELSEWHERE,), 0, local=local))
    if refused:
        with pytest.raises(UsageError, match=f"the hostfile names {ELSEWHERE}, but"):
            check_launch_host()
    else:
        check_launch_host()


def test_loopback_names_are_this_machine():
    assert hosts.is_this_machine("localhost") and hosts.is_this_machine("127.0.0.2")
    assert not hosts.is_this_machine(ELSEWHERE)

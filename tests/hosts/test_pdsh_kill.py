"""`interbert launch` narrows the kill command of DeepSpeed's pdsh runner (run on every host when the job
is stopped) from every `<python> -u -m deepspeed.launcher.launch` there to this job's own launchers."""
from __future__ import annotations

import sys

import pytest
from deepspeed.launcher.multinode_runner import PDSHRunner
from deepspeed.launcher.runner import parse_args

from interbert.cluster.pdsh_kill import job_kill_command, scope_pdsh_kill


def _runner_command(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    args = parse_args(["--hostfile", str(hostfile), "--master_addr", "node-a", "--master_port", "29613",
                       "interbert/pretrain.py", "--preset", "tiny"])
    runner = PDSHRunner(args, "eyJub2RlLWEiOiBbMF19")
    return runner.get_cmd({"PATH": "/usr/bin"}, {"node-a": [0], "node-b": [0]})


def test_the_shipped_kill_command_matches_every_launcher_of_this_python(tmp_path):
    """What is narrowed: DeepSpeed's own pattern names no job."""
    _, kill, _ = _runner_command(tmp_path)
    assert kill[-2] == "pkill -f "  # its pattern also loses its last letter (a slice one too long)
    assert kill[-1].startswith(f"{sys.executable}\\ -u\\ -m\\ deepspeed.launcher.launc")
    assert "master_port" not in kill[-1] and "node_rank" not in kill[-1]


def test_the_scoped_kill_command_names_this_jobs_node_rank_address_and_port(tmp_path, monkeypatch):
    monkeypatch.setattr(PDSHRunner, "get_cmd", PDSHRunner.get_cmd)  # undone after the test
    assert scope_pdsh_kill() is True
    command, kill, _ = _runner_command(tmp_path)
    assert kill[:2] == ["pdsh", "-S"] and "-w" in kill  # the same hosts, through pdsh as before
    assert kill[kill.index("pkill"):] == ["pkill", "-f", "--",
                                          "--node_rank=%n\\ --master_addr=node-a\\ --master_port=29613"]
    # the launch command itself is unchanged, and carries those three flags one after another
    launched = " ".join(command)
    assert "-m deepspeed.launcher.launch" in launched
    assert "--node_rank=%n --master_addr=node-a --master_port=29613" in launched


@pytest.mark.parametrize("command", [["python", "script.py"], ["python", "-m", "deepspeed.launcher.launch", "--x"]])
def test_a_command_of_another_shape_keeps_deepspeeds_kill_command(command):
    assert job_kill_command(command, ["pdsh", "pkill -f ", "pattern"]) is None

"""Before and around DeepSpeed's launcher: `interbert cluster-env` writes what remote hosts need in
the format DeepSpeed's runner reads; `interbert launch` stops a bad hostfile with one line (an
unreachable host, a host without the code, a port in use, one host that is not this machine); a
rank that DeepSpeed started on another machine than its hostfile names refuses to train."""
from __future__ import annotations

import socket
import subprocess

import pytest

from tests.helpers.ds_config import write_ds_config
from tests.helpers.training_runs import BIN, REPO, launch_deepspeed, pretrain_args, subprocess_env

pytestmark = pytest.mark.slow
NOT_THIS_MACHINE = "198.51.100.7"  # a documentation address (TEST-NET-2): never contacted, only not ours


def interbert(*args: str, env=None, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "interbert"), *args], cwd=cwd, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def one_line_error(result: subprocess.CompletedProcess, prog: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    return lines[0]


def test_cluster_env_writes_what_deepspeeds_runner_reads(tmp_path):
    target = tmp_path / "env"
    result = interbert("cluster-env", "--master-addr", "127.0.0.1", "--master-port", "29999", "--write",
                       str(target))
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in target.read_text().splitlines())  # the runner's own parsing
    assert values["PATH"].split(":")[0] == str(BIN)
    assert values["DS_ACCELERATOR"] == "cpu" and values["OMP_NUM_THREADS"] == "1"
    assert values["MASTER_ADDR"] == "127.0.0.1" and values["MASTER_PORT"] == "29999"
    assert values["GLOO_SOCKET_IFNAME"] == values["NCCL_SOCKET_IFNAME"] == "lo"

    from deepspeed.launcher.multinode_runner import PDSHRunner

    class Args:  # what the runner needs to build its command
        user_args, user_script, launcher_args, venv_script, ssh_port = [], "x.py", "", None, None
        no_python = module = no_local_rank = save_pid = enable_each_rank_log = False
        master_addr, master_port = "127.0.0.1", 29999

    runner = PDSHRunner(Args(), "e30=")
    for line in target.read_text().splitlines():
        key, value = line.split("=", 1)
        runner.add_export(key, value)
    command = " ".join(runner.get_cmd({}, {"127.0.0.1": [0]})[0])
    assert f"export PATH={values['PATH']};" in command and "export GLOO_SOCKET_IFNAME=lo;" in command


def test_cluster_env_never_replaces_a_file_without_the_flag(tmp_path):
    target = tmp_path / ".deepspeed_env"
    target.write_text("MINE=1\n")
    line = one_line_error(interbert("cluster-env", "--write", str(target)), "interbert cluster-env")
    assert str(target) in line and "--overwrite" in line
    assert target.read_text() == "MINE=1\n"
    assert interbert("cluster-env", "--write", str(target), "--overwrite").returncode == 0
    assert target.read_text().startswith("PATH=")


def _launch(hosts, *deepspeed_args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return interbert("launch", *deepspeed_args, env=hosts.env(subprocess_env()), cwd=cwd)


def test_launch_names_a_host_it_cannot_reach(two_hosts, tmp_path):
    with socket.socket() as closed:  # a port nothing listens on: the host's sshd "is down"
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = _launch(two_hosts, "--hostfile", str(two_hosts.hostfile()), "--ssh_port", str(port),
                     "--master_addr", "127.0.0.1", "interbert/pretrain.py")
    line = one_line_error(result, "interbert launch")
    assert "cannot reach host 127.0.0.1 over ssh" in line and "Connection refused" in line


def test_launch_names_a_host_without_the_code(two_hosts, corpus, tmp_path):
    if not two_hosts.node_local_isolated:
        pytest.skip("no mount namespace here: a folder only one host sees cannot be made")
    checkout = two_hosts.node_local / "checkout"  # the second host does not see it
    checkout.mkdir()
    (checkout / "interbert").symlink_to(REPO / "interbert")
    try:
        result = _launch(two_hosts, "--hostfile", str(two_hosts.hostfile()), "--master_addr", "127.0.0.1",
                         "interbert/pretrain.py", "--features", str(corpus / "features"), cwd=checkout)
    finally:
        (checkout / "interbert").unlink()
        checkout.rmdir()
    line = one_line_error(result, "interbert launch")
    assert f"host 127.0.0.2 has no folder {checkout}" in line


def test_launch_names_inputs_a_host_does_not_see(two_hosts, tmp_path):
    result = _launch(two_hosts, "--hostfile", str(two_hosts.hostfile()), "--master_addr", "127.0.0.1",
                     "interbert/pretrain.py", "--captions", str(tmp_path / "missing.jsonl"))
    line = one_line_error(result, "interbert launch")
    assert f"host 127.0.0.1 does not see {tmp_path / 'missing.jsonl'}" in line


def test_launch_names_a_master_port_in_use(two_hosts):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _launch(two_hosts, "--hostfile", str(two_hosts.hostfile()), "--master_addr", "127.0.0.1",
                         "--master_port", str(port), "interbert/pretrain.py")
    line = one_line_error(result, "interbert launch")
    assert f"port {port} is in use on 127.0.0.1" in line


def test_launch_refuses_a_one_host_hostfile_for_another_machine(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{NOT_THIS_MACHINE} slots=8\n")
    line = one_line_error(interbert("launch", "--hostfile", str(hostfile), "interbert/pretrain.py"),
                          "interbert launch")
    assert f"names one host, {NOT_THIS_MACHINE}, which is not this machine" in line and "--force_multi" in line


def test_a_rank_started_on_another_machine_than_its_hostfile_names_refuses(corpus, tmp_path):
    """DeepSpeed's runner runs a one-host hostfile locally whatever its name (typed on a login node,
    it would train there): every rank stops with one line instead."""
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{NOT_THIS_MACHINE} slots=2\n")
    config = write_ds_config(tmp_path / "ds.json")
    result = launch_deepspeed(pretrain_args(corpus, config, tmp_path / "run", "--max-steps", "1"),
                              hostfile=str(hostfile))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "interbert/pretrain.py: error:" in line]
    assert errors, result.stderr[-3000:]  # the first rank to stop ends the others (DeepSpeed's launch)
    assert f"the hostfile names {NOT_THIS_MACHINE}, but DeepSpeed's launcher started this rank on" in errors[0]
    assert "Traceback" not in result.stderr


def test_the_shipped_v100x8_hostfile_launches_on_this_machine_without_ssh():
    """The mission's command on the node itself: one host that is this machine needs no ssh, so
    `interbert launch` hands DeepSpeed --no_ssh_check and a loopback master address."""
    from interbert.cluster.launch import preflight

    argv = ["--hostfile", str(REPO / "hostfiles" / "v100x8"), "interbert/pretrain.py", "--preset", "paper-base"]
    assert preflight(argv) == ["--no_ssh_check", "--master_addr", "127.0.0.1", *argv]
    given = ["--hostfile", str(REPO / "hostfiles" / "v100x8"), "--no_ssh_check", "--master_addr", "10.0.0.1",
             "interbert/pretrain.py"]
    assert preflight(given) == given


def test_deepspeed_with_a_master_port_in_use_stops_with_one_line(corpus, tmp_path):
    """Called directly (no `interbert launch` check), rank 0 names the busy rendezvous port."""
    config = write_ds_config(tmp_path / "ds.json")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = [str(BIN / "deepspeed"), "--hostfile", "hostfiles/localhost", "--no_ssh_check", "--master_addr",
                   "127.0.0.1", "--master_port", str(port),
                   *pretrain_args(corpus, config, tmp_path / "run", "--max-steps", "1")]
        result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"interbert/pretrain.py: error: the rendezvous port 127.0.0.1:{port} is in use" in result.stderr
    assert "Traceback" not in result.stderr

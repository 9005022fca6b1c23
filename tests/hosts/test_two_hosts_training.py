"""Pretraining over two hosts (127.0.0.1 and 127.0.0.2, one rank each) with DeepSpeed's real
multi-node runner over pdsh: a run, its checkpoints and export; preemption by SIGTERM to the
`deepspeed` command, to pdsh or to one host's launcher, and the exact resume after it; a rank lost
on the second host; resuming the two-host checkpoint on one host."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interbert.modeling import InterBertForPretraining
from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import BIN, REPO, explain, launch_deepspeed, pretrain_args, subprocess_env
from tests.helpers.two_host_jobs import (
    end_job,
    launcher_pid,
    processes,
    rank_output,
    rank_pid,
    run,
    start,
    wait_for,
    wait_for_steps,
)

pytestmark = pytest.mark.slow
REFERENCE_STEPS = 30


def losses(output, steps=None) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_train_log(output) if steps is None or r["step"] in steps}


@pytest.fixture(scope="module")
def reference(two_hosts, corpus, tmp_path_factory):
    """An uninterrupted two-host run: the losses every resumed run must reproduce."""
    tmp_path = tmp_path_factory.mktemp("reference")
    output = tmp_path / "run"
    status, log = run(two_hosts, tmp_path, corpus, output, "--max-steps", str(REFERENCE_STEPS),
                      "--save-every", "20", "--keep-last", "0")
    assert status == 0, log[-4000:]
    return output, log


def test_two_hosts_train_checkpoint_and_export(reference):
    output, log = reference
    assert "2 rank(s) via deepspeed/torchrun" in log
    assert "127.0.0.1: " in log and "127.0.0.2: " in log  # pdsh prefixes each host's lines
    assert [r["step"] for r in read_train_log(output)] == list(range(1, REFERENCE_STEPS + 1))
    tag = output / "checkpoints" / f"global_step{REFERENCE_STEPS}"
    assert sorted(p.name for p in tag.glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    model = InterBertForPretraining.from_pretrained(output / "model")
    assert model.config.hidden_size == 128


def _sigterm(target: str, process, output) -> None:
    if target in ("deepspeed", "interbert launch"):
        os.kill(process.pid, signal.SIGTERM)  # what a scheduler sends the job's command at preemption
    elif target == "pdsh":
        pdsh = [pid for pid, words in _all_processes().items() if words[:2] == ["pdsh", "-S"] and str(output) in words]
        assert len(pdsh) == 1, pdsh
        os.kill(pdsh[0], signal.SIGTERM)
    else:
        os.kill(launcher_pid(output, node_rank=1), signal.SIGTERM)  # one host's launcher


def _all_processes() -> dict[int, list[str]]:
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            found[int(entry.name)] = [w.decode(errors="replace") for w in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
    return found


def _bystander() -> subprocess.Popen:
    """A process whose command line is what DeepSpeed's pdsh runner, stopped, pkills on every host of its
    job ('<python> -u -m deepspeed.launcher.launch'), as another job's launcher on those hosts would be."""
    pattern = f"{BIN / 'python'} -u -m deepspeed.launcher.launch"
    process = subprocess.Popen(["bash", "-c", f'exec -a "{pattern} --bystander" sleep 600'], start_new_session=True)
    matched = lambda: str(process.pid) in subprocess.run(  # noqa: E731
        ["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    wait_for(matched, 10, "the bystander's command line did not match DeepSpeed's kill pattern")
    return process


@pytest.mark.parametrize("target", ["deepspeed", "interbert launch", "pdsh", "one host's launcher"])
def test_preemption_saves_once_on_every_host_and_resumes_exactly(two_hosts, corpus, reference, tmp_path, target):
    reference_output, _ = reference
    output = tmp_path / "run"
    bystander = _bystander() if target == "interbert launch" else None
    try:
        process = start(two_hosts, tmp_path, corpus, output, "--max-steps", "100000", "--save-every", "0",
                        "--num-workers", "1", entry="interbert" if target == "interbert launch" else "deepspeed")
        try:
            wait_for_steps(process, output, 3)
            _sigterm(target, process, output)
            wait_for(lambda: not processes(output), 60, "the ranks on both hosts did not exit")
        finally:
            end_job(process, output)
        # `interbert launch` stops this job's launchers only: another DeepSpeed job on its hosts runs on
        assert bystander is None or bystander.poll() is None, "stopping the job killed another job's launcher"
    finally:
        if bystander is not None:
            bystander.kill()
            bystander.wait()
    said = rank_output(output, process.log_path.read_text())
    stops = [line for line in said.splitlines() if "stop requested (" in line]
    assert len(stops) == 1, said[-4000:]
    checkpoints = output / "checkpoints"
    saved = [p.name for p in checkpoints.glob("global_step*")]
    assert len(saved) == 1, saved  # saved once
    step = int((checkpoints / "latest").read_text().strip().removeprefix("global_step"))
    assert saved == [f"global_step{step}"] and read_train_log(output)[-1]["step"] == step
    assert sorted(p.name for p in (checkpoints / saved[0]).glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    if target != "deepspeed":
        return  # the resume below is the same for every way in
    assert step + 2 <= REFERENCE_STEPS, f"stopped at {step}: the reference run is too short to compare"
    status, log = run(two_hosts, tmp_path, corpus, output, "--max-steps", str(step + 2), "--resume",
                      log_name="resume.log")
    assert status == 0, log[-4000:]
    resumed = range(step + 1, step + 3)
    assert losses(output, resumed) == losses(reference_output, resumed)


def test_a_rank_killed_on_the_second_host_ends_the_job_naming_it(two_hosts, corpus, tmp_path):
    output = tmp_path / "run"
    process = start(two_hosts, tmp_path, corpus, output, "--max-steps", "100000", "--save-every", "0",
                    "--rank-timeout", "30")
    try:
        wait_for_steps(process, output, 3)
        lost = rank_pid(output, node_rank=1)
        os.kill(lost, signal.SIGKILL)
        process.wait(timeout=30)  # within the rank timeout
        wait_for(lambda: not processes(output), 20, "processes of the job were left running")
    finally:
        end_job(process, output)
    log = process.log_path.read_text()
    assert process.returncode != 0
    assert f"rank 1 (127.0.0.2 pid {lost}) is gone" in log, log[-4000:]
    survivor = [line for line in log.splitlines() if line.startswith("127.0.0.1: ")]
    assert not [line for line in survivor if "Traceback" in line], log[-4000:]  # the line, not gloo's traceback


def test_two_host_checkpoint_resumes_on_one_host_with_two_ranks_and_on_one_rank(reference, corpus, tmp_path):
    """2 hosts x 1 rank -> 1 host x 2 ranks (the same world: exact), and -> 1 rank (universal)."""
    reference_output, _ = reference
    for name, world in (("one-host", 2), ("one-rank", 1)):
        output = tmp_path / name
        shutil.copytree(reference_output / "checkpoints", output / "checkpoints")
        (output / "checkpoints" / "latest").write_text("global_step20")
        config = write_ds_config(tmp_path / f"ds-{world}.json", micro=4 * (2 // world), world=world)
        args = pretrain_args(corpus, config, output, "--max-steps", "22", "--resume")
        if world == 2:
            result = launch_deepspeed(args)
        else:
            result = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                                    text=True, timeout=240)
        assert result.returncode == 0, explain(result)
        resumed = losses(output, range(21, 23))
        assert sorted(resumed) == [21, 22]
        if world == 2:
            assert resumed == losses(reference_output, range(21, 23))
        else:
            assert "loaded through DeepSpeed's universal checkpoint" in result.stdout
            for step, loss in resumed.items():  # the same global batch; dropout streams restart
                assert torch.isfinite(torch.tensor(loss)) and abs(loss - losses(reference_output)[step]) < 0.5

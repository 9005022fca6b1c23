"""Watchdogs with the real launcher and 2 CPU ranks: a killed `deepspeed` command no longer
orphans ranks that train on (they save and exit), and a stopped rank ends the job within the
configured time, named, instead of hanging it for DeepSpeed's 30 minutes."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import BIN, REPO, free_port, kill_job, pretrain_args, subprocess_env, wait_for

pytestmark = pytest.mark.slow


def start_job(corpus, tmp_path, *extra):
    config = write_ds_config(tmp_path / "ds.json", micro=4)
    output = tmp_path / "run"
    command = [str(BIN / "deepspeed"), "--hostfile", "hostfiles/localhost", "--no_ssh_check",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               *pretrain_args(corpus, config, output, "--max-steps", "100000", "--save-every", "0", *extra)]
    log = open(tmp_path / "job.log", "w")
    process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    return process, output, log


def rank_pids(output: Path) -> dict[int, int]:
    """local rank -> pid of the job's rank processes (found by their --output-dir)."""
    ranks = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in command]
        if "interbert/pretrain.py" in words and str(output) in words:
            local = next((w.split("=", 1)[1] for w in words if w.startswith("--local_rank=")), None)
            if local is not None:
                ranks[int(local)] = int(entry.name)
    return ranks


def finish(process, output, log) -> None:
    log.close()
    kill_job(process, rank_pids(output).values())


def test_ranks_of_a_killed_launcher_save_and_exit(corpus, tmp_path):
    process, output, log = start_job(corpus, tmp_path)
    try:
        wait_for(lambda: (output / "train_log.jsonl").is_file() and len(read_train_log(output)) >= 3, 180,
                 "no training steps")
        ranks = rank_pids(output)
        assert sorted(ranks) == [0, 1]
        process.send_signal(signal.SIGTERM)  # the deepspeed command only, as `kill -TERM <its pid>`
        process.wait(timeout=30)
        wait_for(lambda: not rank_pids(output), 90, "the ranks did not exit")
    finally:
        finish(process, output, log)
    text = (tmp_path / "job.log").read_text()
    # Rank 0 prints the stop; whichever rank noticed the launcher's end first requested it.
    stops = [line for line in text.splitlines() if "stop requested (" in line]
    assert len(stops) == 1, text[-3000:]
    assert "(the launcher, pid" in stops[0] or "(another rank)" in stops[0], stops[0]
    latest = (output / "checkpoints" / "latest").read_text().strip()
    assert read_train_log(output)[-1]["step"] == int(latest.removeprefix("global_step"))


def test_a_stopped_rank_ends_the_job_with_its_name(corpus, tmp_path):
    process, output, log = start_job(corpus, tmp_path, "--rank-timeout", "5")
    try:
        wait_for(lambda: (output / "train_log.jsonl").is_file() and len(read_train_log(output)) >= 3, 180,
                 "no training steps")
        stopped = rank_pids(output)[1]
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        process.wait(timeout=120)
        took = time.monotonic() - started
    finally:
        finish(process, output, log)
    text = (tmp_path / "job.log").read_text()
    assert process.returncode != 0
    assert f"rank 1 ({os.uname().nodename} pid {stopped}) has not answered for" in text, text[-3000:]
    assert "rank 1 runs on this machine and was ended too (SIGKILL" in text
    # the rank timeout (5 s) and a beat, not DeepSpeed's launcher's 30 s wait on a process that ignores SIGTERM
    assert took < 25
    port = process.args[process.args.index("--master_port") + 1]
    assert list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*")) == []

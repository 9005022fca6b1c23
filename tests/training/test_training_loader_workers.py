"""A pretraining run whose batches come from loader workers through the zero-copy hand-off (the
loop uses each batch where the worker built it, in the ring, until it fetches the next) logs the
same per-step losses as a run that builds its batches in-process, across an epoch boundary (new
workers, every ring slot reused); a worker killed mid-run stops it with one line naming it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import logged_lines, read_train_log
from tests.helpers.training_runs import PRETRAIN, REPO, VOCAB, explain, subprocess_env, wait_for

pytestmark = pytest.mark.slow
# 160 training captions in micro-batches of 16, 2 per step: 5 steps an epoch; 2 workers x 4 slots
# hold 8 of an epoch's 10 batches, so every slot is reused, and step 6 starts epoch 1.
STEPS = 7


def pretrain(corpus, output, workers: int) -> subprocess.CompletedProcess:
    config = write_ds_config(output.parent / f"{output.name}.json", micro=16, accumulation=2, world=1)
    command = [sys.executable, PRETRAIN, "--deepspeed_config", str(config), "--preset", "tiny",
               "--features", str(corpus / "features"), "--captions", str(corpus / "captions.jsonl"),
               "--output-dir", str(output), "--max-steps", str(STEPS), "--num-workers", str(workers),
               "--log-every", "1", "--validation-split", "", "--eval-images", "0", "--save-every", "0",
               "--vocab", VOCAB]
    return subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_zero_copy_workers_train_exactly_as_the_in_process_loader(corpus, tmp_path):
    runs = {}
    for workers in (0, 2):
        result = pretrain(corpus, tmp_path / f"workers{workers}", workers)
        assert result.returncode == 0, explain(result)
        runs[workers] = read_train_log(tmp_path / f"workers{workers}")
    assert [r["step"] for r in runs[2]] == list(range(1, STEPS + 1)) and runs[2][-1]["epoch"] == 1
    for got, want in zip(runs[2], runs[0]):
        for key in ("loss", "loss_msm", "loss_mrm", "loss_itm", "grad_norm"):
            assert got[key] == want[key], (got["step"], key, got[key], want[key])


def test_a_killed_loader_worker_stops_the_run_with_one_line_naming_it(corpus, tmp_path):
    config = write_ds_config(tmp_path / "ds.json", micro=4, world=1)  # 40 micro-batches an epoch
    output = tmp_path / "run"
    command = [sys.executable, PRETRAIN, "--deepspeed_config", str(config), "--preset", "tiny",
               "--features", str(corpus / "features"), "--captions", str(corpus / "captions.jsonl"),
               "--output-dir", str(output), "--max-steps", "100000", "--num-workers", "2", "--log-every", "1",
               "--validation-split", "", "--eval-images", "0", "--save-every", "0", "--vocab", VOCAB]
    console = open(tmp_path / "console.log", "w")  # a run's console lines could fill a pipe nobody reads yet
    process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=console, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_for(lambda: logged_lines(output) >= 2 or process.poll() is not None, 180, "two steps logged")
        workers = []
        wait_for(lambda: bool(workers.extend(children(process.pid)) or workers), 30, "the loader's workers")
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        console.close()
    assert process.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("interbert/pretrain.py: error: data-loader worker ")
    assert f"(pid {workers[0]}) was killed by SIGKILL" in line


def children(pid: int) -> list:
    """The live child processes of ``pid`` (the loader's workers: the run starts no other)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []

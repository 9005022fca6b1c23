"""Launching through mpirun, and stopping a run with SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import logged_lines, read_train_log
from tests.helpers.training_runs import BIN, PRETRAIN, REPO, explain, free_port, pretrain_args, subprocess_env

pytestmark = pytest.mark.slow


def test_mpirun_with_master_addr_trains(corpus, tmp_path):
    config = write_ds_config(tmp_path / "ds.json", micro=4)
    output = tmp_path / "run"
    port = free_port()
    command = [str(BIN / "mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", "2",
               "-x", "MASTER_ADDR", "-x", "MASTER_PORT", "-x", "PATH", "-x", "DS_ACCELERATOR",
               "-x", "OMP_NUM_THREADS", sys.executable,
               *pretrain_args(corpus, config, output, "--max-steps", "2", "--eval-images", "0",
                              "--validation-split", "")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240,
                            env=subprocess_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
    assert result.returncode == 0, explain(result)
    assert "2 rank(s) via mpirun" in result.stdout
    assert [r["step"] for r in read_train_log(output)] == [1, 2]
    run_config = json.loads((output / "run_config.json").read_text())
    assert run_config["world_size"] == 2 and run_config["launcher"] == "mpirun"
    assert (output / "checkpoints" / "global_step2").is_dir()


def _wait_for_steps(output, count: int, process, deadline: float) -> None:
    while time.monotonic() < deadline:
        if logged_lines(output) >= count:
            return
        if process.poll() is not None and process.returncode != 0:
            raise AssertionError(f"the run ended early: {process.communicate()}")
        time.sleep(0.5)
    raise AssertionError("the run did not reach its first steps in time")


def _wait_for_group_exit(process, deadline: float) -> None:
    group = process.pid
    while time.monotonic() < deadline:
        process.poll()  # reap the launcher, or it lingers as a zombie in the group
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(group, signal.SIGKILL)
    raise AssertionError("the ranks did not exit within 60 s of SIGTERM")


def test_sigterm_mid_run_saves_a_loadable_checkpoint_and_exits(corpus, tmp_path):
    config = write_ds_config(tmp_path / "ds.json", micro=4)
    output = tmp_path / "run"
    command = [str(BIN / "deepspeed"), "--hostfile", "hostfiles/localhost", "--no_ssh_check",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               *pretrain_args(corpus, config, output, "--max-steps", "100000", "--save-every", "0",
                              "--num-workers", "1")]
    logs = open(tmp_path / "launcher.log", "w")
    # Its own process group, as a terminal's foreground job: SIGTERM reaches the launcher,
    # the ranks and their DataLoader workers alike.
    process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=logs,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_steps(output, 3, process, time.monotonic() + 180)
        os.killpg(process.pid, signal.SIGTERM)
        _wait_for_group_exit(process, time.monotonic() + 60)
    finally:
        logs.close()
    text = (tmp_path / "launcher.log").read_text()
    assert "stop requested (SIGTERM)" in text, text[-3000:]
    latest = (output / "checkpoints" / "latest").read_text().strip()
    step = int(latest.removeprefix("global_step"))
    assert step >= 3 and read_train_log(output)[-1]["step"] == step

    # Loadable: the model states and both ZeRO partitions rebuild the full model, and the
    # client state says where to resume.
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from interbert.config import InterBertConfig
    from interbert.modeling import InterBertForPretraining

    state = get_fp32_state_dict_from_zero_checkpoint(str(output / "checkpoints"), tag=latest)
    InterBertForPretraining(InterBertConfig.from_preset("tiny")).load_state_dict(state, strict=True)
    client = torch.load(output / "checkpoints" / latest / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)
    assert client["step"] == step and len(client["rng"]) == 2 and len(client["sampler"]) == 2


def test_script_path_shows_help_without_shadowing(tmp_path):
    """Run as a script, interbert/ is first on sys.path; the entry point must still import."""
    result = subprocess.run([sys.executable, PRETRAIN, "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=subprocess_env())
    assert result.returncode == 0, explain(result)
    assert "--deepspeed_config" in result.stdout and "--local_rank" in result.stdout

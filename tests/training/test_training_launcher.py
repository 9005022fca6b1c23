"""The real DeepSpeed launcher, 2 CPU ranks on hostfiles/localhost, the tiny preset: one run,
read back from several angles (exit status, checkpoints, ZeRO-1 partitions, TensorBoard,
the inference model, the evaluate command)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interbert.config import InterBertConfig
from interbert.modeling import InterBertForPretraining
from interbert.pretraining.console import TRAIN_SCALARS
from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import REPO, explain, launch_deepspeed, pretrain_args, subprocess_env

pytestmark = pytest.mark.slow
STEPS = 4


@pytest.fixture(scope="module")
def launcher_run(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("launcher")
    config = write_ds_config(root / "ds.json", micro=4, accumulation=2)
    output = root / "run"
    result = launch_deepspeed(pretrain_args(corpus, config, output, "--max-steps", str(STEPS),
                                            "--save-every", "2", "--keep-last", "3"))
    return result, output


def test_launcher_run_exits_0_and_logs_every_step(launcher_run):
    result, output = launcher_run
    assert result.returncode == 0, explain(result)
    assert [r["step"] for r in read_train_log(output)] == list(range(1, STEPS + 1))
    assert "2 rank(s) via deepspeed/torchrun" in result.stdout
    assert "optimizer: torch.optim.AdamW, built by DeepSpeed from optimizer.type adamw" in result.stdout


def test_the_ranks_leave_no_shared_memory_behind(launcher_run):
    result, _ = launcher_run
    port = result.args[result.args.index("--master_port") + 1]
    left = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*"))
    assert left == []


def test_checkpoints_written_every_save_interval_and_at_the_end(launcher_run):
    result, output = launcher_run
    assert result.returncode == 0, explain(result)
    checkpoints = output / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"global_step{STEPS}"
    for step in (2, STEPS):
        tag = checkpoints / f"global_step{step}"
        assert (tag / "mp_rank_00_model_states.pt").is_file()
        assert sorted(p.name for p in tag.glob("*optim_states.pt")) == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_zero1_optimizer_state_is_split_between_the_two_ranks(launcher_run):
    result, output = launcher_run
    assert result.returncode == 0, explain(result)
    tag = output / "checkpoints" / f"global_step{STEPS}"
    total = sum(p.numel() for p in InterBertForPretraining(InterBertConfig.from_preset("tiny"))
                .parameters())  # the tied decoder counted once, as ZeRO holds it
    held = []
    for rank in (0, 1):
        state = torch.load(tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
                           map_location="cpu", weights_only=False)["optimizer_state_dict"]
        assert state["zero_stage"] == 1
        master = sum(t.numel() for t in state["single_partition_of_fp32_groups"])
        moments = state["base_optimizer_state"]["state"]
        exp_avg = sum(s["exp_avg"].numel() for s in moments.values())
        assert master <= exp_avg <= master + 64  # the Adam moments of that partition (+ padding)
        held.append(master)
    assert total <= sum(held) <= total + 1024  # every weight, plus alignment padding
    for part in held:
        assert abs(part / sum(held) - 0.5) < 0.01, held


def test_tensorboard_holds_every_scalar(launcher_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, output = launcher_run
    assert result.returncode == 0, explain(result)
    events = EventAccumulator(str(output / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert set(TRAIN_SCALARS) <= scalars, set(TRAIN_SCALARS) - scalars
    validation = {"val/loss", "val/loss_msm", "val/loss_mrm", "val/loss_itm",
                  "val/retrieval_t2i_r@1", "val/retrieval_t2i_r@5", "val/retrieval_t2i_r@10",
                  "val/retrieval_i2t_r@1", "val/retrieval_i2t_r@5", "val/retrieval_i2t_r@10"}
    assert validation <= scalars, validation - scalars
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert all(0 < e.value < 1 for e in events.Scalars("perf/mfu"))
    assert "run/optimizer/text_summary" in events.Tags()["tensors"]


def test_inference_model_loads_and_scores_with_the_evaluate_command(launcher_run, corpus):
    result, output = launcher_run
    assert result.returncode == 0, explain(result)
    model = InterBertForPretraining.from_pretrained(output / "model")
    assert model.config.hidden_size == 128
    evaluate = subprocess.run(
        [sys.executable, "-m", "interbert.cli", "evaluate", "retrieval", "--model", str(output / "model"),
         "--features", str(corpus / "features"), "--captions", str(corpus / "captions.jsonl"),
         "--split", "test", "--json", str(output / "retrieval.json")],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert evaluate.returncode == 0, explain(evaluate)
    assert "text->image" in evaluate.stdout and "4 images, 20 captions" in evaluate.stdout
    assert (output / "retrieval.json").is_file()

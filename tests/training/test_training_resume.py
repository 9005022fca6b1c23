"""Exact resume (fp32, CPU): a run stopped after a checkpoint and resumed with --resume logs
the same per-step losses as a run that was never interrupted."""
from __future__ import annotations

import shutil

import pytest

from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import explain, launch_deepspeed, pretrain_args

pytestmark = pytest.mark.slow
# 160 training captions, 2 ranks x micro-batch 4 -> 20 micro-batches per rank per epoch:
# with accumulation 3 the steps straddle the epoch boundary (6.67 steps per epoch), and the
# resume point (step 5) lies inside epoch 0 while the resumed steps run into epoch 1.
TOTAL_STEPS, RESUME_AT = 9, 5


def test_resumed_losses_equal_the_uninterrupted_run(corpus, tmp_path):
    config = write_ds_config(tmp_path / "ds.json", micro=4, accumulation=3)
    whole = tmp_path / "whole"
    common = ("--max-steps", str(TOTAL_STEPS), "--validation-split", "", "--eval-images", "0")
    result = launch_deepspeed(pretrain_args(corpus, config, whole, *common,
                                            "--save-every", str(RESUME_AT), "--keep-last", "0"))
    assert result.returncode == 0, explain(result)

    # The interrupted run: everything the uninterrupted one had written by its step-5
    # checkpoint, and nothing after it (as if the job had been killed there).
    interrupted = tmp_path / "interrupted"
    checkpoints = interrupted / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / f"global_step{RESUME_AT}",
                    checkpoints / f"global_step{RESUME_AT}")
    (checkpoints / "latest").write_text(f"global_step{RESUME_AT}")
    result = launch_deepspeed(pretrain_args(corpus, config, interrupted, *common, "--resume"))
    assert result.returncode == 0, explain(result)
    assert "resumed from" in result.stdout and f"at step {RESUME_AT}, epoch 0" in result.stdout

    expected = read_train_log(whole)
    resumed = read_train_log(interrupted)
    assert [r["step"] for r in resumed] == list(range(RESUME_AT + 1, TOTAL_STEPS + 1))
    assert resumed[-1]["epoch"] == 1  # the resumed steps crossed into the next epoch
    for got, want in zip(resumed, expected[RESUME_AT:]):
        for key in ("loss", "loss_msm", "loss_mrm", "loss_itm", "learning_rate", "grad_norm"):
            assert got[key] == want[key], (got["step"], key, got[key], want[key])

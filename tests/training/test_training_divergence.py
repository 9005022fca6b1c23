"""The divergence guard: a loss that leaves its normal range, a non-finite gradient norm or a run
of skipped fp16 steps stops the run naming the step; retention keeps the last good checkpoint and
the message names it."""
import json
import subprocess
import sys

import pytest
from training_test_helpers import REPO, explain, pretrain_args, subprocess_env, write_ds_config

from interbert.training.guard import Diverged, DivergenceGuard, GuardSettings


def test_a_spike_against_the_running_median_is_named():
    guard = DivergenceGuard(GuardSettings(spike_factor=10, spike_history=3), loss_scaling=False)
    for step, loss in enumerate([12.0, 11.0, 11.5, 30.0], start=1):  # 30 < 10 x the median
        guard.judge(step, loss, 1.0, 0)
    with pytest.raises(Diverged, match=r"step 5: the loss 300 is above 10 x the median 12"):
        guard.judge(5, 300.0, 1.0, 0)


def test_no_spike_is_judged_before_the_history_fills():
    guard = DivergenceGuard(GuardSettings(spike_factor=10, spike_history=3), loss_scaling=False)
    for step, loss in enumerate([1.0, 50.0, 900.0], start=1):
        guard.judge(step, loss, 1.0, 0)


def test_a_non_finite_gradient_norm_stops_fp32_but_is_an_overflow_in_fp16():
    with pytest.raises(Diverged, match="step 2: the gradient norm is inf"):
        guard = DivergenceGuard(GuardSettings(), loss_scaling=False)
        guard.judge(1, 5.0, 1.0, 0)
        guard.judge(2, 5.0, float("inf"), 0)
    fp16 = DivergenceGuard(GuardSettings(), loss_scaling=True)
    fp16.last_skipped_total = 0
    fp16.judge(1, 5.0, float("inf"), 1)  # skipped by the scaler: fine


def test_consecutive_skipped_fp16_steps_have_a_limit():
    guard = DivergenceGuard(GuardSettings(max_skipped_steps=3), loss_scaling=True)
    guard.last_skipped_total = 0
    for step in range(1, 4):
        guard.judge(step, 0.0, float("inf"), step)
    guard.judge(4, 5.0, 1.0, 3)  # a good step ends the streak
    for step in range(5, 8):
        guard.judge(step, 0.0, float("inf"), step - 1)
    with pytest.raises(Diverged, match="step 8: 4 consecutive steps skipped"):
        guard.judge(8, 0.0, float("inf"), 7)


def run_until_it_breaks(corpus, tmp_path, lr: float, *extra: str):
    """fp32 from one process, no clipping, a checkpoint every step and --keep-last 1."""
    config = write_ds_config(tmp_path / "ds.json", micro=2, world=1, lr=lr, total_steps=40, gradient_clipping=0.0)
    output = tmp_path / "run"
    args = pretrain_args(corpus, config, output, "--max-steps", "25", "--save-every", "1", "--keep-last", "1",
                         "--validation-split", "", "--eval-images", "0", *extra)
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 3, explain(result)
    assert not (output / "model").exists()  # no model from bad weights
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    return result, output, log


def checkpoints(output) -> list[str]:
    return sorted(p.name for p in (output / "checkpoints").glob("global_step*"))


def test_a_diverging_run_stops_keeps_the_good_checkpoint_and_names_it(corpus, tmp_path):
    # learning rate 3: the loss goes from about 11 to about 300 at step 4, without a NaN
    result, output, log = run_until_it_breaks(corpus, tmp_path, 3.0, "--log-every", "5", "--loss-spike-history", "2")
    bad = log[-1]["step"]
    assert log[-1]["loss"] > 10 * log[-2]["loss"]
    good = f"global_step{bad - 2}"  # checkpoint bad-1 holds the weights that gave the bad loss
    assert f"the run diverged at step {bad}: the loss" in result.stdout
    assert f"the last good checkpoint is {good}" in result.stdout
    assert good in checkpoints(output) and f"global_step{bad}" not in checkpoints(output)  # despite --keep-last 1


def test_a_nan_names_the_checkpoint_before_the_one_that_produced_it(corpus, tmp_path):
    # learning rate 1e6, the spike check off: step 4's loss is NaN
    result, output, log = run_until_it_breaks(corpus, tmp_path, 1e6, "--log-every", "1", "--loss-spike-factor", "0")
    bad = log[-1]["step"] + 1  # the NaN step is stopped before its update and not logged
    assert f"non-finite loss: step {bad}: the loss was not finite" in result.stdout
    assert f"the last good checkpoint is global_step{bad - 2}" in result.stdout
    assert f"global_step{bad - 2}" in checkpoints(output)

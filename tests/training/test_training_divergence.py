"""The divergence guard: a loss that leaves its normal range, a non-finite gradient norm, a step that
DeepSpeed skipped in bf16/fp32, or a run of skipped fp16 steps stops the run naming the step. The
checkpoints that hold the bad weights are set aside (renamed, not deleted), `latest` names the last
good one, and a `--resume` from it trains at the new config's learning rate from its first step."""
import math
import subprocess
import sys

import pytest

from interbert.training.guard import Diverged, DivergenceGuard, GuardSettings
from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import REPO, explain, pretrain_args, subprocess_env


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


def test_a_step_deepspeed_skipped_is_a_divergence_in_bf16_but_an_overflow_in_fp16():
    # DeepSpeed's ZeRO optimizer skips a step whose gradients are not finite in bf16 too
    bf16 = DivergenceGuard(GuardSettings(), loss_scaling=False)
    bf16.judge(1, 5.0, 1.0, 0)
    with pytest.raises(Diverged, match="step 2: the gradients were not finite .*DeepSpeed skipped the update"):
        bf16.judge(2, 9e20, float("inf"), 1)
    fp16 = DivergenceGuard(GuardSettings(), loss_scaling=True)
    fp16.judge(1, 5.0, 1.0, 0)
    fp16.judge(2, 5.0, float("inf"), 1)


def run_until_it_breaks(corpus, tmp_path, lr: float, *extra: str, precision: str = "fp32", keep_last: str = "1",
                        save_every: str = "1"):
    """One process, no clipping, a checkpoint every `save_every` steps, the default guard unless `extra`."""
    config = write_ds_config(tmp_path / "ds.json", micro=2, world=1, lr=lr, total_steps=40, gradient_clipping=0.0,
                             precision=precision)
    output = tmp_path / "run"
    args = pretrain_args(corpus, config, output, "--max-steps", "12", "--save-every", save_every,
                         "--keep-last", keep_last, "--validation-split", "", "--eval-images", "0", *extra)
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 3, explain(result)
    assert not (output / "model").exists()  # no model from bad weights
    log = read_train_log(output, every_record=True)
    return result, output, log


def checkpoints(output) -> list[str]:
    """The resumable ones (set-aside checkpoints carry a suffix)."""
    return sorted((p.name for p in (output / "checkpoints").glob("global_step*") if p.name[11:].isdigit()),
                  key=lambda name: int(name[11:]))


def latest(output) -> str:
    return (output / "checkpoints" / "latest").read_text().strip()


@pytest.mark.parametrize("guard, caught", [
    ((), "the loss"),  # the default guard: judged from the 4th step on
    (("--loss-spike-factor", "0"), "the gradients were not finite"),  # the infinite norm DeepSpeed skipped
])
def test_a_bf16_run_that_diverges_without_a_nan_stops_early(corpus, tmp_path, guard, caught):
    # bf16, a warm-up to learning rate 1e4: the loss leaves its range at step 4 and the gradient
    # norm is inf from step 5 (DeepSpeed skips those updates); before, the run trained on to its end
    result, output, log = run_until_it_breaks(corpus, tmp_path, 1e4, *guard, precision="bf16", keep_last="3",
                                              save_every="2")
    bad = log[-1]["step"]
    assert bad <= 5, log
    assert f"the run diverged at step {bad}: {caught}" in result.stdout
    good = max(step for step in (2, 4) if step < bad - 1)
    assert latest(output) == f"global_step{good}"
    assert f"now names the last good checkpoint, global_step{good}" in result.stdout
    assert checkpoints(output)[-1] == f"global_step{good}"


def test_a_diverging_fp32_run_stops_keeps_the_good_checkpoint_and_names_it(corpus, tmp_path):
    # learning rate 3: the loss goes from about 11 to about 300 at step 4, without a NaN
    result, output, log = run_until_it_breaks(corpus, tmp_path, 3.0, "--log-every", "5")
    bad = log[-1]["step"]
    assert log[-1]["loss"] > 10 * log[-2]["loss"]
    good = f"global_step{bad - 2}"  # checkpoint bad-1 holds the weights that gave the bad loss
    assert f"the run diverged at step {bad}: the loss" in result.stdout
    assert checkpoints(output) == [good] and latest(output) == good  # --keep-last 1 kept it
    aside = sorted(p.name for p in (output / "checkpoints").glob("*.set-aside-*"))
    assert aside == [f"global_step{bad - 1}.set-aside-diverged-at-step{bad}"]


def test_after_a_nan_latest_names_the_last_good_checkpoint_and_resume_trains_at_the_new_rate(corpus, tmp_path):
    # learning rate 1e6, the spike check off: a NaN loss within a few steps
    result, output, log = run_until_it_breaks(corpus, tmp_path, 1e6, "--loss-spike-factor", "0", keep_last="0")
    bad = log[-1]["step"] + 1  # the NaN step is stopped before its update and not logged
    good = f"global_step{bad - 2}"
    assert f"non-finite loss: step {bad}: the loss was not finite" in result.stdout
    assert latest(output) == good and checkpoints(output)[-1] == good
    aside = sorted(p.name for p in (output / "checkpoints").glob("*.set-aside-*"))
    assert aside == [f"global_step{bad - 1}.set-aside-non-finite-loss-at-step{bad}"]  # kept, renamed

    # followed to the letter: --resume with a config at a sane rate; the first step trains at it
    config = write_ds_config(tmp_path / "ds_low.json", micro=2, world=1, lr=1e-3, total_steps=40,
                             gradient_clipping=0.0)
    args = pretrain_args(corpus, config, output, "--max-steps", str(bad + 2), "--save-every", "0",
                         "--validation-split", "", "--eval-images", "0", "--resume")
    resumed = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, explain(resumed)
    assert f"resumed from {output / 'checkpoints' / good}" in resumed.stdout
    assert f"learning rate: step {bad - 1} trains at 0.001 from this run's configuration" in resumed.stdout
    records = read_train_log(output, every_record=True)
    first = next(r for r in records if r["step"] == bad - 1 and r["learning_rate"] < 1)
    assert first["learning_rate"] == pytest.approx(1e-3)
    assert all(math.isfinite(r["loss"]) for r in records if r["learning_rate"] < 1)

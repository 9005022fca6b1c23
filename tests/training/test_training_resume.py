"""Exact resume (CPU): a run stopped after a checkpoint and resumed with --resume logs the same
per-step losses as a run that was never interrupted, in fp32 and in bf16 with BF16_Optimizer (fp32
gradients: the first-write gradient buffer, the agreed gradient flags and the one-pass optimizer step
of every such run, whose AdamW state the checkpoint carries)."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from interbert.training.safe_load import weights_only_load
from tests.helpers.ds_config import write_ds_config
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import explain, launch_deepspeed, pretrain_args

pytestmark = pytest.mark.slow
# 160 training captions, 2 ranks x micro-batch 4 -> 20 micro-batches per rank per epoch:
# with accumulation 3 the steps straddle the epoch boundary (6.67 steps per epoch), and the
# resume point (step 5) lies inside epoch 0 while the resumed steps run into epoch 1.
TOTAL_STEPS, RESUME_AT = 9, 5


PRECISIONS = {"fp32": {}, "bf16-fp32-grads": {"precision": "bf16", "data_types": {"grad_accum_dtype": "fp32"}}}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_resumed_losses_equal_the_uninterrupted_run(corpus, tmp_path, precision):
    config = write_ds_config(tmp_path / "ds.json", micro=4, accumulation=3, **PRECISIONS[precision])
    whole = tmp_path / "whole"
    common = ("--max-steps", str(TOTAL_STEPS), "--validation-split", "", "--eval-images", "0")
    result = launch_deepspeed(pretrain_args(corpus, config, whole, *common,
                                            "--save-every", str(RESUME_AT), "--keep-last", "0"))
    assert result.returncode == 0, explain(result)
    if precision == "bf16-fp32-grads":
        assert "optimizer step: clipping, AdamW and the bf16 copy of the weights in one pass" in result.stdout
        assert "every data-parallel rank takes the same gradients into the norm" in result.stdout

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

    # the exported model: the fp32 master weights gathered from both ranks' partitions, the same in both
    # runs, and rounding to the module's own weights (in bf16 they carry more than the module's bits)
    exported = load_file(whole / "model" / "model.safetensors")
    assert all(torch.equal(tensor, load_file(interrupted / "model" / "model.safetensors")[name])
               for name, tensor in exported.items())
    module = weights_only_load(whole / "checkpoints" / f"global_step{TOTAL_STEPS}" / "mp_rank_00_model_states.pt")
    module = module["module"]
    assert set(exported) <= set(module)
    for name, tensor in exported.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor.to(module[name].dtype), module[name]), name
    finer = sum(not torch.equal(tensor, module[name].float()) for name, tensor in exported.items())
    if precision == "fp32":
        assert finer == 0
    else:
        assert finer > len(exported) // 2, finer

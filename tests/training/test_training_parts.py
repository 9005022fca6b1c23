"""The training stack's parts on their own: FLOP accounting, weight-decay groups, optimizer and
precision choice, batch-size checks, the stop request."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from interbert.config import InterBertConfig
from interbert.modeling import InterBertForPretraining
from interbert.modeling.flops import batch_flops, sample_flops, stack_flops
from interbert.training.ds_config import ConfigError, resolve_batch_sizes, total_steps_for_epochs
from interbert.training.optimizer import adapt_to_device, decay_parameter_groups, parameter_groups
from interbert.training.precision import PrecisionError, resolve_precision
from interbert.training.stopping import StopRequest
from tests.helpers.training_runs import REPO, explain, subprocess_env

CPU = torch.device("cpu")


# ---------------------------------------------------------------- FLOPs
def test_paper_base_layer_flops_match_the_anchor_formula():
    config = InterBertConfig.from_preset("paper-base")
    flops = sample_flops(config, text_tokens=36, regions=100)
    h = 768
    expected = sum(72 * h * h * layers * t + 12 * layers * h * t * t
                   for layers, t in ((12, 136), (6, 36), (6, 100)))
    assert flops.layers == pytest.approx(expected)
    assert 100e9 < flops.layers < 110e9  # anchors.md: "about 104 GFLOP in the layers"
    assert 0 < flops.heads < 0.1 * flops.layers


def test_padding_is_not_counted():
    config = InterBertConfig.from_preset("tiny")
    real = torch.tensor([5])
    stream = config.interaction
    assert stack_flops(stream, 128, real) == 72 * 128 ** 2 * 2 * 5 + 12 * 2 * 128 * 25
    batch = {"text_mask": torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool),
             "region_mask": torch.tensor([[1, 1, 0]], dtype=torch.bool)}
    padded = {"text_mask": torch.ones(1, 5, dtype=torch.bool),
              "region_mask": torch.ones(1, 3, dtype=torch.bool)}
    assert batch_flops(config, batch).total < batch_flops(config, padded).total


# ---------------------------------------------------------------- optimizer
def test_no_weight_decay_on_biases_and_layer_norms():
    model = InterBertForPretraining(InterBertConfig.from_preset("tiny"))
    decay, no_decay = decay_parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert all(n.endswith("bias") or "LayerNorm" in n for n in exempt)
    assert "interbert.embeddings.LayerNorm.weight" in exempt
    assert "interbert.interaction.layer.0.attention.output.LayerNorm.weight" in exempt
    assert "interbert.embeddings.word_embeddings.weight" in decayed
    assert not any(n.endswith("bias") or "LayerNorm" in n for n in decayed)
    unique = {id(p) for p in model.parameters()}
    assert len(unique) == len(decay["params"]) + len(no_decay["params"])


def test_the_decay_groups_take_the_configs_weight_decay_and_a_config_without_optimizer_is_named():
    model = InterBertForPretraining(InterBertConfig.from_preset("tiny"))
    config = json.loads((REPO / "ds_configs" / "pretrain_v100x8.json").read_text())
    groups = parameter_groups(model, config, "v100.json")
    assert [g["weight_decay"] for g in groups] == [config["optimizer"]["params"]["weight_decay"], 0.0]
    with pytest.raises(ConfigError, match="my.json: no `optimizer` section"):
        parameter_groups(model, {}, "my.json")


def test_on_a_cpu_adamw_runs_as_torch_adamw_unless_offloaded_or_on_cuda():
    config = json.loads((REPO / "ds_configs" / "pretrain_v100x8.json").read_text())
    cuda = json.loads(json.dumps(config))
    assert adapt_to_device(cuda, "cuda") is None and "torch_adam" not in cuda["optimizer"]["params"]
    note = adapt_to_device(config, "cpu")
    assert config["optimizer"]["params"]["torch_adam"] is True and "torch.optim.AdamW" in note
    # torch's fused CPU kernel (this torch has one), unless the config says "fused": false
    assert config["optimizer"]["params"]["fused"] is True
    assert note.endswith("torch.optim.AdamW(fused=True) (torch_adam)")
    unfused = {"optimizer": {"type": "AdamW", "params": {"fused": False}}}
    assert adapt_to_device(unfused, "cpu").endswith("torch.optim.AdamW (torch_adam)")
    assert unfused["optimizer"]["params"]["fused"] is False
    offloaded = {"optimizer": {"type": "AdamW", "params": {}},
                 "zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}}
    assert adapt_to_device(offloaded, "cpu") is None  # DeepSpeedCPUAdam, DeepSpeed's choice
    lamb = {"optimizer": {"type": "Lamb", "params": {}}}
    assert adapt_to_device(lamb, "cpu") is None and "torch_adam" not in lamb["optimizer"]["params"]


# ---------------------------------------------------------------- precision
def test_auto_precision_on_cpu_turns_fp16_into_bf16_and_says_so():
    config = {"fp16": {"enabled": True, "loss_scale": 0}}
    choice = resolve_precision("auto", config, CPU, "v100.json")
    assert choice.name == "bf16" and "refuses on a CPU" in choice.reason
    assert config["fp16"]["enabled"] is False and config["bf16"]["enabled"] is True


def test_auto_precision_on_cuda_keeps_the_configured_fp16():
    config = {"fp16": {"enabled": True}}
    assert resolve_precision("auto", config, torch.device("cuda"), "v100.json").name == "fp16"


def test_explicit_fp16_on_cpu_fails_clearly():
    with pytest.raises(PrecisionError, match="--precision fp16 .* CPU"):
        resolve_precision("fp16", {}, CPU)


# ---------------------------------------------------------------- batch sizes
def test_batch_sizes_that_disagree_name_the_file_and_the_fix():
    config = {"train_batch_size": 512, "train_micro_batch_size_per_gpu": 64,
              "gradient_accumulation_steps": 1}
    with pytest.raises(ConfigError, match=r"v100\.json: the batch sizes disagree for 4 ranks.*"
                                          r"gradient_accumulation_steps to 2"):
        resolve_batch_sizes(config, 4, "v100.json")
    assert resolve_batch_sizes(config, 8, "v100.json")["train_batch_size"] == 512


def test_missing_batch_key_is_derived_as_deepspeed_does():
    resolved = resolve_batch_sizes({"train_batch_size": 512, "train_micro_batch_size_per_gpu": 32},
                                   8, "x.json")
    assert resolved["gradient_accumulation_steps"] == 2


def test_a_micro_batch_alone_means_no_accumulation_as_in_deepspeed():
    resolved = resolve_batch_sizes({"train_micro_batch_size_per_gpu": 4}, 2, "x.json")
    assert (resolved["train_batch_size"], resolved["gradient_accumulation_steps"]) == (8, 1)


def test_paper_schedule_length():
    assert total_steps_for_epochs(4_777_000, 20, 512) == 186_602


# ---------------------------------------------------------------- the V100 config
def test_v100_config_parses_with_deepspeed_for_a_world_of_8():
    """DeepSpeed's own config class, in a process whose (fake-backend) world has 8 ranks."""
    script = """
import json
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=8)
import deepspeed.comm
deepspeed.comm.init_distributed(dist_backend="fake", auto_mpi_discovery=False, verbose=False)
from deepspeed.runtime.config import DeepSpeedConfig
c = DeepSpeedConfig("ds_configs/pretrain_v100x8.json")
print(json.dumps({"world": c.world_size, "batch": c.train_batch_size,
                  "micro": c.train_micro_batch_size_per_gpu, "accumulation": c.gradient_accumulation_steps,
                  "fp16": c.float16_config.enabled, "zero": c.zero_optimization_stage,
                  "clip": c.gradient_clipping, "scheduler": c.scheduler_name,
                  "scheduler_params": c.scheduler_params}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=subprocess_env())
    assert result.returncode == 0, explain(result)
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert parsed["world"] == 8 and parsed["batch"] == 512
    assert parsed["micro"] * parsed["accumulation"] * 8 == 512
    assert parsed["fp16"] is True and parsed["zero"] == 1 and parsed["clip"] > 0
    assert parsed["scheduler"] == "WarmupDecayLR"
    assert parsed["scheduler_params"]["warmup_num_steps"] == 10_000
    assert parsed["scheduler_params"]["total_num_steps"] == total_steps_for_epochs(4_777_000, 20, 512)


@pytest.mark.parametrize("name,micro", [("pretrain_cpu_demo.json", 32), ("finetune_cpu_demo.json", 8)])
def test_the_cpu_demo_configs_serve_one_and_two_ranks(name, micro):
    from interbert.training.ds_config import load_ds_config, resolve_batch_sizes

    path = REPO / "ds_configs" / name
    config = load_ds_config(path)
    for world, accumulation in ((1, 2), (2, 1)):
        resolved = resolve_batch_sizes(config, world, path)
        assert (resolved["train_micro_batch_size_per_gpu"],
                resolved["gradient_accumulation_steps"]) == (micro, accumulation)
        assert resolved["train_batch_size"] == micro * accumulation * world


# ---------------------------------------------------------------- stopping
def test_sigterm_becomes_a_stop_request():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest().install()
    try:
        assert signal.getsignal(signal.SIGTERM) == stop._handle  # bound methods compare equal, never identical
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler that was there is back

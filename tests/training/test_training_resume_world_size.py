"""Resume on another world size (2 -> 1 and 1 -> 2 ranks, fp32 on CPU): the checkpoint goes through
DeepSpeed's universal format, the weights come back exactly, the schedule continues, and the data
position is re-sharded to the same global position."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from interbert.config import InterBertConfig
from interbert.training.safe_load import weights_only_load
from tests.helpers.train_log import read_train_log
from tests.helpers.training_runs import REPO, explain, launch_deepspeed, pretrain_args, subprocess_env

pytestmark = pytest.mark.slow
SAVED, TOTAL = 2, 4


def write_inputs(tmp_path):
    """A config whose accumulation DeepSpeed derives (global batch 4 = 2 x accumulation x world), and
    the tiny model without dropout."""
    config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {"lr": 5e-4, "weight_decay": 0.01}},
              "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 5e-4,
                                                                "warmup_num_steps": 2, "total_num_steps": 10}},
              "zero_optimization": {"stage": 1}}
    (tmp_path / "ds.json").write_text(json.dumps(config))
    model = InterBertConfig.from_preset("tiny").to_dict()
    text = json.dumps(model)
    for key in [k for k in _keys(model) if "dropout" in k]:
        text = text.replace(f'"{key}": 0.1', f'"{key}": 0.0')
    (tmp_path / "model.json").write_text(text)
    return tmp_path / "ds.json", tmp_path / "model.json"


def _keys(value):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys(inner)


def run(ranks: int, corpus, config, model_config, output, *extra):
    args = pretrain_args(corpus, config, output, "--validation-split", "", "--eval-images", "0",
                         "--keep-last", "0", *extra)
    args = [a for a in args if a not in ("--preset", "tiny")] + ["--model-config", str(model_config)]
    if ranks == 2:
        return launch_deepspeed(args)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=240)


def client_state(checkpoint_dir, step):
    return weights_only_load(checkpoint_dir / f"global_step{step}" / "mp_rank_00_model_states.pt")


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_on_another_world_size(corpus, tmp_path, before, after):
    config, model_config = write_inputs(tmp_path)
    whole = tmp_path / "whole"
    result = run(before, corpus, config, model_config, whole, "--max-steps", str(TOTAL), "--save-every", str(SAVED))
    assert result.returncode == 0, explain(result)

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(whole / "checkpoints" / f"global_step{SAVED}", resumed / "checkpoints" / f"global_step{SAVED}")
    (resumed / "checkpoints" / "latest").write_text(f"global_step{SAVED}")

    # Resumed with nothing left to train, the run exports the weights it loaded: exactly the saved ones.
    result = run(after, corpus, config, model_config, resumed, "--max-steps", str(SAVED), "--resume")
    assert result.returncode == 0, explain(result)
    assert f"written by {before} rank(s), this run has {after}" in result.stdout
    assert (resumed / "checkpoints" / "universal" / f"global_step{SAVED}" / "zero").is_dir()
    saved = client_state(whole / "checkpoints", SAVED)["module"]
    loaded = load_file(resumed / "model" / "model.safetensors")
    assert set(loaded) <= set(saved)
    for name, tensor in loaded.items():
        assert torch.equal(tensor, saved[name].float()), name

    result = run(after, corpus, config, model_config, resumed, "--max-steps", str(TOTAL), "--resume")
    assert result.returncode == 0, explain(result)
    expected, got = read_train_log(whole)[SAVED:], read_train_log(resumed)
    assert [r["step"] for r in got] == list(range(SAVED + 1, TOTAL + 1))
    assert [r["learning_rate"] for r in got] == [r["learning_rate"] for r in expected]
    # the same global position in the data: per-rank consumed x ranks, in the same epoch
    end_whole, end_resumed = client_state(whole / "checkpoints", TOTAL), client_state(resumed / "checkpoints", TOTAL)
    assert len(end_resumed["sampler"]) == after
    for state in end_resumed["sampler"]:
        reference = end_whole["sampler"][0]
        assert state["epoch"] == reference["epoch"]
        assert state["consumed"] * after == reference["consumed"] * before

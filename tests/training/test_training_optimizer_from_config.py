"""DeepSpeed builds the optimizer the config names, with the weight-decay groups the run hands it:
a type the project never builds itself (Adagrad; without ZeRO, as DeepSpeed's ZeRO-1 does not take
torch's Adagrad), and ZeRO-Offload's CPU Adam."""
import json
import subprocess
import sys

from tests.helpers.ds_config import write_ds_config
from tests.helpers.training_runs import REPO, explain, pretrain_args, subprocess_env


def two_steps(corpus, tmp_path, **config):
    """A single-process run of two steps with `config` over the helpers' DeepSpeed config."""
    path = write_ds_config(tmp_path / "ds.json", micro=2, world=1, **config)
    args = pretrain_args(corpus, path, tmp_path / "run", "--max-steps", "2", "--validation-split", "",
                         "--eval-images", "0")
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, explain(result)
    assert "step 2/2" in result.stdout
    return result


def test_the_configs_optimizer_type_is_what_runs(corpus, tmp_path):
    result = two_steps(corpus, tmp_path, optimizer={"type": "Adagrad", "params": {"lr": 0.01, "weight_decay": 0.02}},
                       zero_optimization={"stage": 0})
    assert "optimizer: torch.optim.Adagrad, built by DeepSpeed from optimizer.type adagrad" in result.stdout
    run_config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert run_config["optimizer"].startswith("torch.optim.Adagrad")
    assert run_config["deepspeed_config"]["optimizer"]["type"] == "Adagrad"


def test_zero_offload_runs_deepspeeds_cpu_adam(corpus, tmp_path):
    """Not the CPU substitute of FusedAdam: DeepSpeed's own CPU Adam (built by ./run.sh setup)."""
    result = two_steps(corpus, tmp_path, zero_optimization={"stage": 1, "offload_optimizer": {"device": "cpu"}})
    assert "optimizer: deepspeed.ops.adam.cpu_adam.DeepSpeedCPUAdam, built by DeepSpeed" in result.stdout
    assert "torch_adam" not in result.stdout

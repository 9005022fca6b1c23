"""DeepSpeed builds the optimizer the config names (here Adagrad, which the project never builds
itself), with the weight-decay groups the run hands it. (Without ZeRO: DeepSpeed's ZeRO-1 does not
take torch's Adagrad.)"""
import json
import subprocess
import sys

from training_test_helpers import REPO, explain, pretrain_args, subprocess_env, write_ds_config


def test_the_configs_optimizer_type_is_what_runs(corpus, tmp_path):
    config = write_ds_config(tmp_path / "ds.json", micro=2, world=1,
                             optimizer={"type": "Adagrad", "params": {"lr": 0.01, "weight_decay": 0.02}},
                             zero_optimization={"stage": 0})
    output = tmp_path / "run"
    args = pretrain_args(corpus, config, output, "--max-steps", "2", "--validation-split", "", "--eval-images", "0")
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, explain(result)
    assert "optimizer: torch.optim.Adagrad, built by DeepSpeed from optimizer.type adagrad" in result.stdout
    assert "step 2/2" in result.stdout
    run_config = json.loads((output / "run_config.json").read_text())
    assert run_config["optimizer"].startswith("torch.optim.Adagrad")
    assert run_config["deepspeed_config"]["optimizer"]["type"] == "Adagrad"


def test_zero_offload_runs_deepspeeds_cpu_adam(corpus, tmp_path):
    """ZeRO-Offload in the config: DeepSpeed's own CPU Adam, not the CPU substitute of FusedAdam
    (its C++ op is built by ./run.sh setup)."""
    config = write_ds_config(tmp_path / "ds.json", micro=2, world=1,
                             zero_optimization={"stage": 1, "offload_optimizer": {"device": "cpu"}})
    output = tmp_path / "run"
    args = pretrain_args(corpus, config, output, "--max-steps", "2", "--validation-split", "", "--eval-images", "0")
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, explain(result)
    assert "optimizer: deepspeed.ops.adam.cpu_adam.DeepSpeedCPUAdam, built by DeepSpeed" in result.stdout
    assert "torch_adam" not in result.stdout and "step 2/2" in result.stdout

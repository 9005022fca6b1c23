"""hostfiles/slurm/pretrain.sbatch on a one-node SLURM of this machine, started for the test:
two CPU ranks via srun train; SIGTERM to the batch shell makes every rank save at the same step,
the job requeues itself, and the restart resumes from that checkpoint and finishes."""
from __future__ import annotations

import os
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.ds_config import write_ds_config
from tests.helpers.private_slurm import PROGRAMS, PrivateSlurm, SlurmUnavailable, port_is_free
from tests.helpers.train_log import logged_lines, read_train_log
from tests.helpers.training_runs import REPO, VOCAB, subprocess_env

pytestmark = pytest.mark.slow

SCRIPT = REPO / "hostfiles" / "slurm" / "pretrain.sbatch"
STEPS = 40


def job_id_for_a_free_port() -> int:
    """A first job id whose derived MASTER_PORT (20000 + id % 20000) is free on 127.0.0.1."""
    for _ in range(200):
        port = random.randrange(20001, 40000)
        if port_is_free(port):
            return port - 20000
    raise AssertionError("no free port between 20001 and 39999")


@pytest.fixture
def cluster():
    missing = [name for name in PROGRAMS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH: install the Debian packages slurm-wlm and munge")
    if os.geteuid() != 0:
        pytest.skip("the private SLURM runs slurmd as root (SlurmUser=root), and this test is not root")
    root = Path(tempfile.mkdtemp(prefix="interbert-slurm-"))
    os.chmod(root, 0o755)  # munged refuses a socket folder that others cannot traverse
    slurm = PrivateSlurm(root, cpus=max(2, os.cpu_count() or 1), first_job_id=job_id_for_a_free_port())
    try:
        try:
            slurm.start()
        except SlurmUnavailable as error:
            pytest.skip(f"SLURM cannot run here: {error}")
        yield slurm
    finally:
        slurm.stop()
        shutil.rmtree(root, ignore_errors=True)


def wait_until(ready, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.3)
    text = log.read_text(errors="replace")[-4000:] if log.is_file() else "(no job output)"
    raise AssertionError(f"{what} within {timeout:.0f} s; job output:\n{text}")


def test_sbatch_trains_via_srun_saves_on_sigterm_requeues_and_resumes(cluster, corpus, tmp_path):
    config = write_ds_config(tmp_path / "ds.json", micro=4)
    output, log = tmp_path / "run", tmp_path / "job.out"
    env = subprocess_env(INTERBERT_OUTPUT=str(output), INTERBERT_PYTHON=sys.executable,
                         INTERBERT_DS_CONFIG=str(config))
    if not socket.gethostbyname(cluster.node).startswith("127."):
        env["MASTER_ADDR"] = "127.0.0.1"  # the ranks would meet on the node's own address: stay on loopback
    flags = ["--preset", "tiny", "--features", str(corpus / "features"), "--captions", str(corpus / "captions.jsonl"),
             "--vocab", VOCAB, "--num-workers", "0", "--eval-images", "4", "--validation-split", "",
             "--log-every", "1", "--max-steps", str(STEPS), "--save-every", "0"]
    job = cluster.sbatch(SCRIPT, ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={log}"],
                         flags, env=env, cwd=REPO)

    def state() -> dict:
        info = cluster.job(job)
        assert info["JobState"] not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"), info
        return info

    wait_until(lambda: state() and logged_lines(output) >= 3,
               60, "the job did not log 3 steps", log)
    cluster.client("scancel", "--signal=TERM", "--batch", str(job))  # what --signal=B:TERM@120 sends
    wait_until(lambda: state()["Restarts"] == "1" and state()["JobState"] == "COMPLETED",
               90, "the job was not requeued and completed", log)

    text = log.read_text()
    assert text.count("[pretrain] 2 rank(s) via srun") == 2, text[-4000:]
    stopped = [line for line in text.splitlines() if "stop requested (SIGTERM): saving at step" in line]
    assert len(stopped) == 1, text[-4000:]
    step = int(stopped[0].rsplit("step ", 1)[1].split()[0])
    assert 3 <= step < STEPS
    saved = output / "checkpoints" / f"global_step{step}"
    assert sorted(p.name for p in saved.glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert f'"step": {step}, "world_size": 2' in (saved / "interbert_run.json").read_text()
    assert f"requeueing job {job}" in text
    assert f"checkpoints/latest exists (global_step{step}): resuming" in text
    assert f"resumed from {saved} at step {step}" in text
    assert [record["step"] for record in read_train_log(output)] == list(range(1, STEPS + 1))
    assert (output / "checkpoints" / "latest").read_text().strip() == f"global_step{STEPS}"
    assert cluster.job(job)["ExitCode"] == "0:0"

"""The same two hosts through `deepspeed --launcher openmpi` (mpirun over ssh): the ranks read
their placement from Open MPI's variables without initialising MPI, the rendezvous from the
.deepspeed_env that `interbert cluster-env` writes, and the TCP interface is the user's choice
(`--mca btl_tcp_if_include lo` in --launcher_args overrides the runner's hard-coded eth0)."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers.train_log import read_train_log
from tests.helpers.two_host_jobs import end_job, processes, start, wait_for, wait_for_steps

pytestmark = pytest.mark.slow


def _mpi_rank(output: Path, rank: int) -> int:
    for pid in processes(output):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no process of rank {rank}")


def test_openmpi_over_two_hosts_trains_checkpoints_and_a_rank_that_dies_ends_the_job(two_hosts, corpus, tmp_path):
    output = tmp_path / "run"
    process = start(two_hosts, tmp_path, corpus, output, "--max-steps", "100000", "--save-every", "2",
                    "--eval-images", "0", "--validation-split", "", "--rank-timeout", "30", launcher="openmpi")
    try:
        wait_for_steps(process, output, 3)
        log = process.log_path.read_text()
        assert "2 rank(s) via mpirun" in log and "btl_tcp_if_include lo" in log and "btl_tcp_if_include eth0" not in log
        wait_for(lambda: (output / "checkpoints" / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
                 .is_file(), 30, "no checkpoint of both ranks")
        os.kill(_mpi_rank(output, 1), signal.SIGKILL)
        process.wait(timeout=45)
        wait_for(lambda: not processes(output), 20, "processes of the job were left running")
    finally:
        end_job(process, output)
    assert process.returncode != 0  # mpirun ended the job on both hosts
    assert [r["step"] for r in read_train_log(output)][:3] == [1, 2, 3]

"""Where a rank started by `srun` sits in the job, read from SLURM's variables (fast, no SLURM)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from interbert.errors import UsageError
from interbert.training import slurm
from interbert.training.distributed import discover_job

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hostfiles" / "slurm" / "pretrain.sbatch"

# A task of `srun --nodes=3 --ntasks-per-node=2`: the third node's second task.
STEP = {
    "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
    "SLURM_NODEID": "2", "SLURM_NTASKS": "6", "SLURM_STEP_NUM_TASKS": "6",
    "SLURM_STEP_TASKS_PER_NODE": "2(x3)", "SLURM_TASKS_PER_NODE": "2(x3)",
    "SLURM_STEP_NODELIST": "gpu[07-09]", "SLURM_JOB_NODELIST": "gpu[07-09]",
}


@pytest.mark.parametrize("hostlist, hosts", [
    ("node01", ["node01"]),
    ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
    ("a[8-10]", ["a8", "a9", "a10"]),
    ("gpu[007-008]-ib", ["gpu007-ib", "gpu008-ib"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("x[3],y,z[1,4]", ["x3", "y", "z1", "z4"]),
])
def test_hostlists_expand(hostlist, hosts):
    assert slurm.expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["node[01-03", "node[3-1]", "node[a-b]", "node01,,node02", "node]1["])
def test_malformed_hostlists_name_the_variable(hostlist):
    with pytest.raises(UsageError, match=r"SLURM_STEP_NODELIST=.*node"):
        slurm.expand_hostlist(hostlist, "SLURM_STEP_NODELIST")


@pytest.mark.parametrize("value, counts", [
    ("8", [8]), ("2(x3),1", [2, 2, 2, 1]), ("4,3(x2)", [4, 3, 3]), ("1(x1)", [1]),
])
def test_tasks_per_node_forms(value, counts):
    assert slurm.expand_tasks_per_node(value) == counts


@pytest.mark.parametrize("value", ["", "2x3", "2(3)", "two", "2(x3),", "-1"])
def test_malformed_tasks_per_node(value):
    with pytest.raises(UsageError, match="SLURM_TASKS_PER_NODE="):
        slurm.expand_tasks_per_node(value)


def test_placement_of_a_task_on_the_third_node():
    placement = slurm.placement_from_slurm(STEP)
    assert placement == slurm.SlurmPlacement(rank=5, world_size=6, local_rank=1, local_size=2,
                                             master_addr="gpu07", master_port=20000 + 4242)


def test_the_step_wins_over_the_job():
    """A step of 3 tasks inside a job of 8: the step's count, node list and tasks per node."""
    environ = {**STEP, "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
               "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "3", "SLURM_TASKS_PER_NODE": "4(x2)",
               "SLURM_STEP_TASKS_PER_NODE": "2,1", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_STEP_NODELIST": "n[2-3]"}
    placement = slurm.placement_from_slurm(environ)
    assert (placement.world_size, placement.local_size, placement.master_addr) == (3, 1, "n2")


def test_job_variables_serve_without_step_ones():
    environ = {k: v for k, v in STEP.items() if not k.startswith("SLURM_STEP_") or k == "SLURM_STEP_ID"}
    environ.update(SLURM_TASKS_PER_NODE="2(x2),1", SLURM_NODEID="2", SLURM_LOCALID="0", SLURM_PROCID="4",
                   SLURM_NTASKS="5", SLURM_JOB_NODELIST="c[1-3]")
    placement = slurm.placement_from_slurm(environ)
    assert (placement.world_size, placement.local_size, placement.master_addr) == (5, 1, "c1")


@pytest.mark.parametrize("job_id, port", [("1", 20001), ("4242", 24242), ("20000", 20000), ("123456", 23456)])
def test_port_from_the_job_id(job_id, port):
    assert slurm.master_port({"SLURM_JOB_ID": job_id}) == port


def test_master_addr_and_port_kept_when_set():
    placement = slurm.placement_from_slurm({**STEP, "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29511"})
    assert (placement.master_addr, placement.master_port) == ("10.0.0.7", 29511)


@pytest.mark.parametrize("environ, expected", [
    ({"SLURM_STEP_ID": "0", "SLURM_PROCID": "0"}, True),
    ({"SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "RANK": "0"}, False),  # deepspeed / torchrun in an allocation
    ({"SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}, False),  # the batch script's own shell
    ({"SLURM_STEP_ID": "0"}, False),
    ({"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "OMPI_COMM_WORLD_SIZE": "4"}, False),  # mpirun's daemons via srun
    ({}, False),
])
def test_detection(environ, expected):
    assert slurm.launched_by_srun(environ) is expected


@pytest.mark.parametrize("change, message", [
    ({"SLURM_PROCID": "x"}, r"^SLURM_PROCID='x' is not an integer >= 0"),
    ({"SLURM_PROCID": "6"}, r"^SLURM_PROCID=6 is not below SLURM_STEP_NUM_TASKS=6"),
    ({"SLURM_STEP_NUM_TASKS": "0"}, r"^SLURM_STEP_NUM_TASKS='0' is not an integer >= 1"),
    ({"SLURM_LOCALID": "2"}, r"^SLURM_LOCALID=2 is not below this node's task count 2"),
    ({"SLURM_NODEID": "3"}, r"^SLURM_NODEID=3 but SLURM_STEP_TASKS_PER_NODE='2\(x3\)' lists 3 node"),
    ({"SLURM_STEP_TASKS_PER_NODE": "2(x)"}, r"^SLURM_STEP_TASKS_PER_NODE='2\(x\)': cannot read"),
    ({"SLURM_JOB_ID": "abc"}, r"^SLURM_JOB_ID='abc' is not an integer"),
    ({"MASTER_PORT": "http"}, r"^MASTER_PORT='http' is not an integer >= 1: set it to a free TCP port"),
    ({"MASTER_PORT": "70000"}, r"^MASTER_PORT=70000 is above 65535"),
    ({"SLURM_LOCALID": "\u00b2"}, r"^SLURM_LOCALID='\u00b2' is not an integer >= 0: SLURM sets it"),
    ({"SLURM_STEP_NODELIST": "gpu[1-"}, r"^SLURM_STEP_NODELIST='gpu\[1-'"),
    ({"SLURM_PROCID": None}, r"^SLURM_PROCID is not set"),
    ({"SLURM_STEP_NODELIST": None, "SLURM_JOB_NODELIST": None},
     r"^SLURM_STEP_NODELIST / SLURM_JOB_NODELIST is not set"),
])
def test_malformed_variables_are_one_line_usage_errors(change, message):
    environ = {k: v for k, v in {**STEP, **change}.items() if v is not None}
    with pytest.raises(UsageError, match=message) as error:
        slurm.placement_from_slurm(environ)
    assert "\n" not in str(error.value)


@pytest.fixture
def saved_environ():
    """discover_job writes os.environ; put it back as it was, added keys removed."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_discover_job_takes_the_srun_placement(monkeypatch, saved_environ):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in STEP.items():
        monkeypatch.setenv(key, value)
    placement = discover_job(None)
    assert (placement.rank, placement.world_size, placement.local_rank, placement.local_size,
            placement.launcher) == (5, 6, 1, 2, "srun")
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], os.environ["RANK"]) == ("gpu07", "24242", "5")


def test_deepspeed_inside_an_allocation_is_not_srun(monkeypatch, saved_environ):
    for key, value in {**STEP, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LOCAL_SIZE", raising=False)
    placement = discover_job(None)
    assert (placement.rank, placement.world_size, placement.launcher) == (1, 2, "deepspeed/torchrun")


@pytest.mark.parametrize("environ, message", [
    ({}, "SLURM_JOB_ID is not set: submit this script with sbatch"),
    ({"SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(REPO)}, "INTERBERT_OUTPUT is not set"),
    ({"SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": "/", "INTERBERT_OUTPUT": "runs/x"}, "/ has no interbert/pretrain.py"),
])
def test_the_batch_script_says_what_is_missing(environ, message):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("SLURM_", "INTERBERT_"))}
    result = subprocess.run(["bash", str(SCRIPT)], env={**env, **environ}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and message in result.stderr, result.stderr

"""Who this process is in the job when `srun` started it, one task per GPU, with no launcher of ours.

SLURM describes every task of a step in its environment; from it:
- RANK = SLURM_PROCID, WORLD_SIZE = SLURM_STEP_NUM_TASKS (else SLURM_NTASKS);
- LOCAL_RANK = SLURM_LOCALID, LOCAL_SIZE = the tasks on this node: entry SLURM_NODEID of
  SLURM_STEP_TASKS_PER_NODE (else SLURM_TASKS_PER_NODE), whose form is e.g. `2(x3),1`;
- MASTER_ADDR = MASTER_ADDR when set, else the first host of SLURM_STEP_NODELIST (else
  SLURM_JOB_NODELIST), a compressed host list such as `node[01-03,07],gpu5`, expanded here so a
  rank needs no `scontrol`;
- MASTER_PORT = MASTER_PORT when set, else 20000 + SLURM_JOB_ID % 20000, which every task of the
  job computes alike (and a requeued job again).

Each function takes the environment as a mapping and returns values; only
`set_environment_from_slurm` writes os.environ. A malformed variable raises UsageError naming it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from interbert.errors import UsageError

PORT_BASE = 20000
PORT_SPAN = 20000
_RANGE_SPLIT = re.compile(r",(?![^\[]*\])")  # commas outside brackets separate hosts
_TASK_GROUP = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


@dataclass(frozen=True)
class SlurmPlacement:
    """This task's place in the step and the rendezvous every task of it uses."""

    rank: int
    world_size: int
    local_rank: int
    local_size: int
    master_addr: str
    master_port: int

    def environment(self) -> dict[str, str]:
        """The variables the process group reads, as strings."""
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size),
                "LOCAL_RANK": str(self.local_rank), "LOCAL_SIZE": str(self.local_size),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}


def launched_by_srun(environ: Mapping[str, str] = os.environ) -> bool:
    """True for a task of an `srun` step: SLURM_STEP_ID and SLURM_PROCID are set and RANK is not
    (the DeepSpeed launcher or torchrun inside an allocation set RANK, and win). Nor is
    OMPI_COMM_WORLD_SIZE: Open MPI's mpirun over several nodes starts its daemons with `srun`, so
    its ranks inherit the daemon's SLURM_PROCID, and mpirun's own variables win. The batch script's
    shell has SLURM_PROCID but no SLURM_STEP_ID: a plain `python` there is a world of one."""
    return ("RANK" not in environ and "OMPI_COMM_WORLD_SIZE" not in environ
            and "SLURM_STEP_ID" in environ and "SLURM_PROCID" in environ)


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str]:
    """(name, value) of the first of `names` that is set and not empty."""
    for name in names:
        if environ.get(name, "").strip():
            return name, environ[name].strip()
    raise UsageError(f"{' / '.join(names)} is not set: start each rank with `srun` inside a SLURM "
                     "allocation (see hostfiles/slurm/pretrain.sbatch)")


def _integer(name: str, value: str, minimum: int = 0,
             hint: str = "SLURM sets it for each task: do not override it") -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < minimum:
        raise UsageError(f"{name}={value!r} is not an integer >= {minimum}: {hint}")
    return int(value)


def expand_hostlist(hostlist: str, name: str = "SLURM_JOB_NODELIST") -> list[str]:
    """`node[01-03,07],gpu5` -> [node01, node02, node03, node07, gpu5]; zero padding is kept.
    `name`: the variable the list came from, for the error message."""
    hosts: list[str] = []
    for item in _RANGE_SPLIT.split(hostlist.strip()):
        hosts.extend(_expand_host(item, hostlist, name))
    return hosts


def _expand_host(item: str, hostlist: str, name: str) -> list[str]:
    """One comma-free entry, with any number of bracketed ranges (`rack[1-2]-n[01-02]`)."""
    match = re.match(r"^([^\[\]]*)\[([^\[\]]*)\](.*)$", item)
    if match is None:
        if not item or "[" in item or "]" in item:
            raise UsageError(f"{name}={hostlist!r}: cannot read the host entry {item!r}; expected "
                             "names like node[01-03,07],gpu5")
        return [item]
    prefix, ranges, rest = match.groups()
    tails = _expand_host(rest, hostlist, name) if rest else [""]
    return [prefix + number + tail for number in _expand_ranges(ranges, hostlist, name) for tail in tails]


def _expand_ranges(ranges: str, hostlist: str, name: str) -> list[str]:
    numbers: list[str] = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        high = high or low
        if not (low.isdigit() and high.isdigit()) or int(high) < int(low):
            raise UsageError(f"{name}={hostlist!r}: the range [{ranges}] has an unreadable part {part!r}; "
                             "expected numbers or low-high, e.g. [01-03,07]")
        numbers.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return numbers


def expand_tasks_per_node(value: str, name: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """`2(x3),1` -> [2, 2, 2, 1]: the tasks on each node of the step, in node order."""
    counts: list[int] = []
    for group in value.strip().split(","):
        match = _TASK_GROUP.match(group.strip())
        if match is None:
            raise UsageError(f"{name}={value!r}: cannot read {group!r}; expected counts like 2(x3),1")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def master_addr(environ: Mapping[str, str]) -> str:
    """MASTER_ADDR when set, else the first host of the step's (else the job's) node list."""
    if environ.get("MASTER_ADDR", "").strip():
        return environ["MASTER_ADDR"].strip()
    name, nodes = _first(environ, ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST"))
    return expand_hostlist(nodes, name)[0]


def master_port(environ: Mapping[str, str]) -> int:
    """MASTER_PORT when set, else 20000 + SLURM_JOB_ID % 20000."""
    if environ.get("MASTER_PORT", "").strip():
        hint = "set it to a free TCP port (1-65535), or unset it to derive one from SLURM_JOB_ID"
        port = _integer("MASTER_PORT", environ["MASTER_PORT"].strip(), 1, hint)
        if port > 65535:
            raise UsageError(f"MASTER_PORT={port} is above 65535: {hint}")
        return port
    name, value = _first(environ, ("SLURM_JOB_ID",))
    return PORT_BASE + _integer(name, value) % PORT_SPAN


def _local_size(environ: Mapping[str, str]) -> int:
    name, value = _first(environ, ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"))
    counts = expand_tasks_per_node(value, name)
    if len(counts) == 1:
        return counts[0]
    node_name, node = _first(environ, ("SLURM_NODEID",))
    node_id = _integer(node_name, node)
    if node_id >= len(counts):
        raise UsageError(f"{node_name}={node_id} but {name}={value!r} lists {len(counts)} node(s): "
                         "the step's variables disagree; start the ranks with one `srun` per step")
    return counts[node_id]


def placement_from_slurm(environ: Mapping[str, str] = os.environ) -> SlurmPlacement:
    """This task's place in the step, from the SLURM variables of `environ` (see the module's doc)."""
    rank = _integer(*_first(environ, ("SLURM_PROCID",)))
    world_name, world = _first(environ, ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"))
    world_size = _integer(world_name, world, minimum=1)
    local_rank = _integer(*_first(environ, ("SLURM_LOCALID",)))
    local_size = _local_size(environ)
    if rank >= world_size:
        raise UsageError(f"SLURM_PROCID={rank} is not below {world_name}={world_size}: the step's "
                         "variables disagree; start the ranks with one `srun` per step")
    if local_rank >= local_size:
        raise UsageError(f"SLURM_LOCALID={local_rank} is not below this node's task count {local_size}: "
                         "the step's variables disagree; start the ranks with one `srun` per step")
    return SlurmPlacement(rank, world_size, local_rank, local_size, master_addr(environ),
                          master_port(environ))


def set_environment_from_slurm() -> SlurmPlacement:
    """Write RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_SIZE, MASTER_ADDR, MASTER_PORT into os.environ
    (MASTER_ADDR / MASTER_PORT kept when already set); returns what was derived."""
    placement = placement_from_slurm(os.environ)
    os.environ.update(placement.environment())
    return placement

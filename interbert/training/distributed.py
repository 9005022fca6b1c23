"""Who this process is in the job, and the process group.

Three ways in:
- the DeepSpeed launcher (or torchrun) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT;
- `mpirun -np N python interbert/pretrain.py ...` (also `deepspeed --launcher openmpi`): Open MPI
  sets OMPI_COMM_WORLD_* (MPICH and MVAPICH their own), read without initialising MPI, so a rank
  that fails ends with a plain non-zero exit that mpirun turns into the end of the job; we honour
  MASTER_ADDR / MASTER_PORT when set (DeepSpeed's own MPI discovery overwrites them, so it is off);
- a plain `python interbert/pretrain.py`: a world of one.
"""
from __future__ import annotations

import atexit
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist

from interbert.errors import UsageError, UserError
from interbert.training.slurm import launched_by_srun, set_environment_from_slurm

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = "29500"
MPI_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


@dataclass(frozen=True)
class DistributedEnvironment:
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "deepspeed/torchrun", "mpirun" or "single process"
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_mpirun(environ=os.environ) -> bool:
    return "RANK" not in environ and any(key in environ for key in MPI_MARKERS)


# rank, world size, local rank, local size as each MPI's launcher sets them for its processes
MPI_VARIABLES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),  # MPICH and Intel MPI (hydra)
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),
)


def mpi_placement(environ=os.environ) -> tuple[int, int, int, int] | None:
    """(rank, world size, local rank, local size) from the MPI launcher's variables, or None."""
    for names in MPI_VARIABLES:
        if all(name in environ for name in names):
            rank, world_size, local_rank, local_size = (int(environ[name]) for name in names)
            return rank, world_size, local_rank, local_size
    return None


def _placement_from_mpi4py() -> tuple[int, int, int, int]:
    """The same through MPI itself, for launchers that set none of MPI_VARIABLES. MPI is then
    initialised in this process: an uncaught exception aborts the whole job (MPI_Abort) instead of
    leaving the other ranks waiting in a collective for a rank that has gone."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise UsageError("this process was started by mpirun, but mpi4py cannot be imported "
                         f"({error}); install it with `pip install mpi4py` (the `mpi` extra)") from None
    previous = sys.excepthook

    def abort_job(kind, value, trace):
        previous(kind, value, trace)
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = abort_job
    world = MPI.COMM_WORLD
    rank, world_size = world.Get_rank(), world.Get_size()
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    node.Free()
    return rank, world_size, local_rank, local_size


def _set_environment_from_mpi() -> None:
    """RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_SIZE from the MPI launcher's variables (MPI itself
    only where it sets none); MASTER_ADDR / MASTER_PORT kept when set."""
    rank, world_size, local_rank, local_size = mpi_placement() or _placement_from_mpi4py()
    if world_size > local_size and "MASTER_ADDR" not in os.environ:
        raise UsageError(
            f"mpirun started {world_size} ranks over several nodes ({local_size} on this one) but MASTER_ADDR is "
            "not set: export MASTER_ADDR=<address of rank 0's node> and MASTER_PORT and pass them with `mpirun -x "
            "MASTER_ADDR -x MASTER_PORT` (under deepspeed --launcher openmpi: put them in .deepspeed_env, "
            "`interbert cluster-env --master-addr ADDR --master-port PORT --write`)")
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["LOCAL_SIZE"] = str(local_size)
    os.environ.setdefault("MASTER_ADDR", DEFAULT_MASTER_ADDR)
    os.environ.setdefault("MASTER_PORT", DEFAULT_MASTER_PORT)


@dataclass(frozen=True)
class JobPlacement:
    """Where this process sits in the job, known before any process group exists."""

    rank: int
    world_size: int
    local_rank: int
    local_size: int
    launcher: str  # "deepspeed/torchrun", "mpirun" or "single process"


def free_port() -> str:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def discover_job(local_rank_flag: int | None = None) -> JobPlacement:
    """Read (and for mpirun, set) RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT.

    `local_rank_flag` is the launcher's `--local_rank`; the environment wins when both exist."""

    if launched_by_srun():
        set_environment_from_slurm()
        launcher = "srun"
    elif launched_by_mpirun():
        _set_environment_from_mpi()
        launcher = "mpirun"
    elif "RANK" in os.environ:
        launcher = "deepspeed/torchrun"
    else:
        launcher = "single process"
        os.environ.update(RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", DEFAULT_MASTER_ADDR)
        # A world of one rendezvous with nobody: any free port will do, and a fixed one would
        # collide with another job on the same machine.
        os.environ.setdefault("MASTER_PORT", free_port())
    os.environ.setdefault("LOCAL_RANK", str(local_rank_flag or 0))
    world_size = int(os.environ["WORLD_SIZE"])
    local_size = int(os.environ.get("LOCAL_SIZE") or os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
                     or os.environ.get("LOCAL_WORLD_SIZE") or world_size)
    return JobPlacement(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]),
                        local_size, launcher)


def job_device(placement: JobPlacement) -> torch.device:
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cuda":
        return torch.device("cuda", placement.local_rank)
    return torch.device("cpu")


def init_process_group(placement: JobPlacement, device: torch.device,
                       timeout_seconds: float | None = None) -> DistributedEnvironment:
    """DeepSpeed's process group (gloo on a CPU, NCCL on CUDA), without its MPI discovery.
    `timeout_seconds`: how long a collective waits for a silent rank (DeepSpeed's default: 30 min)."""

    import deepspeed

    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    extra = {"timeout": timedelta(seconds=timeout_seconds)} if timeout_seconds else {}
    try:
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, **extra)
    except RuntimeError as error:  # torch's DistNetworkError / DistStoreError
        named = rendezvous_error(error, placement)
        if named is None:
            raise
        raise named from None
    if device.type == "cpu":
        atexit.register(remove_cpu_allreduce_buffer, placement.rank)
    return DistributedEnvironment(placement.rank, placement.world_size, placement.local_rank,
                                  placement.launcher, device, backend)


class RendezvousError(UserError):
    """The ranks could not meet at MASTER_ADDR:MASTER_PORT."""


def rendezvous_error(error: RuntimeError, placement: JobPlacement) -> RendezvousError | None:
    """One line for a rendezvous that failed (a port in use, rank 0 unreachable); None for other errors."""
    address = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    text = str(error)
    if "address already in use" in text.lower() or "EADDRINUSE" in text:
        return RendezvousError(f"the rendezvous port {address} is in use (another job?): pass another --master_port")
    if "timed out" in text.lower() or "timeout" in text.lower():
        return RendezvousError(
            f"rank {placement.rank} could not meet rank 0 at {address}: rank 0's host stopped before it (see its "
            "output), or that address is not reachable from here (--master_addr must be an address every host "
            "routes to)")
    return None


def cpu_allreduce_buffer(rank: int) -> str:
    """The POSIX shared-memory segment DeepSpeed's CPU all-reduce creates for ``rank`` of this job
    (about 66 MB, named after the user, MASTER_ADDR and MASTER_PORT)."""
    return (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")


def remove_cpu_allreduce_buffer(rank: int) -> None:
    """Remove this rank's all-reduce segment at exit: DeepSpeed leaves it behind, so every run
    would leak one per rank in /dev/shm. Only the name goes; no other rank opens it after its
    start-up, and the mappings of ranks still exiting stay valid."""
    try:
        os.unlink(cpu_allreduce_buffer(rank))
    except FileNotFoundError:
        pass


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small float64 vector over ranks (in place on the process group's device)."""
    import deepspeed.comm as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    dist.all_reduce(values)
    return values


class ControlChannel:
    """Sums of small CPU tensors over ranks for the training loop's per-step decisions (stop,
    non-finite), without a device round trip: the default group where it is gloo, else a gloo
    group made once (collective: every rank constructs it together)."""

    def __init__(self, env: DistributedEnvironment):
        self.active = torch_dist.is_initialized() and torch_dist.get_world_size() > 1
        self.group = torch_dist.new_group(backend="gloo") if self.active and env.backend != "gloo" else None

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.active:
            torch_dist.all_reduce(values, group=self.group)
        return values


def all_gather_objects(value) -> list:
    """Every rank's `value`, in rank order (picklable objects of our own making only)."""

    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return [value]
    gathered = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    import deepspeed.comm as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def skip_single_rank_allreduce(engine) -> bool:
    """On a data-parallel world of one, stop the engine's post-backward all-reduce where it is
    a pure copy: DeepSpeed's BF16_Optimizer keeps the fp32 gradients in one flat buffer, and
    the engine still concatenates that buffer into a new one, "all-reduces" it over one rank,
    divides by 1 and copies it back (with the default bf16 communication type it also rounds
    the fp32 gradients to bf16 and back). With communication_data_type fp32 skipping it leaves
    every gradient bit-identical (a test of the throughput benchmark checks it).
    DeepSpeedZeroOptimizer is left alone: its reduce_gradients also builds the partition the
    optimizer reads. Returns whether the all-reduce is skipped. Every run does it
    (`startup.build_engine`), and so does the throughput benchmark."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    if engine.dp_world_size != 1 or not isinstance(engine.optimizer, BF16_Optimizer):
        return False
    engine.enable_backward_allreduce = False  # what the engine itself does without a backend
    return True

"""Training checkpoints through the DeepSpeed engine, with what an exact resume needs.

A checkpoint is `<output>/checkpoints/global_step<N>/` as DeepSpeed writes it (model states by
rank 0, one ZeRO optimizer partition per rank) plus our client state: epoch, step, the data
sampler's position and every rank's random-number states (python, numpy, torch), gathered to
rank 0 because DeepSpeed stores client state once. `global_step<N>/interbert_run.json` records the
step, the world size and the precision that wrote it.

`latest`, retention, setting bad checkpoints aside and refusing torn files are
`training/checkpoint_folder.py`. A resumed run trains at its own configured learning-rate
schedule from its first step (DeepSpeed restores the checkpoint's rate into the optimizer until the
scheduler's next step), and says so where the two differ.

Another world size: ZeRO partitions the optimizer state by rank, so a checkpoint written by W ranks
does not load into W' ranks as it is. On `--resume` with another world size, rank 0 converts the
checkpoint once into DeepSpeed's universal format (`checkpoints/universal/global_step<N>/`, with
DeepSpeed's own converter, reading every file weights-only), the engine is built with
`checkpoint.load_universal`, and the sampler position is re-sharded (same global position; exact
when the global batch is unchanged). Random states are per rank and do not carry over: the
resumed ranks draw dropout from their start-up seeds, which the run says.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from interbert.errors import UserError
from interbert.training.checkpoint_folder import MODEL_STATES, check_latest, tag_for
from interbert.training.distributed import all_gather_objects, barrier
from interbert.training.safe_load import load_checkpoints_safely, weights_only_load


class PrecisionMismatch(UserError, ValueError):
    pass


CLIENT_STATE_VERSION = 1
RUN_FILE = "interbert_run.json"
UNIVERSAL = "universal"


def capture_rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, directory: Path, state: dict, *, rank: int, precision: str | None = None) -> Path:
    """Collective: every rank must call it at the same step. Writes the checkpoint's files; `latest`
    moves to it only with `commit`, once every rank's files (the caller's own included) are complete.
    `state`: the loop's `state_dict()` (step, epoch, this rank's sampler state, the objective's entries)."""
    rng_states = all_gather_objects(capture_rng_state())
    sampler_states = all_gather_objects(state["sampler"])
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    step = state["step"]
    client_state = {
        **state,
        "interbert_client_state": CLIENT_STATE_VERSION,
        "sampler": sampler_states,
        "rng": rng_states,
        # what DeepSpeed's universal converter asks of a checkpoint (no tensor or pipeline parallelism here)
        UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE},
    }
    tag = tag_for(step)
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)
    if rank == 0:
        written = {"step": step, "world_size": len(rng_states), "precision": precision}
        (directory / tag / RUN_FILE).write_text(json.dumps(written) + "\n")
    return directory / tag


def saved_run(directory: Path) -> dict:
    """What the checkpoint `latest` names records of the run that wrote it (step, world_size,
    precision); empty when it records nothing."""
    try:
        tag = (directory / "latest").read_text().strip()
        return dict(json.loads((directory / tag / RUN_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def saved_world_size(directory: Path) -> int | None:
    """The world size that wrote the checkpoint `latest` names (None when it does not say)."""
    size = saved_run(directory).get("world_size")
    return None if size is None else int(size)


def check_precision(directory: Path, precision: str) -> None:
    """A checkpoint resumes in the precision that wrote it: ZeRO keeps its optimizer partitions in
    files named by precision, so another one would stop with a missing internal file."""
    saved = saved_run(directory).get("precision")
    if saved and saved != precision:
        tag = (directory / "latest").read_text().strip()
        raise PrecisionMismatch(f"--resume: {directory / tag} was written in {saved}, this run is {precision}; "
                                f"resume with --precision {saved} (or a config with {saved} enabled)")


def needs_universal(directory: Path, world_size: int) -> bool:
    saved = saved_world_size(directory)
    return saved is not None and saved != world_size


@contextmanager
def _weights_only_torch_load():
    """DeepSpeed's converter reads with a full unpickler; make every read weights-only meanwhile."""
    original = torch.load
    torch.load = lambda path, map_location=None, **_: weights_only_load(path, map_location)
    try:
        yield
    finally:
        torch.load = original


def ensure_universal(directory: Path, tag: str, rank: int) -> Path:
    """`directory/universal/<tag>`, converted by rank 0 if it is not there yet (collective)."""
    target = directory / UNIVERSAL / tag
    if rank == 0 and not (target / MODEL_STATES).is_file():
        from deepspeed.checkpoint import ds_to_universal

        partial = target.with_name(f"{tag}.tmp")
        shutil.rmtree(partial, ignore_errors=True)
        options = argparse.Namespace(input_folder=str(directory / tag), output_folder=str(partial),
                                     num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                     strict=True, inject_missing_state=True)
        with _weights_only_torch_load():
            ds_to_universal.main(options)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    barrier()
    return target


def load(engine, directory: Path, rank: int, world_size: int = 1) -> dict:
    """Load the newest checkpoint (as named by `latest`) into `engine`; returns this rank's
    client state: step, epoch, sampler state; the RNG state is restored when the world size is the
    one that wrote it. With another world size the engine must have been built with
    `checkpoint.load_universal` (`needs_universal`)."""
    latest = directory / "latest"
    if not latest.is_file():
        raise FileNotFoundError(
            f"--resume: {latest} does not exist, so there is no checkpoint to resume from in "
            f"{directory}; start without --resume, or point --output-dir at the earlier run")
    check_latest(directory)
    load_checkpoints_safely(engine)  # weights-only unpickling: a checkpoint must not run code
    tag = latest.read_text().strip()
    source = directory
    if needs_universal(directory, world_size):
        source = ensure_universal(directory, tag, rank).parent
    configured = learning_rates(engine)
    with _weights_only_torch_load():  # the universal fragments are read with torch.load directly
        path, client_state = engine.load_checkpoint(str(source), tag=tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
    saved_rates = learning_rates(engine)
    rates = apply_configured_schedule(engine, configured)
    if path is None or not client_state or "interbert_client_state" not in client_state:
        raise RuntimeError(f"{directory}: the checkpoint named by {latest} could not be loaded "
                           "or was not written by interbert pretrain")
    saved_world = len(client_state["rng"])
    if saved_world == world_size:
        restore_rng_state(client_state["rng"][rank])
        sampler = client_state["sampler"][rank]
    else:
        sampler = client_state["sampler"][0]  # every rank consumed the same count; re-sharded by the sampler
    return {**client_state, "path": path, "sampler": sampler, "saved_world_size": saved_world,
            "learning_rates": rates, "saved_learning_rates": saved_rates}


def learning_rates(engine) -> list[float]:
    """The optimizer's learning rate per parameter group (what the next step trains at)."""
    return [float(group["lr"]) for group in engine.optimizer.param_groups]


def apply_configured_schedule(engine, configured: list[float]) -> list[float]:
    """After a load: the rates this run's configuration gives the next step. With a scheduler, its rate
    at the restored position (the scheduler keeps only its position, its rates come from the config);
    without one, the optimizer's configured rates (`configured`, read before the load)."""
    scheduler = engine.lr_scheduler
    position = getattr(scheduler, "last_batch_iteration", None)
    if scheduler is not None and hasattr(scheduler, "get_lr") and (position is None or position >= 0):
        rates = [float(rate) for rate in scheduler.get_lr()]
    else:
        rates = configured
    for group, rate in zip(engine.optimizer.param_groups, rates):
        group["lr"] = rate
    return rates

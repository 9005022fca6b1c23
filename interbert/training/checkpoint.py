"""Training checkpoints through the DeepSpeed engine, with what an exact resume needs.

A checkpoint is `<output>/checkpoints/global_step<N>/` as DeepSpeed writes it (model states by
rank 0, one ZeRO optimizer partition per rank) plus our client state: epoch, step, the data
sampler's position and every rank's random-number states (python, numpy, torch), gathered to
rank 0 because DeepSpeed stores client state once. `latest` names the newest; older ones beyond
`keep_last` are deleted after every rank has finished writing.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from interbert.training.distributed import all_gather_objects, barrier
from interbert.training.safe_load import load_checkpoints_safely

TAG_PATTERN = re.compile(r"^global_step(\d+)$")
CLIENT_STATE_VERSION = 1


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


def tag_for(step: int) -> str:
    return f"global_step{step}"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints under `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = TAG_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def save(engine, directory: Path, *, step: int, epoch: int, sampler_state: dict,
         keep_last: int, rank: int, extra: dict | None = None) -> Path:
    """Collective: every rank must call it at the same step."""
    rng_states = all_gather_objects(capture_rng_state())
    sampler_states = all_gather_objects(sampler_state)
    client_state = {
        "interbert_client_state": CLIENT_STATE_VERSION,
        "step": step,
        "epoch": epoch,
        "sampler": sampler_states,
        "rng": rng_states,
        **(extra or {}),
    }
    tag = tag_for(step)
    engine.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=True)
    barrier()
    if rank == 0 and keep_last > 0:
        for _, old in list_checkpoints(directory)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return directory / tag


MODEL_STATES = "mp_rank_00_model_states.pt"


def check_latest(directory: Path) -> None:
    """The checkpoint `latest` names exists and holds its model states; otherwise a message naming
    it and the newest complete one to resume from instead."""
    tag = (directory / "latest").read_text().strip()
    if (directory / tag / MODEL_STATES).is_file():
        return
    state = "does not exist" if not (directory / tag).is_dir() else f"is incomplete (no {MODEL_STATES})"
    earlier = [path for _, path in list_checkpoints(directory) if (path / MODEL_STATES).is_file() and path.name != tag]
    hint = (f"to resume from the newest complete one, write its name into the latest file: echo {earlier[-1].name} "
            f"> {directory / 'latest'}" if earlier else "there is no complete checkpoint to resume from")
    raise FileNotFoundError(f"--resume: {directory / 'latest'} names {tag}, which {state}; {hint}")


def load(engine, directory: Path, rank: int) -> dict:
    """Load the newest checkpoint (as named by `latest`) into `engine`; returns this rank's
    client state: step, epoch, sampler state, RNG state (already restored)."""
    latest = directory / "latest"
    if not latest.is_file():
        raise FileNotFoundError(
            f"--resume: {latest} does not exist, so there is no checkpoint to resume from in "
            f"{directory}; start without --resume, or point --output-dir at the earlier run")
    check_latest(directory)
    load_checkpoints_safely(engine)  # weights-only unpickling: a checkpoint must not run code
    path, client_state = engine.load_checkpoint(str(directory), load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None or not client_state or "interbert_client_state" not in client_state:
        raise RuntimeError(f"{directory}: the checkpoint named by {latest} could not be loaded "
                           "or was not written by interbert pretrain")
    world = len(client_state["rng"])
    if rank >= world:
        raise RuntimeError(f"{path} was written by {world} ranks; resume it with {world} ranks "
                           "(the sampler and random states are per rank)")
    restore_rng_state(client_state["rng"][rank])
    return {"path": path, "step": client_state["step"], "epoch": client_state["epoch"],
            "sampler": client_state["sampler"][rank]}

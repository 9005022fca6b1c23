"""A checkpoint folder that can be trusted: what `latest` names is complete, bad weights are set aside.

`latest` names the newest complete checkpoint: it moves only once every rank's files are on disk
(`commit`: fsync, then the pointer, written whole and renamed). Of the older checkpoints the newest
`keep_last` stay (the newest of all is kept besides: its weights are not judged good until the next
step's loss is known) and the rest are deleted. After a stop for a non-finite loss or a divergence,
the checkpoints that hold the bad weights are set aside under a name that says why and `latest` goes
back to the last good one (`set_aside`). `--resume` refuses a checkpoint with a missing or cut-short
file, naming the newest complete one (`check_latest`).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from interbert.errors import UserError
from interbert.modeling.checkpoint_files import torch_file_cut_short
from interbert.training.distributed import barrier

TAG_PATTERN = re.compile(r"^global_step(\d+)$")
MODEL_STATES = "mp_rank_00_model_states.pt"


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


def commit(directory: Path, step: int, *, keep_last: int, rank: int) -> None:
    """Collective, after `save` and any files of the caller's own: every rank flushes the folder's files
    to disk, then rank 0 points `latest` at it (written whole, then renamed over the old pointer), so a
    crash or a full disk mid-save leaves `latest` on the previous, complete checkpoint. Then retention."""
    barrier()
    sync_folder(directory / tag_for(step))
    barrier()
    if rank == 0:
        write_latest(directory, tag_for(step))
        if keep_last > 0:
            # The newest checkpoint is not known good until the next step's loss is judged (its weights
            # produce it): keep_last counts the older ones, which the divergence guard has passed.
            older = [path for saved, path in list_checkpoints(directory) if saved < step]
            for old in older[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()


def sync_folder(folder: Path) -> None:
    """fsync every file in `folder` and the folder itself."""
    for path in sorted(folder.iterdir()):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
    _sync_directory(folder)


def _sync_directory(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_latest(directory: Path, tag: str) -> None:
    """`directory/latest` names `tag` (DeepSpeed's format: the tag alone), replaced whole or not at all."""
    partial = directory / "latest.partial"
    with open(partial, "w") as stream:
        stream.write(tag)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(partial, directory / "latest")
    _sync_directory(directory)


def set_aside(directory: Path, first_bad_step: int, why: str, rank: int) -> tuple[Path | None, list[Path]]:
    """Collective, after a stop for a step whose loss or gradients went wrong: the checkpoints from
    step `first_bad_step` - 1 on hold the weights that produced it. They are renamed `<tag>.<why>`
    (kept, no longer resumable) and `latest` names the newest earlier one, which is returned with the
    new names; with none left, `latest` itself is renamed `latest.<why>`."""
    good: list[Path] = []
    bad: list[Path] = []
    for step, path in list_checkpoints(directory):
        (good if step < first_bad_step - 1 else bad).append(path)
    moved = [path.with_name(f"{path.name}.{why}") for path in bad]
    if rank == 0:
        for path, target in zip(bad, moved):
            path.rename(target)
        if good:
            write_latest(directory, good[-1].name)
        elif (directory / "latest").is_file():
            (directory / "latest").rename(directory / f"latest.{why}")
    barrier()
    return (good[-1] if good else None), moved


class CheckpointIncomplete(UserError, FileNotFoundError):
    """The checkpoint `latest` names is missing or has files cut short."""


def incomplete(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (missing, no model states, a file cut short), or None."""
    if not folder.is_dir():
        return f"{folder} does not exist"
    if not (folder / MODEL_STATES).is_file():
        return f"{folder} is incomplete (no {MODEL_STATES})"
    return next((problem for path in sorted(folder.glob("*.pt")) if (problem := torch_file_cut_short(path))), None)


def check_latest(directory: Path) -> None:
    """The checkpoint `latest` names exists and every file of it is complete; otherwise one line naming
    what is wrong and the newest complete checkpoint to resume from instead."""
    tag = (directory / "latest").read_text().strip()
    problem = incomplete(directory / tag)
    if problem is None:
        return
    earlier = next((path for _, path in reversed(list_checkpoints(directory))
                    if path.name != tag and incomplete(path) is None), None)
    hint = (f"the newest complete checkpoint is {earlier.name}: to resume from it, write its name into the latest "
            f"file (echo {earlier.name} > {directory / 'latest'}) and run again" if earlier
            else "there is no complete checkpoint to resume from")
    raise CheckpointIncomplete(f"--resume: {directory / 'latest'} names {tag}: {problem}; {hint}")


def back_to_last_good(directory: Path, error_step: int, why: str, rank: int) -> str:
    """After a non-finite loss or a divergence at `error_step`: the loss of step N is computed with the
    weights of checkpoint N-1, so that one (and any later) already holds what went wrong. They are set
    aside, `latest` names the last good one; returns what to tell the user."""
    good, moved = set_aside(directory, error_step, f"set-aside-{why}-at-step{error_step}", rank)
    aside = f" ({', '.join(path.name for path in moved)} kept aside)" if moved else ""
    if good is None:
        return f"no checkpoint from before it exists{aside}; start again with a lower learning rate"
    return (f"{directory / 'latest'} now names the last good checkpoint, {good.name}{aside}; to go on "
            "from it: --resume with a lower learning rate, gradient clipping or fp32 in the config (the resumed "
            "run trains at the config's schedule)")

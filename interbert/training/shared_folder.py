"""The run-folder contract of a job over several hosts, checked once the process group exists.

Contract: every host sees the same `--output-dir` (a shared file system: NFS, Lustre, GPFS) and the
same input paths. Checkpoints are written by several ranks into one folder (model states by rank
0, one ZeRO partition per rank), `latest` and the run's records by rank 0, and export, pruning,
universal conversion and resume read what other ranks wrote; node-local folders cannot hold a
checkpoint any host can load.

`agree_on_every_host` runs on every rank at the same point:
1. rank 0 writes a token file with a random value into `--output-dir`;
2. every rank reads it back, then runs the entry point's own checks (input paths, the checkpoint
   folder for --resume), each of which may raise a UsageError on this host only;
3. the ranks gather what each found; if any host failed, every rank stops with the same one line
   naming the host and what it lacks (exit status 2 on every host: no rank waits at a collective
   for a rank that has already left).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

from interbert.errors import UsageError, UserError
from interbert.training.distributed import all_gather_objects
from interbert.training.hosts import host_label

TOKEN_PREFIX = ".interbert-shared-"


def _read_token(output_dir: Path, token: tuple[str, str]) -> None:
    name, value = token
    try:
        seen = (output_dir / name).read_text()
    except OSError:
        seen = None
    if seen != value:
        raise UsageError(f"--output-dir {output_dir} is not the folder rank 0 writes to (its token file {name} is "
                         "not there): every host must see the same --output-dir on a shared file system; "
                         "node-local folders (/tmp, /scratch) cannot hold a checkpoint any host can load")


def agree_on_every_host(output_dir: Path, rank: int, checks: list[Callable[[], None]]) -> None:
    """Collective. `checks`: this host's checks, each raising a UserError on a problem."""
    output_dir = Path(output_dir)
    token = None
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        token = (f"{TOKEN_PREFIX}{os.getpid()}", secrets.token_hex(16))
        (output_dir / token[0]).write_text(token[1])
    token = all_gather_objects(token)[0]
    problem = None
    try:
        if rank != 0:
            _read_token(output_dir, token)
        for check in checks:
            check()
    except (UserError, FileNotFoundError) as error:
        problem = str(error)
    found = all_gather_objects((rank, host_label(), problem))
    if rank == 0:
        (output_dir / token[0]).unlink(missing_ok=True)
    failed = [(other, host, text) for other, host, text in found if text]
    if failed:
        other, host, text = failed[0]
        if len(found) == 1:
            raise UsageError(text)
        more = f" (and {len(failed) - 1} more rank(s))" if len(failed) > 1 else ""
        raise UsageError(f"on {host} (rank {other}){more}: {text}")

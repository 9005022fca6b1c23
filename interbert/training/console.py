"""A rank's console that outlives its launcher's connection.

Over several hosts a rank's stdout and stderr are the ssh session that pdsh (or mpirun) opened.
When the launcher is stopped (preemption: SIGTERM to the `deepspeed` command or to pdsh), that
session closes while the rank still has a checkpoint to write; its next print would raise
BrokenPipeError and end it before the save. `RankConsole`:
- `lost()` says whether the reading end of stdout/stderr has gone (poll reports POLLERR/POLLHUP),
  which the launcher watch turns into a stop request;
- `divert()` points file descriptors 1 and 2 at `OUTPUT_DIR/console/rank<R>.log`, so every later
  write (ours, DeepSpeed's loggers, C++ warnings) lands there instead of failing;
- `install()` makes Python-level writes divert on the first broken pipe instead of raising.
"""
from __future__ import annotations

import os
import select
import stat
import sys
import threading
from pathlib import Path

_CLOSED = select.POLLERR | select.POLLHUP | select.POLLNVAL


def _is_pipe_or_socket(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def reader_gone(fd: int) -> bool:
    """Whether `fd` is a pipe or socket whose reading end has been closed."""
    if not _is_pipe_or_socket(fd):
        return False
    poller = select.poll()
    poller.register(fd, 0)  # no events asked: only errors and hang-ups are reported
    return any(events & _CLOSED for _, events in poller.poll(0))


class _TolerantStream:
    """A text stream that diverts the console on a broken pipe instead of raising."""

    def __init__(self, stream, console: RankConsole):
        self._stream, self._console = stream, console

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (BrokenPipeError, ConnectionResetError):
            self._console.divert()
            return self._stream.write(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (BrokenPipeError, ConnectionResetError):
            self._console.divert()

    def __getattr__(self, name):
        return getattr(self._stream, name)


class RankConsole:
    def __init__(self, output_dir: Path, rank: int):
        self.fallback = Path(output_dir) / "console" / f"rank{rank}.log"
        self.diverted = False
        self._lock = threading.Lock()

    def install(self) -> RankConsole:
        if not isinstance(sys.stdout, _TolerantStream):
            sys.stdout = _TolerantStream(sys.stdout, self)
            sys.stderr = _TolerantStream(sys.stderr, self)
        return self

    def lost(self) -> bool:
        """Whether the launcher's end of the console has gone (now, or diverted earlier for it)."""
        return self.diverted or reader_gone(1) or reader_gone(2)

    def divert(self) -> None:
        """Send fds 1 and 2 to the fallback file from now on (once; any thread)."""
        with self._lock:
            if self.diverted:
                return
            self.fallback.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.fallback, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            for target in (1, 2):
                os.dup2(fd, target)
            os.close(fd)
            self.diverted = True
        print(f"[console] the launcher's console closed; this rank's output continues here ({self.fallback})",
              flush=True)


_current: RankConsole | None = None


def install_console(output_dir: Path, rank: int) -> RankConsole:
    """The process's console guard (one per process; the launcher watch asks `current()`)."""
    global _current
    if _current is None:
        _current = RankConsole(output_dir, rank).install()
    return _current


def current() -> RankConsole | None:
    return _current

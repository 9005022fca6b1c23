"""Two watchdogs that keep a job from running on unwatched or hanging for half an hour.

- `LauncherWatch`: the launcher (the `deepspeed` command, torchrun, mpirun) is gone, e.g. killed
  with SIGTERM, which ends it at once without waiting for its ranks, or the console it gave the
  rank (the ssh session of pdsh or mpirun on another host) has closed. Each rank notices within a
  second and turns it into a stop request: the ranks agree at the next step, save and exit.
- `Heartbeat`: a rank that stops answering (SIGSTOP, a hung kernel, a dead node) would block every
  other rank in its next collective until the collective timeout. Each rank bumps a counter in
  the job's rendezvous store every second from a thread of its own; each watches the others'. A
  counter that has not moved for `timeout` seconds ends the watching rank with one line naming the
  silent rank, its host and pid (exit status 4); the launcher then ends the rest. A store that
  stops answering means rank 0, whose process serves it, is the one.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from interbert.training import console
from interbert.training.distributed import remove_cpu_allreduce_buffer
from interbert.training.hosts import host_label

LAUNCHER_MARKERS = ("deepspeed", "torchrun", "torch.distributed.run", "mpirun", "orterun", "prterun", "orted")
EXIT_SILENT_RANK = 4


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), fields[19]


def launcher_processes(pid: int | None = None) -> list[tuple[int, str]]:
    """(pid, start time) of this process's ancestors that belong to its launcher."""
    found, pid = [], os.getppid() if pid is None else pid
    while pid > 1:
        stat = _stat(pid)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            break
        if stat is None or not any(marker in command for marker in LAUNCHER_MARKERS):
            break
        found.append((pid, stat[1]))
        pid = stat[0]
    return found


PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def lost_peer(error: BaseException) -> bool:
    """Whether a collective failed because another rank's process or host went away."""
    from torch.distributed import DistBackendError

    return isinstance(error, DistBackendError) or any(text in str(error) for text in PEER_GONE)


class LauncherWatch:
    def __init__(self, stop, interval: float = 1.0):
        self.stop, self.interval = stop, interval
        self.watched = launcher_processes()

    def start(self) -> LauncherWatch:
        if self.watched or console.current() is not None:
            threading.Thread(target=self._watch, name="interbert-launcher-watch", daemon=True).start()
        return self

    def _watch(self) -> None:
        while True:
            for pid, started in self.watched:
                stat = _stat(pid)
                if stat is None or stat[1] != started:
                    self.stop.request(f"the launcher, pid {pid}, exited")
                    return
            guard = console.current()
            if guard is not None and guard.lost():
                guard.divert()
                self.stop.request(f"the launcher's connection to {host_label()} closed")
                return
            time.sleep(self.interval)


class Heartbeat:
    def __init__(self, rank: int, world_size: int, timeout: float, interval: float = 1.0):
        self.rank, self.world_size, self.timeout, self.interval = rank, world_size, timeout, interval
        self.prefix = f"interbert/heartbeat/{os.environ.get('MASTER_PORT', '')}"
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def stop(self, wait: float = 10.0) -> None:
        """Training is over: the ranks leave at their own pace, and rank 0's exit takes the store with it.
        Waits (at most `wait` seconds) for the thread to leave the store: a daemon thread still inside a
        store call when the interpreter exits is ended mid-C++ and aborts the process ("terminate called
        without an active exception", exit -6)."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait)

    def start(self) -> Heartbeat:
        if self.world_size > 1 and self.timeout > 0:
            self._thread = threading.Thread(target=self._run, name="interbert-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _store(self, timeout: float | None = None):
        from torch.distributed import TCPStore

        return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                        timeout=timedelta(seconds=timeout or self.timeout), wait_for_workers=False)

    def _run(self) -> None:
        try:
            store = self._store()
            store.set(f"{self.prefix}/who/{self.rank}", f"{host_label()} pid {os.getpid()}")
            store.set(f"{self.prefix}/process/{self.rank}", _process_identity(os.getpid()))
        except Exception as error:  # noqa: BLE001 - a store we cannot reach: the job's own checks report it
            print(f"[watchdog] rank {self.rank}: no heartbeat ({error.__class__.__name__}: {error})", flush=True)
            return
        seen = {other: (-1, time.monotonic()) for other in range(self.world_size) if other != self.rank}
        beat = 0
        while not self._stopped.is_set():
            beat += 1
            try:
                store.set(f"{self.prefix}/beat/{self.rank}", str(beat))
                now = time.monotonic()
                for other, (last, since) in seen.items():
                    value = self._beat(store, other)
                    if value != last:
                        seen[other] = (value, now)
                    elif now - since > self.timeout:
                        self._end(other, now - since, self._who(store, other), store)
            except Exception:  # noqa: BLE001 - the store's server lives in rank 0's process
                if self._stopped.is_set():
                    return
                self._end(0, self.timeout, "the rendezvous store's host")
            self._stopped.wait(self.interval)

    def end_for_lost_peer(self, error: BaseException, settle: float = 3.0) -> None:
        """A collective failed because a peer went away (its process died, its host was lost): name
        the rank whose heartbeat stopped, remove this rank's shared memory and end it (exit status 4),
        instead of a gloo/NCCL traceback that names an address. Returns only when no heartbeat runs."""
        if self.world_size < 2 or self.timeout <= 0 or self._stopped.is_set():
            return
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else error.__class__.__name__
        try:
            store = self._store(timeout=settle + 2)
            before = {other: self._beat(store, other) for other in range(self.world_size) if other != self.rank}
            time.sleep(settle)  # live ranks beat every `interval` seconds
            after = {other: self._beat(store, other) for other in before}
            silent = [other for other in before if after[other] == before[other]]
            named = ", ".join(f"rank {other} ({self._who(store, other)})" for other in silent) or "no rank"
        except Exception:  # noqa: BLE001 - the store's server lives in rank 0's process
            named = "rank 0 (the rendezvous store's host)"
        self._stopped.set()
        self._exit(f"[watchdog] rank {self.rank}: {named} is gone (its process ended or its host was lost; the "
                   f"collective failed with: {detail}): ending this rank", named)
    def _beat(self, store, other: int) -> int:
        key = f"{self.prefix}/beat/{other}"
        return int(store.get(key)) if store.check([key]) else -1

    def _who(self, store, other: int) -> str:
        try:
            return store.get(f"{self.prefix}/who/{other}").decode()
        except Exception:  # noqa: BLE001
            return "unknown host"

    def _end(self, other: int, silent: float, who: str, store=None) -> None:
        if self._stopped.is_set():
            return
        killed = store is not None and self._kill_if_here(store, other)
        self._exit(f"[watchdog] rank {self.rank}: rank {other} ({who}) has not answered for {silent:.0f} s "
                   "(stopped, hung or its node lost; --rank-timeout sets the limit): ending this rank so the job "
                   "does not hang" + (f"; rank {other} runs on this machine and was ended too (SIGKILL: a stopped "
                                      "or hung process answers nothing else), so the launcher ends the job at once"
                                      if killed else ""), f"rank {other} ({who})")

    def _kill_if_here(self, store, other: int) -> bool:
        """SIGKILL the silent rank `other` when it is a process of this machine (its registered boot id, pid
        and start time match a live process here): stopped (SIGSTOP) or hung in native code it handles no
        SIGTERM, and DeepSpeed's launcher would wait 30 s on it before ending the job."""
        try:
            registered = store.get(f"{self.prefix}/process/{other}").decode()
        except Exception:  # noqa: BLE001 - no identity: leave the rank to its launcher
            return False
        parts = registered.split()
        if len(parts) != 3 or not parts[1].isdigit() or _process_identity(int(parts[1])) != registered:
            return False
        try:
            os.kill(int(parts[1]), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _exit(self, message: str, named: str) -> None:
        print(message, file=sys.stderr, flush=True)
        # os._exit skips the exit handlers: remove this rank's all-reduce segment here, and the silent
        # ranks' when they ran on this machine (they will be killed and cannot remove their own).
        remove_cpu_allreduce_buffer(self.rank)
        host = host_label()
        for other in range(self.world_size):
            if f"rank {other} ({host} " in named:
                remove_cpu_allreduce_buffer(other)
        os._exit(EXIT_SILENT_RANK)


def _process_identity(pid: int) -> str:
    """This machine's boot id, the pid and its start time: equal only for the same process on the same
    machine (a host name can repeat across machines, and a pid across containers)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
    stat = _stat(pid)
    return f"{boot} {pid} {stat[1]}" if stat else ""

"""Worker processes that return results in the order their units were given.

Each worker has a pipe of its own: unit i goes to worker i mod N and its result is read back from
that worker in turn, so results come in input order and no lock is shared between processes.
That is what makes stopping safe: ``multiprocessing.Pool`` shares one result pipe under a lock, and
when the main process stops reading (Ctrl-C, SIGTERM, an error) while a worker is writing a large
result, ``Pool.terminate`` can wait forever on that lock. Here a stop kills the workers and joins
them, whatever they were doing. On Linux a worker also dies with the main process (a parent killed
with SIGKILL leaves no worker behind).
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from typing import Callable, NoReturn

from interbert.data.ingest.detections import ConversionError

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when its parent goes (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent went before the request took effect
        os._exit(1)


def _serve(work: Callable, connection, parent: int) -> None:
    """A worker: Ctrl-C is left to the main process, SIGTERM ends it; units in, results out, until
    the main process closes its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    while True:
        try:
            unit = connection.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("done", work(unit))
        except BaseException as error:  # handed to the main process, which raises it
            reply = ("raised", error)
        try:
            connection.send(reply)
        except (BrokenPipeError, EOFError):
            return
        except Exception as error:  # a result or exception that cannot be pickled
            connection.send(("raised", RuntimeError(f"a conversion worker could not send its {reply[0]} "
                                                    f"result back: {error!r}")))


def results_in_order(work: Callable, units: Iterable, workers: int, in_flight_per_worker: int = 3) -> Iterator:
    """``work(unit)`` for every unit, in order, computed by ``workers`` processes with at most
    ``in_flight_per_worker`` units given to each at a time (memory stays bounded). An exception
    raised by ``work`` is raised here; a worker that dies is a ConversionError naming it. Closing
    the iterator (or an exception in the caller's loop) kills and joins every worker."""
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    connections: list = []
    processes: list[multiprocessing.process.BaseProcess] = []
    try:
        for _ in range(workers):
            ours, theirs = context.Pipe()
            process = context.Process(  # type: ignore[attr-defined]
                target=_serve, args=(work, theirs, os.getpid()), daemon=True, name="interbert-conversion-worker")
            process.start()
            theirs.close()
            connections.append(ours)
            processes.append(process)
        pending = iter(units)
        sent = received = 0
        exhausted = False
        while True:
            while not exhausted and sent - received < workers * in_flight_per_worker:
                try:
                    unit = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    connections[sent % workers].send(unit)
                except OSError:  # its end closed: the worker is gone
                    _lost(processes, sent % workers)
                sent += 1
            if received == sent:
                return
            index = received % workers
            try:
                kind, payload = connections[index].recv()
            except (EOFError, OSError):
                _lost(processes, index)
            received += 1
            if kind == "raised":
                raise payload
            yield payload
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join()
        for connection in connections:
            connection.close()


def _lost(processes: list, index: int) -> NoReturn:
    """Raise the one line for worker `index`, which went away (killed, out of memory) with work given to it."""
    process = processes[index]
    process.join(timeout=5)
    raise ConversionError(f"conversion worker {index + 1} of {len(processes)} (pid {process.pid}) ended without its "
                          f"result (exit code {process.exitcode}); was it killed, or out of memory? Run again, with "
                          "fewer --workers if memory is short")

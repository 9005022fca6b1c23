"""The conversion's worker processes: results in input order, errors and dead workers named, and a
stop that cannot hang (workers killed and joined even while they write a large result; workers die
with a main process killed by SIGKILL)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from interbert.data.ingest.detections import ConversionError
from interbert.data.ingest.ordered_workers import results_in_order


def _square_after_a_pause(unit: int) -> tuple[int, int]:
    time.sleep(0.002 * ((unit * 7) % 5))  # uneven work: later units often finish first
    return unit, unit * unit


def _fail_on_five(unit: int) -> int:
    if unit == 5:
        raise ValueError("unit 5 is bad")
    return unit


def _die_on_three(unit: int) -> int:
    if unit == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return unit


def _large_result(unit: int) -> tuple[int, bytes]:
    return os.getpid(), bytes(8 << 20)  # far more than a pipe holds: the worker blocks writing it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent has not reaped it yet)
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("workers", [2, 3])
def test_results_come_in_input_order(workers):
    assert list(results_in_order(_square_after_a_pause, range(40), workers)) == [(i, i * i) for i in range(40)]


def test_an_exception_in_a_worker_is_raised_in_the_main_process():
    seen = []
    with pytest.raises(ValueError, match="unit 5 is bad"):
        for result in results_in_order(_fail_on_five, range(10), 2):
            seen.append(result)
    assert seen == [0, 1, 2, 3, 4]


def test_a_worker_that_dies_is_named():
    with pytest.raises(ConversionError, match=r"conversion worker 2 of 2 \(pid \d+\) ended without its result "
                                              r"\(exit code -9\)"):
        list(results_in_order(_die_on_three, range(10), 2))


def test_closing_mid_stream_kills_workers_blocked_on_a_large_result():
    results = results_in_order(_large_result, range(12), 2)
    first, _ = next(results)
    time.sleep(0.5)  # both workers now block writing results nobody reads
    started = time.monotonic()
    results.close()
    assert time.monotonic() - started < 10
    assert not _alive(first)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_workers_die_with_a_main_process_killed_by_sigkill(tmp_path):
    script = textwrap.dedent("""
        import os, sys, time
        from interbert.data.ingest.ordered_workers import results_in_order
        from tests.data.ingest.test_ordered_workers import _large_result
        for pid, _ in results_in_order(_large_result, range(100), 2):
            print(pid, flush=True)
            time.sleep(60)
    """)
    main = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    worker = int(main.stdout.readline())
    assert _alive(worker)
    main.kill()
    main.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)

"""benchmarks/hosts.py at toy size on the two loopback hosts: both layouts' samples/s, their ratio, the
all-reduce share of a step and the loopback caveat are printed; a hostfile of one host is one error
line and exit status 2. Structure and sanity only: the figures themselves vary from run to run."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.helpers.training_runs import REPO, subprocess_env

pytestmark = pytest.mark.slow
SCRIPT = str(REPO / "benchmarks" / "hosts.py")


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


def test_one_host_against_two_hosts_on_loopback(two_hosts, corpus, tmp_path):
    report_file = tmp_path / "hosts.json"
    command = [sys.executable, SCRIPT, "--hosts", str(two_hosts.hostfile()), "--master-addr", "127.0.0.1",
               "--steps", "5", "--warmup", "2", "--micro-batch", "2", "--features", str(corpus / "features"),
               "--captions", str(corpus / "captions.jsonl"), "--work-dir", str(tmp_path / "work"),
               "--json", str(report_file)]
    done = subprocess.run(command, cwd=REPO, env=two_hosts.env(subprocess_env()), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    out = done.stdout
    row = r"\| {} \| [^|]+ \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+)% \|"
    for label in ("one host × 2 ranks", "two hosts × 1 rank"):
        found = re.search(row.format(re.escape(label)), out)
        assert found, out
        samples_per_s, ms_per_step, allreduce_ms, share = map(float, found.groups())
        assert samples_per_s > 0 and ms_per_step > 0 and allreduce_ms >= 0
        assert 0 <= share <= 100
    assert number(r"two hosts / one host: samples/s ×([0-9.]+)", out) > 0
    assert re.search(r"load average [0-9.]+ on \d+ cores before the runs: the machine (looked idle|was busy)", out)
    assert "this measures the software path" in out and "not a network" in out
    assert "127.0.0.1 + 127.0.0.2" in out

    report = json.loads(report_file.read_text())
    assert report["loopback"] is True
    assert report["setup"]["global_batch"] == 4 and report["setup"]["hosts"] == ["127.0.0.1", "127.0.0.2"]
    for layout in report["layouts"].values():
        assert layout["timed_steps"] == 3
        assert 0 <= layout["allreduce_share"] <= layout["zero_reduction_share"] \
            <= layout["zero_reduction_with_waiting_share"] < 1
        assert layout["floor_allreduce_ms"] > 0 and layout["gradient_elements"] > 0
    assert report["ratio_two_hosts_over_one_host"] > 0


def test_a_hostfile_of_one_host_is_one_error_line(tmp_path):
    hostfile = tmp_path / "one-host"
    hostfile.write_text("127.0.0.1 slots=2\n")
    done = subprocess.run([sys.executable, SCRIPT, "--hosts", str(hostfile)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "names 1 host" in lines[0] and "needs two" in lines[0], done.stderr

"""`write_first_gradients`: BF16_Optimizer's fp32 gradient buffer written by the first gradient of a
window instead of zeroed and added to. Training must stay bit-identical to DeepSpeed's own path (weights,
fp32 master weights and the reduced gradients each step reads), with a branch that gets gradients only
in some micro-batches and only on one rank (tests/training/hp_grads_probe.py, the real engine)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.training_runs import REPO, explain, launch_deepspeed, subprocess_env

PROBE = "tests/training/hp_grads_probe.py"


def _reports(folder: Path) -> list[dict]:
    return sorted((json.loads(path.read_text()) for path in folder.glob("rank*.json")),
                  key=lambda report: report["rank"])


def _check(report: dict, world: int) -> None:
    assert report["world"] == world and report["applied"] is True
    assert report["differ"] == [], report
    assert report["compared"] > 20 and report["moved"] == 6, report  # every tensor trained
    # window 1 gives the branch no gradient anywhere: its buffer must read zero, not window 0's
    assert report["right_grad"]["1"] == 0.0 and report["right_grad"]["0"] > 0 and report["right_grad"]["3"] > 0


def test_one_rank_trains_bit_identically(tmp_path):
    result = subprocess.run([sys.executable, PROBE, str(tmp_path)], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, explain(result)
    (report,) = _reports(tmp_path)
    _check(report, 1)


def test_two_ranks_reduce_and_train_bit_identically(tmp_path):
    """Rank 1 never uses the branch: its reduced gradient is rank 0's halved, the same on both ranks."""
    result = launch_deepspeed([PROBE, str(tmp_path)], timeout=300)
    assert result.returncode == 0, explain(result)
    reports = _reports(tmp_path)
    assert [report["rank"] for report in reports] == [0, 1], explain(result)
    for report in reports:
        _check(report, 2)
    assert reports[0]["right_grad"] == reports[1]["right_grad"]

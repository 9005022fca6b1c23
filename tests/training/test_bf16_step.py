"""Our two changes to DeepSpeed's BF16_Optimizer, each against the path it replaces, in the real engine
(tests/training/bf16_step_probe.py, the optimizer every CPU run gets), on one rank and on two under the
real launcher. Training must stay bit-identical: weights, fp32 master weights, AdamW's moments and step,
and the reduced fp32 gradients each step reads, with a branch that gets gradients only in some
micro-batches and only on one rank.
- `write_first_gradients`: the fp32 gradient buffer written by the first gradient of a window instead
  of zeroed and added to, against DeepSpeed's own bookkeeping;
- `fuse_optimizer_step`: clipping, AdamW and the bf16 copy in one pass, against DeepSpeed's step
  (both with first-write gradients and `agree_on_gradients`, as every run has them). On two ranks,
  where one rank alone uses a branch, each step's gradient norm must be the same on both ranks and be
  the norm of every reduced gradient (DeepSpeed's own step leaves the branch out on the other rank)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.training_runs import REPO, explain, launch_deepspeed, subprocess_env

PROBE = "tests/training/bf16_step_probe.py"
CHANGES = ["first-write", "fused-step"]


def _reports(folder: Path) -> list[dict]:
    return sorted((json.loads(path.read_text()) for path in folder.glob("rank*.json")),
                  key=lambda report: report["rank"])


def _check(report: dict, world: int) -> None:
    assert report["world"] == world and report["applied"] is True
    assert report["differ"] == [], report
    assert report["compared"] > 20 and report["moved"] == 6 and report["steps"] == 4, report  # every tensor trained
    # window 1 gives the branch no gradient anywhere: its buffer must read zero, not window 0's
    assert report["right_grad"]["1"] == 0.0 and report["right_grad"]["0"] > 0 and report["right_grad"]["3"] > 0


@pytest.mark.parametrize("change", CHANGES)
def test_one_rank_trains_bit_identically(tmp_path, change):
    result = subprocess.run([sys.executable, PROBE, str(tmp_path), change], cwd=REPO, env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, explain(result)
    (report,) = _reports(tmp_path)
    _check(report, 1)


@pytest.mark.slow
@pytest.mark.parametrize("change", CHANGES)
def test_two_ranks_reduce_and_train_bit_identically(tmp_path, change):
    """Rank 1 never uses the branch: its reduced gradient is rank 0's halved, the same on both ranks;
    each rank steps its own partition and the bf16 partitions are gathered."""
    result = launch_deepspeed([PROBE, str(tmp_path), change], timeout=300)
    assert result.returncode == 0, explain(result)
    reports = _reports(tmp_path)
    assert [report["rank"] for report in reports] == [0, 1], explain(result)
    for report in reports:
        _check(report, 2)
    assert reports[0]["right_grad"] == reports[1]["right_grad"]
    if change == "fused-step":  # both runs agree on the gradients: one norm, over every reduced gradient
        for key in ("norms", "reference_norms"):
            assert reports[0][key] == reports[1][key], (key, reports)
            assert reports[0][key] == pytest.approx(reports[0]["buffer_norms"], rel=1e-6), (key, reports)

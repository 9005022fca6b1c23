"""benchmarks/gpu_check.sh runs end to end; on a CPU (GPU_CHECK_ALLOW_CPU=1) at toy sizes, so its
commands and flags are known to work before a GPU is lent; without that flag and without a GPU it
refuses in one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(tmp_path, **extra):
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"), "DS_ACCELERATOR": "cpu", **extra}
    return subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_gpu_check_measures_what_the_plan_needs(tmp_path):
    result = run(tmp_path, GPU_CHECK_ALLOW_CPU="1", PRESET="tiny", MICRO="1,2", STEPS="1", IMAGES="200")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "throughput.json").read_text())
    rows = [r for r in report["results"] if r["system"] == "interbert-ds"]
    assert [r["micro_batch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["samples_per_s"] > 0 and 0 < row["mfu"] < 1 and row["memory_bytes"] > 0
        assert row["ms_per_step"]["data"] > 0  # real batches through the data path
    plan = report["v100_plan"]
    assert plan["micro_batch"] * plan["gradient_accumulation"] * 8 == 512
    assert json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert "done in" in result.stdout


def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    result = run(tmp_path, CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 2
    assert result.stderr.strip() == "gpu_check: no CUDA device visible to PyTorch; run it on a GPU machine"

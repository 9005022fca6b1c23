"""benchmarks/gpu_check.sh runs end to end; on a CPU (GPU_CHECK_ALLOW_CPU=1) at toy sizes, so its
commands and flags are known to work before a GPU is lent; every step's status and figures land in
one JSON; a step that fails or times out is recorded and the check goes on; without that flag and
without a GPU it refuses in one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # real runs of the entry points or the benchmark scripts
TOY = {"GPU_CHECK_ALLOW_CPU": "1", "PRESET": "tiny", "MICRO": "1,2", "STEPS": "1", "IMAGES": "200",
       "RETRIEVAL_IMAGES": "4"}


def run(tmp_path, **extra):
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"), "DS_ACCELERATOR": "cpu", **extra}
    return subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=400)


def report(tmp_path):
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    return report, {step["name"]: step for step in report["steps"]}


def test_the_gpu_check_measures_what_the_plan_needs(tmp_path):
    result = run(tmp_path, **TOY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary, steps = report(tmp_path)
    assert {name: step["status"] for name, step in steps.items()} == {
        "gpu": "skipped", "device": "ok", "ops": "skipped", "synth": "ok", "throughput_bf16": "ok",
        "retrieval_fp32": "ok"}  # on a CPU: training in bf16, retrieval in fp32
    assert all(step["timeout_s"] >= 0 and step["seconds"] >= 0 for step in steps.values())
    throughput = steps["throughput_bf16"]["figures"]
    rows = [r for r in throughput["results"] if r["system"] == "interbert-ds"]
    assert [r["micro_batch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["samples_per_s"] > 0 and 0 < row["mfu"] < 1 and row["memory_bytes"] > 0
        assert row["ms_per_step"]["data"] > 0  # real batches through the data path
    plan = throughput["v100_plan"]
    assert plan["micro_batch"] * plan["gradient_accumulation"] * 8 == 512
    short = summary["summary"]
    assert [r["micro_batch"] for r in short["throughput"]["bf16"]["rows"]] == [1, 2]
    assert 0 < short["throughput"]["bf16"]["rows"][0]["data_share"] < 1
    assert "measured" in short["throughput"]["bf16"]["peak_source"]
    assert short["retrieval"]["fp32"]["precision"] == "fp32"
    assert short["retrieval"]["fp32"]["pairs_per_second"]["exact"] > 0
    assert steps["device"]["figures"]["train_precisions"] == ["bf16"]
    assert "measured" in summary["peaks"]["bf16"]["source"]
    assert f"figures: {tmp_path / 'out' / 'gpu_check.json'}" in result.stdout and "done in" in result.stdout


def test_a_failed_and_a_timed_out_step_are_recorded_and_the_others_still_run(tmp_path):
    result = run(tmp_path, **TOY, GPU_CHECK_FAIL="throughput_bf16", GPU_CHECK_TIMEOUTS="device=1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, steps = report(tmp_path)
    assert steps["device"]["status"] == "timeout" and steps["device"]["exit_code"] in (124, 137)
    assert steps["device"]["timeout_s"] == 1 and "stopped after 1 s" in steps["device"]["note"]
    assert steps["throughput_bf16"]["status"] == "failed" and steps["throughput_bf16"]["exit_code"] == 3
    assert "failure injected" in steps["throughput_bf16"]["note"]
    # the precisions fall back to the CPU's without the device step, and the later steps run
    assert steps["synth"]["status"] == "ok" and steps["retrieval_fp32"]["status"] == "ok"
    assert steps["retrieval_fp32"]["figures"]["device"] == "cpu"


def test_when_no_measuring_step_ends_ok_the_exit_status_is_1_and_the_json_is_still_written(tmp_path):
    result = run(tmp_path, **TOY, GPU_CHECK_FAIL="device,synth,throughput_bf16,retrieval_fp32")
    assert result.returncode == 1
    assert "no throughput or retrieval step ended ok" in result.stderr
    _, steps = report(tmp_path)
    names = ("device", "synth", "throughput_bf16", "retrieval_fp32")
    assert [steps[name]["status"] for name in names] == ["failed"] * 4


def test_a_spent_budget_skips_the_remaining_steps(tmp_path):
    result = run(tmp_path, **TOY, BUDGET="0")
    assert result.returncode == 1
    _, steps = report(tmp_path)
    assert steps["synth"]["status"] == "skipped" and "budget is spent" in steps["synth"]["note"]


def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    result = run(tmp_path, CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 2
    assert result.stderr.strip() == "gpu_check: no CUDA device visible to PyTorch; run it on a GPU machine"

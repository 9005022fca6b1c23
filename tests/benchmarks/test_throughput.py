"""benchmarks/throughput.py end to end on the tiny preset, and the arithmetic behind it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from memory_meter import SavedTensorMeter
from v100_plan import PlanAssumptions, plan

from interbert.config import InterBertConfig
from interbert.modeling.flops import sample_flops

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # real runs of the entry points or the benchmark scripts

RESULT_FIGURES = ("samples_per_s", "tokens_per_s", "ms_per_step", "tflops", "mfu",
                  "activation_bytes", "model_state_bytes", "memory_bytes", "optimizer")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("throughput")
    command = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--preset", "tiny",
               "--micro-batches", "1,2", "--warmup", "1", "--steps", "2", "--regions", "12",
               "--text-tokens", "10", "--json", str(out / "t.json"), "--plot", str(out / "t.png"),
               "--write-baseline", str(out / "baseline.json"), "--profile-top", "5"]
    # a clean world of one: no rank or rendezvous left in the environment by other tests
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads((out / "t.json").read_text()), finished.stdout, out


def test_every_figure_is_reported_for_both_systems_and_sizes(report):
    data, stdout, _ = report
    rows = {(r["system"], r["micro_batch"]) for r in data["results"]}
    assert rows == {("interbert-ds", 1), ("interbert-ds", 2), ("hf-eager", 1), ("hf-eager", 2)}
    for row in data["results"]:
        for figure in RESULT_FIGURES:
            assert figure in row, figure
        assert row["samples_per_s"] > 0 and row["activation_bytes"] > 0
        assert set(row["ms_per_step"]) == {"data", "forward", "backward", "step"}
        assert 0 < row["mfu"] < 1
    assert [(r["system"], r["micro_batch"]) for r in data["ratios"]] == [("interbert-ds", 1), ("interbert-ds", 2)]
    assert "interbert-ds / hf-eager at micro-batch 2" in stdout


def test_every_figure_has_its_matmul_floor_and_the_share_outside_matmuls(report):
    data, stdout, _ = report
    peak = data["environment"]["peak_flops"]
    for row in data["results"]:
        step_flops = row["tflops"] * 1e12 * sum(row["ms_per_step"].values()) / 1000
        assert row["matmul_floor_ms_per_step"] == pytest.approx(1000 * step_flops / peak, rel=1e-6)
        assert 0 <= row["outside_matmul_share"] < 1  # a profiled step spends some time in matmuls
    assert "floor ms" in stdout and "no-mm %" in stdout


def test_profile_top_names_each_systems_costliest_ops(report):
    data, stdout, _ = report
    for row in data["results"]:
        assert len(row["top_ops"]) == 5
        times = [ms for _, ms, _, _ in row["top_ops"]]
        assert times == sorted(times, reverse=True) and times[0] > 0
    assert "interbert-ds, micro-batch 2: top ops of one profiled step (self time)" in stdout


def test_the_recorded_baseline_holds_the_ratios_and_the_machine(report):
    data, _, out = report
    baseline = json.loads((out / "baseline.json").read_text())
    assert baseline["machine"]["device"] == data["environment"]["device"]
    assert baseline["ratios"] == data["named_ratios"]
    assert baseline["ratios"]["interbert-ds / hf-eager samples/s, micro-batch 2"] == data["ratios"][1]["samples_per_s"]
    assert "--write-baseline" in baseline["command"]


def test_compare_flags_a_ratio_that_fell_by_more_than_15_percent():
    from baseline import compare

    recorded = {"ratios": {"a": 2.0, "b": 1.0, "gone": 1.0}}
    lines, regressions = compare({"a": 1.66, "b": 0.9}, recorded)
    assert regressions == ["a"]  # -17% is flagged, -10% is not
    assert any("a: 2.000 -> 1.660 (-17%)  REGRESSION" in line for line in lines)
    assert any("gone: recorded 1.000, not measured in this run" in line for line in lines)
    assert compare({"a": 2.5, "b": 1.0}, recorded)[1] == []


def test_compare_with_a_file_that_is_no_baseline_is_one_line_and_status_2(tmp_path, capsys):
    from throughput import parse_args

    bad = tmp_path / "b.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--compare", str(bad)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f'error: --compare {bad}: no "ratios" object: write one with --write-baseline')


def test_the_environment_names_precision_ops_and_peak(report):
    environment = report[0]["environment"]
    assert environment["precision"] == "bf16"  # --precision auto on a CPU with the fp16 V100 config
    assert "torch.optim.AdamW" in environment["optimizer"] or "Fused" in environment["optimizer"]
    assert environment["peak_flops"] > 0 and "matmul" in environment["peak_source"]
    assert environment["peak_flops_at_end"] > 0  # measured again after the systems: a drift is seen
    assert "matmul peak at the end of the run: cpu" in report[1]
    for key in ("torch", "deepspeed", "transformers", "device", "layer_norm"):
        assert environment[key]


def test_the_plan_makes_the_global_batch(report):
    v100 = report[0]["v100_plan"]
    assert v100["micro_batch"] * v100["gradient_accumulation"] * 8 == 512 == v100["global_batch_check"]
    assert v100["wall_clock_hours"] > v100["compute_hours"] > 0


def test_the_plot_is_written(report):
    assert (report[2] / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paper_base_layer_flops_match_the_documented_figure():
    flops = sample_flops(InterBertConfig.from_preset("paper-base"), text_tokens=36, regions=100)
    # anchors.md: about 104 GFLOP in the layers per sample at 36 + 100 tokens
    assert flops.layers == pytest.approx(104e9, rel=0.03)


def test_the_plan_picks_the_largest_micro_batch_that_fits():
    assumptions = PlanAssumptions()
    gib = 1024 ** 3
    result = plan(parameters=200_000_000, activation_bytes_per_sample=0.25 * gib,
                  v100_samples_per_s=100.0, assumptions=assumptions)
    fits = {(row["micro_batch"], row["gradient_accumulation"]): row["fits"] for row in result["rows"]}
    assert fits == {(1, 64): True, (2, 32): True, (4, 16): True, (8, 8): True, (16, 4): True, (32, 2): True,
                    (64, 1): False}
    assert (result["micro_batch"], result["gradient_accumulation"]) == (32, 2)
    assert all(row["margin_gib"] > 0 for row in result["rows"] if row["fits"])
    expected_hours = 20 * 4_777_000 / (8 * 100.0) / 3600
    assert result["compute_hours"] == pytest.approx(expected_hours)


def test_saved_tensor_meter_counts_what_autograd_keeps():
    x = torch.randn(64, 32, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(32, 32))
    meter = SavedTensorMeter()
    with meter.counting([weight]):
        y = torch.nn.functional.gelu(x @ weight)  # saves x (the weight is skipped) and x @ weight
    assert meter.bytes == 2 * 64 * 32 * 4
    y.sum().backward()

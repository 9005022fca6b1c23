"""throughput.py's gradient accumulation, thread count, single-rank all-reduce switch, the engine as
DeepSpeed ships it and with DeepSpeed's optimizer step beside ours, and interleaved timing."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from throughput import PlainTorch, parse_args

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # real runs of the entry points or the benchmark scripts
BENCHMARK_CONFIG = REPO / "ds_configs" / "benchmark_cpu_bf16.json"


def _clean_env():
    """A world of one: no rank or rendezvous left in the environment by other tests."""
    return {k: v for k, v in os.environ.items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("accumulation") / "a.json"
    command = [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--preset", "tiny",
               "--micro-batches", "2", "--warmup", "1", "--steps", "2", "--regions", "12",
               "--text-tokens", "10", "--grad-accum", "3", "--threads", "1", "--without-engine",
               "--engine-as-shipped", "--engine-deepspeed-step", "--interleave", "--ds-config", str(BENCHMARK_CONFIG),
               "--json", str(out)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO,
                              env=_clean_env())
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(out.read_text()), finished.stdout


def test_every_system_steps_its_optimizer_once_per_window(accumulated):
    data, stdout = accumulated
    assert [r["system"] for r in data["results"]] == ["interbert-ds", "hf-eager", "interbert-ds-as-shipped",
                                                      "interbert-ds-deepspeed-step", "interbert-plain"]
    for row in data["results"]:
        assert row["gradient_accumulation"] == 3
        assert row["micro_steps"] == 6 and row["optimizer_steps"] == 2
        # samples/s counts every micro-batch of the window
        elapsed = sum(row["ms_per_step"].values()) * 2 / 1000
        assert row["samples_per_s"] == pytest.approx(2 * 3 * 2 / elapsed, rel=1e-6)
    assert data["schedule"]["gradient_accumulation"] == 3
    assert data["schedule"]["threads"] == 1 and data["schedule"]["interleaved"] is True
    assert "3 micro-batch(es) per optimizer step for every system" in stdout
    assert "interbert-ds / hf-eager at micro-batch 2 × accumulation 3" in stdout
    assert "interbert-ds-as-shipped / hf-eager at micro-batch 2 × accumulation 3" in stdout


def test_the_engines_differ_only_in_their_gradient_bookkeeping_and_step(accumulated):
    data, stdout = accumulated
    rows = {r["system"]: r for r in data["results"]}
    flags = {name: (rows[name]["first_write_gradients"], rows[name]["fused_optimizer_step"])
             for name in ("interbert-ds", "interbert-ds-as-shipped", "interbert-ds-deepspeed-step")}
    assert flags == {"interbert-ds": (True, True), "interbert-ds-as-shipped": (False, False),
                     "interbert-ds-deepspeed-step": (True, False)}
    for name in flags:
        assert rows[name]["optimizer_wrapper"] == "BF16_Optimizer" and rows[name]["single_rank_allreduce_skipped"]
    assert "optimizer step: clipping, AdamW and the bf16 copy of the weights in one pass" in stdout


def test_the_benchmark_config_runs_bf16_optimizer_without_the_single_rank_allreduce(accumulated):
    data, stdout = accumulated
    engine = next(r for r in data["results"] if r["system"] == "interbert-ds")
    assert engine["optimizer_wrapper"] == "BF16_Optimizer"
    assert engine["single_rank_allreduce_skipped"] is True
    assert data["schedule"]["single_rank_allreduce"] == "skip"
    assert "all-reduce on this world of one: skipped" in stdout
    for row in data["results"]:
        if not row["system"].startswith("interbert-ds"):
            assert row["optimizer_wrapper"] is None and row["single_rank_allreduce_skipped"] is None


def test_plain_loop_accumulates_the_mean_gradient_and_steps_at_the_boundary():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    reference = torch.nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    system = PlainTorch("plain", model, torch.optim.SGD(model.parameters(), lr=0.5), "SGD", "fp32",
                        torch.device("cpu"), accumulation=3)
    batches = [torch.randn(2, 4) for _ in range(3)]
    before = model.weight.detach().clone()
    for index, x in enumerate(batches):
        system.backward(system.forward({"input": x}).pow(2).mean())
        system.step(boundary=index == 2)
        if index < 2:
            assert torch.equal(model.weight, before) and system.optimizer_steps == 0
    assert system.optimizer_steps == 1
    # one step on the mean of the three micro-batch losses
    loss = sum(reference(x).pow(2).mean() for x in batches) / 3
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.5 * p.grad
    assert torch.allclose(model.weight, reference.weight, atol=1e-6)
    assert torch.allclose(model.bias, reference.bias, atol=1e-6)
    assert model.weight.grad is None  # cleared after the step


def test_flags_are_checked():
    with pytest.raises(SystemExit):
        parse_args(["--grad-accum", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--threads", "0"])
    args = parse_args(["--grad-accum", "4", "--threads", "2", "--single-rank-allreduce", "keep"])
    assert (args.grad_accum, args.threads, args.single_rank_allreduce) == (4, 2, "keep")


SKIP_CHECK = textwrap.dedent("""
    import sys
    import torch
    import throughput as T
    from interbert.config import InterBertConfig
    from interbert.training.distributed import discover_job, init_process_group, job_device

    torch.set_num_threads(1)
    placement = discover_job(None)
    device = init_process_group(placement, job_device(placement)).device
    config = InterBertConfig.from_preset("tiny-demo")
    batches = [T.synthetic_batch(config, 2, 10, 12, seed) for seed in range(4)]
    states = {}
    for mode in ("skip", "keep"):
        torch.manual_seed(0)
        ours = T.Ours(config, sys.argv[1], 2, "auto", device, accumulation=2, single_rank_allreduce=mode)
        initial = {k: v.float().clone() for k, v in ours.module.state_dict().items()}
        assert ours.allreduce_skipped == (mode == "skip"), mode
        assert ours.first_write_gradients, "BF16_Optimizer's gradients are written first, as every run does"
        for index, batch in enumerate(batches):
            ours.backward(ours.forward(batch))
            ours.step(boundary=index % 2 == 1)
        assert ours.engine.global_steps == 2
        states[mode] = {k: v.float().clone() for k, v in ours.module.state_dict().items()}
        assert sum(not torch.equal(v, initial[k]) for k, v in states[mode].items()) > 10, "no training"
    for name, value in states["skip"].items():
        assert torch.equal(value, states["keep"][name]), name
    print("identical", len(states["skip"]))
    # DeepSpeedZeroOptimizer (the paper's config) needs its reduction: the switch leaves it alone
    zero = T.Ours(config, sys.argv[2], 2, "auto", device, accumulation=2, single_rank_allreduce="skip")
    assert zero.wrapper == "DeepSpeedZeroOptimizer" and not zero.allreduce_skipped
    assert zero.engine.enable_backward_allreduce and not zero.first_write_gradients and not zero.fused_step
    assert "not BF16_Optimizer" in zero.step_note, zero.step_note
    for index, batch in enumerate(batches):
        zero.backward(zero.forward(batch))
        zero.step(boundary=index % 2 == 1)
    assert zero.engine.global_steps == 2
    print("zero kept")
""")


def test_skipping_the_single_rank_allreduce_leaves_training_bit_identical(tmp_path):
    script = tmp_path / "skip_check.py"
    script.write_text(SKIP_CHECK)
    # the script imports benchmarks/throughput.py by name, as the tests do (pyproject's pythonpath)
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "benchmarks"), *filter(None, [env.get("PYTHONPATH")])])
    finished = subprocess.run([sys.executable, str(script), str(BENCHMARK_CONFIG),
                               str(REPO / "ds_configs" / "pretrain_v100x8.json")],
                              capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "identical" in finished.stdout and "zero kept" in finished.stdout


def test_interleaved_systems_take_their_timed_windows_in_turn():
    import argparse

    from throughput import measure_together, ours_plain, synthetic_batch

    from interbert.config import InterBertConfig
    from interbert.training.peaks import Peak

    config = InterBertConfig.from_preset("tiny")
    device = torch.device("cpu")
    order = []
    systems = []
    for name in ("a", "b"):
        system = ours_plain(config, BENCHMARK_CONFIG, "fp32", device)
        system.name = name
        forward = system.forward
        system.forward = lambda batch, name=name, forward=forward: order.append(name) or forward(batch)
        batch = synthetic_batch(config, 2, 10, 12, 0)
        systems.append((system, iter(lambda batch=batch: batch, None)))
    args = argparse.Namespace(grad_accum=1, warmup=1, steps=3, profile_top=0)
    results = measure_together(systems, config, 2, args, device, Peak(1e12, "assumed"))
    # warm-up and metered windows per system, then the timed windows in turn, then one profiled each
    assert order == ["a", "a", "b", "b", "a", "b", "a", "b", "a", "b", "a", "b"]
    assert [r["system"] for r in results] == ["a", "b"]
    assert all(r["optimizer_steps"] == 3 and r["samples_per_s"] > 0 for r in results)

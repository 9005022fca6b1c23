#!/usr/bin/env python
"""Training throughput of InterBERT inside the real DeepSpeed engine, against a baseline in
the same run, and the 8×V100-16GB plan of the paper's setup built from the measurements.

  python benchmarks/throughput.py --preset paper-base --micro-batches 1,2 --regions 36 \
      --baseline hf-eager --json runs/throughput.json --plot runs/throughput.png

For each micro-batch: samples/s, tokens/s, the forward / backward / optimizer-step split,
achieved TFLOP/s on real (unpadded) tokens (interbert/modeling/flops.py), MFU against the
device's peak (a table for GPUs; on a CPU, a large matmul measured in this run) and memory
(benchmarks/memory_meter.py). `--data STORE --captions FILE` feeds real batches from a
feature store, so the data path is timed too.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from baseline import compare, read_baseline, write_baseline  # noqa: E402
from memory_meter import SavedTensorMeter, model_state_bytes  # noqa: E402
from v100_plan import PlanAssumptions, plan  # noqa: E402

from interbert.config import PRESETS, InterBertConfig  # noqa: E402
from interbert.modeling import InterBertForPretraining  # noqa: E402
from interbert.modeling.flops import batch_flops, sample_flops  # noqa: E402
from interbert.modeling.layer_norm import layer_norm_implementation  # noqa: E402
from interbert.modeling.parameters import count_parameters  # noqa: E402
from interbert.training.distributed import skip_single_rank_allreduce  # noqa: E402
from interbert.training.fused_step import fuse_optimizer_step  # noqa: E402
from interbert.training.hp_grads import agree_on_gradients, write_first_gradients  # noqa: E402
from interbert.training.optimizer import (  # noqa: E402
    adapt_to_device,
    describe_optimizer,
    parameter_groups,
    torch_fuses_on_cpu,
)
from interbert.training.peaks import device_peak, measured_matmul_peak  # noqa: E402
from interbert.training.precision import resolve_precision  # noqa: E402

MIB = 1024 ** 2
# the paper's setup (ZeRO-1, fp16; bf16 on a CPU) and the same hyper-parameters with the ZeRO-1
# wrapper that is cheapest on one CPU rank (DeepSpeed's BF16_Optimizer, fp32 gradients)
GPU_CONFIG = REPO / "ds_configs" / "pretrain_v100x8.json"
CPU_CONFIG = REPO / "ds_configs" / "benchmark_cpu_bf16.json"


# ---------------------------------------------------------------------------- batches
def synthetic_batch(config: InterBertConfig, micro: int, text_tokens: int, regions: int,
                    seed: int) -> dict:
    """A batch of the paper's shape, every position real: about 15% of words and 10% of
    regions masked (the rates MSM/MRM produce), half the pairs mismatched."""
    g = torch.Generator().manual_seed(seed)
    batch = {
        "input_ids": torch.randint(1000, config.vocab_size, (micro, text_tokens), generator=g),
        "token_type_ids": torch.zeros(micro, text_tokens, dtype=torch.long),
        "text_mask": torch.ones(micro, text_tokens, dtype=torch.bool),
        "region_features": torch.rand(micro, regions, config.region_feature_size, generator=g),
        "region_locations": torch.rand(micro, regions, 5, generator=g),
        "region_mask": torch.ones(micro, regions, dtype=torch.bool),
        "itm_labels": torch.arange(micro) % 2,
    }
    words = torch.rand(micro, text_tokens, generator=g) < 0.15
    words[:, 0] = words[:, -1] = False
    batch["msm_labels"] = batch["input_ids"].masked_fill(~words, -100)
    masked = torch.rand(micro, regions, generator=g) < 0.10
    masked[:, 0] = False
    batch["mrm_labels"] = torch.randint(0, config.num_region_classes, (micro, regions),
                                        generator=g).masked_fill(~masked, -100)
    if config.mrm_loss == "kl":
        batch["mrm_soft_labels"] = torch.softmax(
            torch.randn(micro, regions, config.num_region_classes, generator=g), -1)
    return batch


def batch_source(args, config: InterBertConfig, micro: int):
    """An endless iterator of batches: synthetic, or from the feature store with --data."""
    if not args.data:
        batch = synthetic_batch(config, micro, args.text_tokens, args.regions, args.seed)
        while True:
            yield batch
    from interbert.data.loading.loader import build_loader
    from interbert.data.pretraining.dataset import PretrainingDataset
    from interbert.data.pretraining.tasks import PretrainingTasks

    tasks = PretrainingTasks(mrm_soft_labels=config.mrm_loss == "kl")
    dataset = PretrainingDataset(args.data, args.captions, args.vocab, split=None,
                                 max_text_len=args.text_tokens, max_regions=args.regions - 1,
                                 tasks=tasks, seed=args.seed)
    loader = build_loader(dataset, micro, num_workers=args.workers, seed=args.seed,
                                      drop_last=True)
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


# ---------------------------------------------------------------------------- systems
class Ours:
    """InterBertForPretraining in the DeepSpeed engine (ZeRO, configured precision, the optimizer
    DeepSpeed builds from the config, as interbert/training/startup.py does)."""

    name = "interbert-ds"

    def __init__(self, config, ds_config_path, micro, precision, device, accumulation=1,
                 single_rank_allreduce="skip", first_write=True, fused_step=True):
        import deepspeed

        ds_config = json.loads(Path(ds_config_path).read_text())
        ds_config.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accumulation,
                         train_batch_size=micro * accumulation * int(os.environ.get("WORLD_SIZE", "1")),
                         steps_per_print=10 ** 9, wall_clock_breakdown=False)
        ds_config["tensorboard"] = {"enabled": False}
        ds_config.pop("scheduler", None)
        self.precision = resolve_precision(precision, ds_config, device, str(ds_config_path))
        model = InterBertForPretraining(config)
        adapt_to_device(ds_config, device.type)
        groups = parameter_groups(model, ds_config, str(ds_config_path))
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
        self.optimizer_name = describe_optimizer(self.engine)
        self.module = self.engine.module
        self.wrapper = type(self.engine.optimizer).__name__
        self.allreduce_skipped = single_rank_allreduce == "skip" and skip_single_rank_allreduce(self.engine)
        self.first_write_gradients = first_write and write_first_gradients(self.engine)
        self.fused_step, self.step_note = fuse_optimizer_step(self.engine) if fused_step else (False, "")
        agree_on_gradients(self.engine)  # as every run: one gradient norm on every data-parallel rank
        if not first_write:
            self.name = AS_SHIPPED
        elif not fused_step:
            self.name = DEEPSPEED_STEP

    def forward(self, batch):
        return self.engine(**batch).loss

    def backward(self, loss):
        self.engine.backward(loss)  # the engine divides the loss by the accumulation itself

    def step(self, boundary: bool):
        """Called after every micro-batch, as DeepSpeed asks; the engine applies the optimizer
        only at the end of an accumulation window, which must agree with `boundary`."""
        if self.engine.is_gradient_accumulation_boundary() != boundary:
            raise RuntimeError("the engine's accumulation window and the benchmark's disagree")
        self.engine.step()

    @property
    def optimizer_steps(self) -> int:
        return self.engine.global_steps

    def state_bytes(self):
        return model_state_bytes(self.module, self.engine.optimizer)


class PlainTorch:
    """A model and an optimizer in a plain PyTorch loop, no engine: torch.autocast for
    bf16/fp16 (with a GradScaler for fp16), fp32 weights."""

    wrapper = None

    def __init__(self, name, module, optimizer, optimizer_name, precision_name, device, accumulation=1):
        self.name, self.module, self.optimizer = name, module.to(device), optimizer
        self.optimizer_name = optimizer_name
        self.accumulation = accumulation
        self.optimizer_steps = 0
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision_name)
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
        self.scaler = torch.amp.GradScaler(device.type) if precision_name == "fp16" else None

    def forward(self, batch):
        with self.autocast():
            output = self.module(**batch)
        return getattr(output, "loss", output)

    def backward(self, loss):
        loss = loss / self.accumulation  # the mean over the window, as the engine computes it
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, boundary: bool):
        """Gradients add up in .grad over the window; the optimizer runs at its end only."""
        if not boundary:
            return
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1

    def state_bytes(self):
        return model_state_bytes(self.module, self.optimizer)


BASELINE = "hf-eager"
OURS_PLAIN = "interbert-plain"
AS_SHIPPED = "interbert-ds-as-shipped"  # the engine with BF16_Optimizer as DeepSpeed ships it
DEEPSPEED_STEP = "interbert-ds-deepspeed-step"  # first-write gradients, DeepSpeed's optimizer step


def hf_eager(config, precision_name, device, accumulation=1) -> PlainTorch:
    """The baseline: benchmarks/hf_baseline.py and torch.optim.AdamW with its defaults."""
    from hf_baseline import HfEagerInterBert

    module = HfEagerInterBert(config)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, betas=(0.9, 0.9999), eps=1e-6,
                                  weight_decay=0.01)
    return PlainTorch(BASELINE, module, optimizer,
                      "torch.optim.AdamW (defaults), every parameter decayed", precision_name, device,
                      accumulation)


def ours_plain(config, ds_config_path, precision_name, device, accumulation=1) -> PlainTorch:
    """Our model and optimizer choice outside the engine: splits model + optimizer gains
    from what the engine's bookkeeping costs."""
    module = InterBertForPretraining(config)
    ds_config = json.loads(Path(ds_config_path).read_text())
    groups = parameter_groups(module, ds_config, str(ds_config_path))
    hyper = {k: v for k, v in ds_config["optimizer"].get("params", {}).items() if k in ("lr", "betas", "eps")}
    if device.type == "cuda":  # what DeepSpeed builds for AdamW there
        from deepspeed.ops.adam import FusedAdam

        optimizer, name = FusedAdam(groups, adam_w_mode=True, **hyper), "DeepSpeed FusedAdam (AdamW mode)"
    else:
        fused = torch_fuses_on_cpu()  # what DeepSpeed builds for AdamW on a CPU (training/optimizer.py)
        optimizer = torch.optim.AdamW(groups, fused=fused, **hyper)
        name = "torch.optim.AdamW(fused=True)" if fused else "torch.optim.AdamW"
    return PlainTorch(OURS_PLAIN, module, optimizer, name, precision_name, device, accumulation)


# ---------------------------------------------------------------------------- measurement
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _window(system, batches, device, accumulation, timings=None, meter=None):
    """One optimizer step: `accumulation` micro-batches, forward and backward each, and
    system.step after each (the optimizer itself runs once, at the window's end). Returns
    the batches, the last loss and the states' bytes taken before the optimizer step."""
    seen, states = [], None
    for index in range(accumulation):
        boundary = index == accumulation - 1
        t0 = time.perf_counter()
        batch = _to(next(batches), device)
        _sync(device)
        t1 = time.perf_counter()
        with meter.counting(system.module.parameters()) if meter and index == 0 else nullcontext():
            loss = system.forward(batch)
        _sync(device)
        t2 = time.perf_counter()
        system.backward(loss)
        _sync(device)
        t3 = time.perf_counter()
        if meter and boundary:
            states = system.state_bytes()
        system.step(boundary)
        _sync(device)
        t4 = time.perf_counter()
        if timings is not None:
            for key, seconds in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                timings[key] += seconds
        seen.append(batch)
    return seen, loss, states


def measure(system, batches, config, micro, args, device, peak) -> dict:
    return measure_together([(system, batches)], config, micro, args, device, peak)[0]


def measure_together(systems, config, micro, args, device, peak) -> list[dict]:
    """For each (system, batches): warm-up windows, one memory-metered window, then `args.steps`
    timed optimizer steps, each of `args.grad_accum` micro-batches (the same accumulation for every
    system), and one profiled step. The timed steps alternate between the systems, one window each in
    turn, so that a drift of the machine's speed during the run weighs on every system alike."""
    accumulation = args.grad_accum
    prepared = []
    for system, batches in systems:
        for _ in range(args.warmup):
            _window(system, batches, device, accumulation)
        # memory: saved-for-backward bytes of one micro-batch and model states, in a window of its own
        meter = SavedTensorMeter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _, _, states = _window(system, batches, device, accumulation, meter=meter)
        peak_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        prepared.append({"meter": meter, "states": states, "cuda_peak": peak_bytes, "flops": 0.0, "tokens": 0,
                         "steps_before": system.optimizer_steps, "loss": None,
                         "timings": {"data": 0.0, "forward": 0.0, "backward": 0.0, "step": 0.0}})
    for _ in range(args.steps):
        for (system, batches), run in zip(systems, prepared):
            seen, run["loss"], _ = _window(system, batches, device, accumulation, run["timings"])
            for batch in seen:
                run["flops"] += batch_flops(config, batch).total
                run["tokens"] += int(batch["text_mask"].sum() + batch["region_mask"].sum())
    return [_result(system, batches, run, micro, args, device, peak)
            for (system, batches), run in zip(systems, prepared)]


def _result(system, batches, run, micro, args, device, peak) -> dict:
    accumulation, timings = args.grad_accum, run["timings"]
    optimizer_steps = system.optimizer_steps - run["steps_before"]
    if optimizer_steps != args.steps:
        raise RuntimeError(f"{system.name}: {optimizer_steps} optimizer steps in {args.steps} windows")
    elapsed = sum(timings.values())
    achieved = run["flops"] / elapsed
    share, top_ops = profile_step(system, batches, device, accumulation, args.profile_top)
    floor = run["flops"] / peak.flops_per_second  # the step's FLOPs at the measured matmul peak
    meter, states = run["meter"], run["states"]
    result = {
        "system": system.name,
        "micro_batch": micro,
        "gradient_accumulation": accumulation,
        "optimizer_steps": optimizer_steps,
        "micro_steps": accumulation * args.steps,
        "samples_per_s": micro * accumulation * args.steps / elapsed,
        "tokens_per_s": run["tokens"] / elapsed,
        # per optimizer step, i.e. summed over the window's micro-batches
        "ms_per_step": {k: 1000 * v / args.steps for k, v in timings.items()},
        "tflops": achieved / 1e12,
        "mfu": achieved / peak.flops_per_second,
        # the bare work: the step's FLOPs at the peak of this run, and the share of a profiled step
        # that its matmul-family ops take (matmul_ops: mm, addmm, bmm, baddbmm, fused attention)
        "matmul_floor_ms_per_step": 1000 * floor / args.steps,
        "outside_matmul_share": 1 - share,
        "top_ops": top_ops,
        "activation_bytes": meter.bytes,
        "model_state_bytes": states,
        "optimizer": system.optimizer_name,
        "optimizer_wrapper": system.wrapper,
        "single_rank_allreduce_skipped": getattr(system, "allreduce_skipped", None),
        "first_write_gradients": getattr(system, "first_write_gradients", None),
        "fused_optimizer_step": getattr(system, "fused_step", None),
        "loss": float(run["loss"].detach()),
    }
    result["memory_bytes"] = meter.bytes + sum(states.values())
    if device.type == "cuda":
        result["cuda_peak_allocated_bytes"] = run["cuda_peak"]
        result["memory_bytes"] = result["cuda_peak_allocated_bytes"]
    return result


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
              "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention",
              "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention")


def profile_step(system, batches, device, accumulation, top: int = 0) -> tuple[float, list]:
    """One profiled optimizer step: the share of its wall time spent in matmul-family ops (their own
    time: on a CPU the ops' self time, on CUDA their kernels' device time), and its `top` ops by that
    time as (name, ms, calls, share of the step)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiled:
        started = time.perf_counter()
        _window(system, batches, device, accumulation)
        wall = time.perf_counter() - started
    field = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = profiled.key_averages()
    in_matmuls = sum(getattr(event, field) for event in events if event.key in MATMUL_OPS)
    ranked = sorted(events, key=lambda event: -getattr(event, field))[:top]
    ops = [(event.key, getattr(event, field) / 1e3, event.count, getattr(event, field) / 1e6 / wall)
           for event in ranked]
    return min(in_matmuls / 1e6 / wall, 1.0), ops


def print_top_ops(results):
    """Each system's profiled step, op by op (--profile-top)."""
    for r in results:
        if not r["top_ops"]:
            continue
        print(f"\n{r['system']}, micro-batch {r['micro_batch']}: top ops of one profiled step (self time)")
        for name, ms, calls, share in r["top_ops"]:
            print(f"  {name:<48}{ms:>10.1f} ms{calls:>7} calls{100 * share:>6.1f}%")


# ---------------------------------------------------------------------------- report
def environment(device, precision, peak) -> dict:
    import deepspeed
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()) \
            if Path("/proc/cpuinfo").exists() else platform.processor()
        name = f"{name} ({torch.get_num_threads()} threads)"
    return {
        "device": name, "device_type": device.type, "precision": precision.name,
        "precision_reason": precision.reason, "peak_flops": peak.flops_per_second,
        "peak_source": peak.source, "python": platform.python_version(), "torch": torch.__version__,
        "deepspeed": deepspeed.__version__, "transformers": transformers.__version__,
        "layer_norm": layer_norm_implementation(device),
    }


def print_table(results):
    width = max(16, *(len(r["system"]) + 1 for r in results))
    header = (f"{'system':<{width}}{'micro':>6}{'accum':>6}{'samples/s':>11}{'tokens/s':>10}{'data ms':>9}{'fwd ms':>9}"
              f"{'bwd ms':>9}{'step ms':>9}{'total ms':>9}{'floor ms':>9}{'no-mm %':>8}{'TFLOP/s':>9}{'MFU':>7}"
              f"{'act MiB':>9}{'states MiB':>11}{'mem MiB':>9}")
    print(header)
    print("-" * len(header))
    for r in results:
        ms = r["ms_per_step"]
        print(f"{r['system']:<{width}}{r['micro_batch']:>6}{r['gradient_accumulation']:>6}{r['samples_per_s']:>11.2f}{r['tokens_per_s']:>10.0f}"
              f"{ms['data']:>9.1f}{ms['forward']:>9.1f}{ms['backward']:>9.1f}{ms['step']:>9.1f}"
              f"{sum(ms.values()):>9.1f}{r['matmul_floor_ms_per_step']:>9.1f}{100 * r['outside_matmul_share']:>7.0f}%"
              f"{r['tflops']:>9.3f}{100 * r['mfu']:>6.1f}%{r['activation_bytes'] / MIB:>9.1f}"
              f"{sum(r['model_state_bytes'].values()) / MIB:>11.1f}{r['memory_bytes'] / MIB:>9.1f}")


def ratios(results) -> list[dict]:
    base = {r["micro_batch"]: r for r in results if r["system"] == BASELINE}
    rows = []
    for system in (Ours.name, DEEPSPEED_STEP, AS_SHIPPED, OURS_PLAIN):
        mine = {r["micro_batch"]: r for r in results if r["system"] == system}
        for micro in sorted(set(mine) & set(base)):
            rows.append({
                "system": system,
                "micro_batch": micro,
                "samples_per_s": mine[micro]["samples_per_s"] / base[micro]["samples_per_s"],
                "activation_memory": mine[micro]["activation_bytes"] / max(base[micro]["activation_bytes"], 1),
                "memory": mine[micro]["memory_bytes"] / base[micro]["memory_bytes"],
            })
    return rows


def named_ratios(results, ratio_rows) -> dict[str, float]:
    """The figures a baseline records: each system against hf-eager, and each system's matmul floor
    against its measured step (how close the step is to the bare work), per micro-batch."""
    named = {f"{row['system']} / {BASELINE} samples/s, micro-batch {row['micro_batch']}": row["samples_per_s"]
             for row in ratio_rows}
    for r in results:
        step_ms = sum(r["ms_per_step"].values())
        named[f"{r['system']} matmul floor / step, micro-batch {r['micro_batch']}"] = \
            r["matmul_floor_ms_per_step"] / step_ms
    return named


def print_plan(result, source_preset):
    a = result["assumptions"]
    print(f"\n8×V100-16GB plan: paper-base, fp16, ZeRO-1 over {a['gpus']} GPUs, global batch {a['global_batch']}")
    for key, value in a.items():
        print(f"  assumption {key:<22} {value}")
    print(f"  parameters                        {result['parameters']:,}")
    print(f"  activations per sample (fp16)     {result['activation_bytes_per_sample'] / MIB:.1f} MiB "
          f"(measured on preset {source_preset})")
    print(f"  model states + buckets + context  {result['fixed_bytes_per_gpu'] / 2**30:.2f} GiB per GPU")
    print(f"  every micro-batch x accumulation x {a['gpus']} GPUs = {a['global_batch']} (budget "
          f"{result['budget_bytes_per_gpu'] / 2**30:.1f} GiB per GPU: {100 * (1 - a['margin']):.0f}% of "
          f"{a['gpu_memory_gib']:g} GiB)")
    for row in result["rows"]:
        print(f"  micro-batch {row['micro_batch']:>3} x accumulation {row['gradient_accumulation']:>3}: "
              f"{row['memory_gib']:6.2f} GiB per GPU  "
              + (f"fits, {row['margin_gib']:.2f} GiB to spare" if row["fits"]
                 else f"does not fit ({-row['margin_gib']:.2f} GiB over)"))
    print(f"  chosen micro-batch {result['micro_batch']} × accumulation {result['gradient_accumulation']} "
          f"× {a['gpus']} GPUs = {result['global_batch_check']}")
    print(f"  per-GPU samples/s on a V100       {result['v100_samples_per_s_per_gpu']:.1f}")
    print(f"  {result['optimizer_steps']:,} optimizer steps; "
          f"all-reduce {1000 * result['allreduce_seconds_per_step']:.1f} ms per step")
    print(f"  projected wall-clock: {result['wall_clock_hours']:.1f} h = {result['wall_clock_days']:.2f} days "
          f"(compute {result['compute_hours']:.1f} h + all-reduce {result['allreduce_hours']:.1f} h)")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for system in sorted({r["system"] for r in results}):
        rows = sorted((r for r in results if r["system"] == system), key=lambda r: r["micro_batch"])
        micro = [r["micro_batch"] for r in rows]
        speed.plot(micro, [r["samples_per_s"] for r in rows], marker="o", label=system)
        memory.plot(micro, [r["memory_bytes"] / MIB for r in rows], marker="o", label=system)
    speed.set(xlabel="micro-batch", ylabel="samples/s", title="throughput")
    memory.set(xlabel="micro-batch", ylabel="MiB", title="memory per step")
    for axis in (speed, memory):
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper-base")
    p.add_argument("--config", help="a model config JSON file instead of --preset")
    p.add_argument("--ds-config",
                   help="DeepSpeed config (ZeRO stage, precision, optimizer hyper-parameters); default: "
                        f"{GPU_CONFIG.name} on CUDA, {CPU_CONFIG.name} on a CPU")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--micro-batches", default="1,2", help="comma-separated sweep")
    p.add_argument("--text-tokens", type=int, default=36)
    p.add_argument("--regions", type=int, default=36, help="regions per image incl. the global token (36 or 100)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, metavar="N",
                   help="micro-batches per optimizer step, for every system alike (the engine's "
                        "gradient_accumulation_steps; the plain loops add .grad over N backward passes "
                        "and step once)")
    p.add_argument("--single-rank-allreduce", choices=("skip", "keep"), default="skip",
                   help="on one data-parallel rank with DeepSpeed's BF16_Optimizer, skip the engine's "
                        "post-backward all-reduce (a flatten and copy of the fp32 gradients over a "
                        "world of one; see skip_single_rank_allreduce) or keep it")
    p.add_argument("--threads", type=int,
                   help="torch.set_num_threads for the whole run (default: PyTorch's choice)")
    p.add_argument("--baseline", choices=(BASELINE, "none"), default=BASELINE)
    p.add_argument("--without-engine", action="store_true",
                   help=f"also time our model and optimizer in a plain loop ({OURS_PLAIN}), to "
                        "separate the model's and the engine's share")
    p.add_argument("--engine-as-shipped", action="store_true",
                   help=f"also time the engine with BF16_Optimizer as DeepSpeed ships it ({AS_SHIPPED}: the "
                        "fp32 gradients zeroed each step and added to, and DeepSpeed's optimizer step), against "
                        "the first-write gradients (interbert/training/hp_grads.py) and one-pass step every run uses")
    p.add_argument("--engine-deepspeed-step", action="store_true",
                   help=f"also time the engine with first-write gradients and DeepSpeed's own optimizer step "
                        f"({DEEPSPEED_STEP}), against the one-pass step every CPU run uses "
                        "(interbert/training/fused_step.py)")
    p.add_argument("--interleave", action="store_true",
                   help="keep every system of a micro-batch in memory and time their windows in turn (one "
                        "each, round after round), so that the machine's drift weighs on all alike; CPU only")
    p.add_argument("--data", help="a feature store: time real batches through the data path")
    p.add_argument("--captions", help="caption manifest for --data")
    p.add_argument("--vocab", help="WordPiece vocab for --data (default: the bundled test vocab)")
    p.add_argument("--workers", type=int, default=1, help="data-loader workers for --data")
    p.add_argument("--per-gpu-samples-per-s", type=float,
                   help="V100 samples/s per GPU for the plan, instead of scaling this run's by peaks")
    p.add_argument("--json", help="write every figure and the environment here")
    p.add_argument("--write-baseline", metavar="FILE",
                   help="record this run's ratios and machine as a baseline (benchmarks/baseline.json)")
    p.add_argument("--compare", metavar="FILE",
                   help="compare this run's ratios with a recorded baseline; exit status 1 when any fell by "
                        "more than 15%%")
    p.add_argument("--plot", help="write a PNG of samples/s and memory against micro-batch")
    p.add_argument("--profile-top", type=int, default=0, metavar="N",
                   help="print each system's N most costly ops in its profiled step (torch.profiler self time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.micro_batches = [int(m) for m in args.micro_batches.split(",") if m]
    except ValueError:
        p.error(f"--micro-batches {args.micro_batches!r}: give comma-separated integers such as 1,2,4")
    if not args.micro_batches or min(args.micro_batches) < 1:
        p.error("--micro-batches needs at least one positive size")
    if args.grad_accum < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--grad-accum and --steps must be at least 1, --warmup at least 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.ds_config and not Path(args.ds_config).is_file():
        p.error(f"--ds-config {args.ds_config} does not exist")
    if args.data and not args.captions:
        p.error("--data needs --captions (the caption manifest of the store)")
    if args.compare:
        try:
            read_baseline(args.compare)
        except ValueError as error:
            p.error(f"--compare {error}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from interbert.training.distributed import discover_job, init_process_group, job_device
    from interbert.training.extensions import use_environment_ninja

    use_environment_ninja()  # DeepSpeed's ops load with the ninja that built them
    placement = discover_job(args.local_rank)
    device = init_process_group(placement, job_device(placement)).device
    if not args.ds_config:
        args.ds_config = str(GPU_CONFIG if device.type == "cuda" else CPU_CONFIG)
    if args.interleave and device.type == "cuda":
        print("--interleave keeps every system in GPU memory at once, which its peak-memory figures would count: "
              "leave it out on CUDA", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    config = InterBertConfig.from_json_file(args.config) if args.config else InterBertConfig.from_preset(args.preset)
    results = []
    precision = None
    for micro in args.micro_batches:
        ours = Ours(config, args.ds_config, micro, args.precision, device, args.grad_accum,
                    args.single_rank_allreduce)
        precision = ours.precision
        if not results:
            peak = device_peak(device, precision.dtype) if device.type == "cuda" else \
                measured_matmul_peak(device, precision.dtype, size=2048)
            print(f"precision: {precision.name} ({precision.reason})")
            print(f"optimizer: {ours.optimizer_name} in DeepSpeed's {ours.wrapper} "
                  f"({Path(args.ds_config).name}); LayerNorm: {layer_norm_implementation(device)}")
            print(ours.step_note)
            print("post-backward all-reduce on this world of one: "
                  f"{'skipped' if ours.allreduce_skipped else 'kept'} (--single-rank-allreduce)")
            print(f"gradient accumulation: {args.grad_accum} micro-batch(es) per optimizer step for "
                  f"every system (one optimizer step per window); {torch.get_num_threads()} threads")
            print(f"peak: {peak.source}")
        others = []
        if args.baseline == BASELINE:
            others.append(lambda name=precision.name: hf_eager(config, name, device, args.grad_accum))
        if args.engine_as_shipped:
            others.append(lambda name=precision.name, micro=micro: Ours(config, args.ds_config, micro, name, device,
                                                                        args.grad_accum, args.single_rank_allreduce,
                                                                        first_write=False, fused_step=False))
        if args.engine_deepspeed_step:
            others.append(lambda name=precision.name, micro=micro: Ours(config, args.ds_config, micro, name, device,
                                                                        args.grad_accum, args.single_rank_allreduce,
                                                                        fused_step=False))
        if args.without_engine:
            others.append(lambda name=precision.name: ours_plain(config, args.ds_config, name, device, args.grad_accum))
        if args.interleave:  # every system alive at once, their timed windows in turn
            systems = [(system, batch_source(args, config, micro)) for system in [ours, *(b() for b in others)]]
            results.extend(measure_together(systems, config, micro, args, device, peak))
            del systems, ours
            gc.collect()
            continue
        results.append(measure(ours, batch_source(args, config, micro), config, micro, args, device, peak))
        del ours
        gc.collect()
        for build in others:
            system = build()
            results.append(measure(system, batch_source(args, config, micro), config, micro, args, device, peak))
            del system
            gc.collect()
    # a CPU's speed can drift during a run (other work on the host): the peak again at the end, and said
    end_peak = None if device.type == "cuda" else measured_matmul_peak(device, precision.dtype, size=2048)
    print()
    print_table(results)
    if end_peak is not None:
        drift = end_peak.flops_per_second / peak.flops_per_second
        changed = "; the machine changed speed during the run: compare ratios" if abs(drift - 1) > 0.2 else ""
        print(f"matmul peak at the end of the run: {end_peak.source} (×{drift:.2f} the one at the start{changed})")
    print(f"(ms are per optimizer step: summed over its {args.grad_accum} micro-batch(es); floor: the step's "
          "FLOPs at this run's matmul peak; no-mm: the share of a profiled step outside matmul-family ops; "
          "activations are one micro-batch's)")
    print_top_ops(results)
    ratio_rows = ratios(results)
    for row in ratio_rows:
        print(f"{row['system']} / {BASELINE} at micro-batch {row['micro_batch']} × accumulation "
              f"{args.grad_accum}: samples/s ×{row['samples_per_s']:.2f}, "
              f"activation memory ×{row['activation_memory']:.2f}, memory ×{row['memory']:.2f}")

    best = max((r for r in results if r["system"] == Ours.name), key=lambda r: r["samples_per_s"])
    assumptions = PlanAssumptions()
    if args.per_gpu_samples_per_s:
        v100_rate = args.per_gpu_samples_per_s
    else:
        # same MFU on a V100 as measured here, work per sample rescaled to paper-base
        paper = InterBertConfig.from_preset("paper-base")
        work_ratio = sample_flops(config, args.text_tokens, args.regions).total / \
            sample_flops(paper, args.text_tokens, args.regions).total
        v100_rate = best["samples_per_s"] * work_ratio * assumptions.v100_peak / peak.flops_per_second
    bytes_scale = 0.5 if precision.name == "fp32" else 1.0  # activations of an fp32 run, halved for fp16
    paper_parameters = count_parameters(InterBertForPretraining(InterBertConfig.from_preset("paper-base")))["total"]
    activation = bytes_scale * best["activation_bytes"] / best["micro_batch"]
    v100 = plan(paper_parameters, activation, v100_rate, assumptions)
    print_plan(v100, args.config or args.preset)

    report = {
        "environment": {**environment(device, precision, peak), "optimizer": best["optimizer"],
                        "peak_flops_at_end": end_peak.flops_per_second if end_peak else None},
        "model": {"preset": None if args.config else args.preset, "config": args.config,
                  "parameters": count_parameters(InterBertForPretraining(config))},
        "shape": {"text_tokens": args.text_tokens, "regions": args.regions, "data": args.data},
        "schedule": {"gradient_accumulation": args.grad_accum, "warmup_windows": args.warmup,
                     "timed_optimizer_steps": args.steps, "threads": torch.get_num_threads(),
                     "single_rank_allreduce": args.single_rank_allreduce, "interleaved": args.interleave,
                     "ds_config": str(args.ds_config)},
        "flops_per_sample_paper_base": {
            "layers": sample_flops(InterBertConfig.from_preset("paper-base"), args.text_tokens, args.regions).layers,
            "total": sample_flops(InterBertConfig.from_preset("paper-base"), args.text_tokens, args.regions).total,
        },
        "results": results,
        "ratios": ratio_rows,
        "named_ratios": named_ratios(results, ratio_rows),
        "v100_plan": v100,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    status = 0
    named = named_ratios(results, ratio_rows)
    if args.compare:
        lines, regressions = compare(named, read_baseline(args.compare))
        machine = read_baseline(args.compare)["machine"]
        print(f"\nagainst the baseline {args.compare} (measured on {machine.get('device')}, "
              f"{machine.get('precision')}):")
        print("\n".join(lines))
        if regressions:
            print(f"{len(regressions)} ratio(s) fell by more than 15%: {', '.join(regressions)}")
            status = 1
    if args.write_baseline:
        machine = {key: value.replace(f"{REPO}/", "") if isinstance(value, str) else value  # paths in the repo
                   for key, value in report["environment"].items()}
        write_baseline(args.write_baseline, named, machine,
                       "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv))
        print(f"wrote the baseline {args.write_baseline}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Train a small module in the real DeepSpeed engine (ds_configs/benchmark_cpu_bf16.json: bf16,
ZeRO-1, BF16_Optimizer, clipping) twice from the same seed, with and without one of our changes to
BF16_Optimizer, then print one JSON line per rank: whether the change applied, and the parameters,
fp32 master weights, AdamW moments and fp32 gradients that differ between the two runs (written to
FOLDER/rank<N>.json when a folder is given: the ranks' printed lines can interleave).

    python bf16_step_probe.py FOLDER first-write   as DeepSpeed ships it against `write_first_gradients`
    python bf16_step_probe.py FOLDER fused-step    first-write and `agree_on_gradients` (as every run), against
                                                   the same with `fuse_optimizer_step`

Each run also reports, per window, the gradient norm its step used and the norm of every reduced
gradient in the fp32 buffer (the buffer holds zeros for parameters no rank used).

One branch of the module gets gradients only in some micro-batches, and only on rank 0: a stale
gradient left in the buffer (or one reduced from another rank) changes the weights. Every flat
partition holds a multiple of 16 elements on one rank and on two (1,600 parameters), so all of it
lies in torch's vectorized AdamW. Run it with plain python (one rank) or under the deepspeed
launcher (two)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from interbert.training.distributed import discover_job, init_process_group, job_device, skip_single_rank_allreduce
from interbert.training.fused_step import fuse_optimizer_step
from interbert.training.hp_grads import agree_on_gradients, write_first_gradients
from interbert.training.optimizer import adapt_to_device

CONFIG = Path(__file__).resolve().parents[2] / "ds_configs" / "benchmark_cpu_bf16.json"
WINDOWS = 4
ACCUMULATION = 2
# what each comparison trains: (the reference's changes, the changed run's)
COMPARISONS = {"first-write": ((), ("first-write",)),
               "fused-step": (("first-write", "agree"), ("first-write", "agree", "fused-step"))}


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(16, 32)
        self.left = nn.Linear(32, 16)
        self.right = nn.Linear(32, 16)

    def forward(self, x, use_right: bool):
        hidden = torch.tanh(self.shared(x))
        out = self.left(hidden)
        if use_right:
            out = out + self.right(hidden)
        return out.float().pow(2).mean()


def uses_right(window: int, micro: int, rank: int) -> bool:
    """Window 0: micro-batch 0 only; window 1: never; window 2: micro-batch 1 only; window 3: both
    (rank 0 only: on rank 1 the branch never has a gradient)."""
    return rank == 0 and (window, micro) in {(0, 0), (2, 1), (3, 0), (3, 1)}


def train(changes: tuple[str, ...], rank: int, world: int) -> tuple[bool, dict, list, list]:
    """One run with `changes` (of "first-write", "fused-step", "agree") applied: (whether all applied, the
    state, the step's gradient norm and the norm of the whole reduced buffer per window)."""
    import deepspeed

    config = json.loads(CONFIG.read_text())
    config.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=ACCUMULATION,
                  train_batch_size=4 * ACCUMULATION * world, gradient_clipping=0.05)
    config["optimizer"]["params"]["lr"] = 0.05
    adapt_to_device(config, "cpu")  # the optimizer every CPU run gets: torch's fused AdamW
    torch.manual_seed(0)
    model = TwoBranches()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    skip_single_rank_allreduce(engine)
    applied = all([write_first_gradients(engine) if "first-write" in changes else True,
                   fuse_optimizer_step(engine)[0] if "fused-step" in changes else True,
                   agree_on_gradients(engine) == (world > 1) if "agree" in changes else True])
    names = {id(param): name for name, param in engine.module.named_parameters()}
    initial = {name: value.detach().float().clone() for name, value in engine.module.state_dict().items()}
    generator = torch.Generator().manual_seed(100 + rank)
    state, norms, buffer_norms = {}, [], []
    for window in range(WINDOWS):
        for micro in range(ACCUMULATION):
            x = torch.randn(4, 16, generator=generator).to(torch.bfloat16)
            engine.backward(engine(x, uses_right(window, micro, rank)))
            if micro == ACCUMULATION - 1:  # the reduced fp32 gradients the step will read
                for group, grads in zip(engine.optimizer.bf16_groups, engine.optimizer.fp32_groups_gradients):
                    state.update({f"grad.{window}.{names[id(param)]}": grad.clone()
                                  for param, grad in zip(group, grads)})
                buffer_norms.append(float(torch.linalg.vector_norm(
                    torch.cat(list(engine.optimizer.fp32_groups_gradients_flat)).double())))
            engine.step()
            if micro == ACCUMULATION - 1:
                norms.append(float(engine.optimizer._global_grad_norm))
    state.update({name: value.detach().float().clone() for name, value in engine.module.state_dict().items()})
    for i, flat in enumerate(engine.optimizer.fp32_groups_flat_partition):
        adam = engine.optimizer.optimizer.state[flat]
        state.update({f"master.{i}": flat.detach().clone(), f"exp_avg.{i}": adam["exp_avg"].clone(),
                      f"exp_avg_sq.{i}": adam["exp_avg_sq"].clone(),
                      f"adam_step.{i}": torch.as_tensor(adam["step"]).clone()})
    state["moved"] = torch.tensor(sum(not torch.equal(initial[name], state[name]) for name in initial))
    return applied, state, norms, buffer_norms


def main() -> int:
    placement = discover_job(None)
    init_process_group(placement, job_device(placement))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.set_num_threads(1)
    args = [arg for arg in sys.argv[1:] if not arg.startswith("--")]  # the launcher adds --local_rank
    folder = args[0] if args else None
    reference, changed = COMPARISONS[args[1] if len(args) > 1 else "first-write"]
    applied, first, norms, buffer_norms = train(changed, rank, world)
    _, shipped, reference_norms, _ = train(reference, rank, world)
    differ = sorted(name for name, value in first.items() if not torch.equal(value, shipped[name]))
    right = {window: float(first[f"grad.{window}.right.weight"].abs().sum()) for window in range(WINDOWS)}
    report = json.dumps({"rank": rank, "world": world, "applied": applied, "differ": differ, "compared": len(first),
                         "moved": int(first["moved"]), "right_grad": right,
                         "steps": float(first["adam_step.0"]), "norms": norms, "reference_norms": reference_norms,
                         "buffer_norms": buffer_norms})
    if folder:
        (Path(folder) / f"rank{rank}.json").write_text(report)
    print(report, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

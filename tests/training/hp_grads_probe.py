"""Train a small module in the real DeepSpeed engine (ds_configs/benchmark_cpu_bf16.json: bf16,
ZeRO-1, BF16_Optimizer, clipping) twice from the same seed: with BF16_Optimizer as DeepSpeed ships it
and with `write_first_gradients`, then print one JSON line per rank: whether the switch applied, and
the parameters, fp32 master weights and fp32 gradients that differ between the two runs (written to
FOLDER/rank<N>.json when a folder is given: the ranks' printed lines can interleave).

One branch of the module gets gradients only in some micro-batches, and only on rank 0: a stale
gradient left in the buffer (or one reduced from another rank) changes the weights. Run it with
plain python (one rank) or under the deepspeed launcher (two)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from interbert.training.distributed import discover_job, init_process_group, job_device, skip_single_rank_allreduce
from interbert.training.hp_grads import write_first_gradients

CONFIG = Path(__file__).resolve().parents[2] / "ds_configs" / "benchmark_cpu_bf16.json"
WINDOWS = 4
ACCUMULATION = 2


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(16, 32)
        self.left = nn.Linear(32, 8)
        self.right = nn.Linear(32, 8)

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


def train(first_write: bool, rank: int, world: int) -> tuple[bool, dict]:
    import deepspeed

    config = json.loads(CONFIG.read_text())
    config.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=ACCUMULATION,
                  train_batch_size=4 * ACCUMULATION * world, gradient_clipping=0.05)
    config["optimizer"]["params"]["lr"] = 0.05
    torch.manual_seed(0)
    model = TwoBranches()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    skip_single_rank_allreduce(engine)
    applied = write_first_gradients(engine) if first_write else False
    names = {id(param): name for name, param in engine.module.named_parameters()}
    initial = {name: value.detach().float().clone() for name, value in engine.module.state_dict().items()}
    generator = torch.Generator().manual_seed(100 + rank)
    state = {}
    for window in range(WINDOWS):
        for micro in range(ACCUMULATION):
            x = torch.randn(4, 16, generator=generator).to(torch.bfloat16)
            engine.backward(engine(x, uses_right(window, micro, rank)))
            if micro == ACCUMULATION - 1:  # the reduced fp32 gradients the step will read
                for group, grads in zip(engine.optimizer.bf16_groups, engine.optimizer.fp32_groups_gradients):
                    state.update({f"grad.{window}.{names[id(param)]}": grad.clone()
                                  for param, grad in zip(group, grads)})
            engine.step()
    state.update({name: value.detach().float().clone() for name, value in engine.module.state_dict().items()})
    state.update({f"master.{i}": flat.detach().clone()
                  for i, flat in enumerate(engine.optimizer.fp32_groups_flat_partition)})
    state["moved"] = torch.tensor(sum(not torch.equal(initial[name], state[name]) for name in initial))
    return applied, state


def main() -> int:
    placement = discover_job(None)
    init_process_group(placement, job_device(placement))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.set_num_threads(1)
    applied, first = train(True, rank, world)
    _, shipped = train(False, rank, world)
    differ = sorted(name for name, value in first.items() if not torch.equal(value, shipped[name]))
    right = {window: float(first[f"grad.{window}.right.weight"].abs().sum()) for window in range(WINDOWS)}
    report = json.dumps({"rank": rank, "world": world, "applied": applied, "differ": differ, "compared": len(first),
                         "moved": int(first["moved"]), "right_grad": right})
    folder = next((arg for arg in sys.argv[1:] if not arg.startswith("--")), None)  # the launcher adds --local_rank
    if folder:
        (Path(folder) / f"rank{rank}.json").write_text(report)
    print(report, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

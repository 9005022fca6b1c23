#!/usr/bin/env python
"""The attention's query/key/value projections, forward and backward: three H×H maps (as the model
has them, BERT's names and layout) against one fused 3H×H map (one parameter, and the same three
parameters concatenated per call), at the token counts of a training step, beside the bare matmul
work of the same shapes (their FLOPs at the peak of a large matmul measured in this run).

  python benchmarks/qkv_projection.py --threads 1
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _timed(step, repeats: int) -> float:
    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def measure(tokens: int, hidden: int, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """Seconds per forward+backward of each way, and the matmul floor of that work."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=g).to(dtype).requires_grad_()
    weights = [torch.randn(hidden, hidden, generator=g).to(dtype).requires_grad_() for _ in range(3)]
    biases = [torch.zeros(hidden, dtype=dtype, requires_grad=True) for _ in range(3)]
    fused_weight = torch.cat(weights).detach().requires_grad_()
    fused_bias = torch.cat(biases).detach().requires_grad_()

    def three():
        sum(F.linear(x, w, b).sum() for w, b in zip(weights, biases)).backward()

    def fused_parameter():
        F.linear(x, fused_weight, fused_bias).sum().backward()

    def concatenated():
        F.linear(x, torch.cat(weights), torch.cat(biases)).sum().backward()

    # forward x·Wᵀ, backward dx and dW: three matmuls of tokens × hidden × 3·hidden each
    flops = 3 * 2 * tokens * hidden * 3 * hidden
    a = torch.randn(2048, 2048, generator=g).to(dtype)
    peak = 2 * 2048 ** 3 / _timed(lambda: a @ a, max(3, repeats // 4))
    return {"three projections": _timed(three, repeats), "one fused parameter": _timed(fused_parameter, repeats),
            "three, concatenated per call": _timed(concatenated, repeats), "matmul floor": flops / peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--tokens", default="72,456",
                   help="rows per projection: paper-base at micro-batch 1 (36 words + 36 regions), release-base at "
                        "its shapes (8 pairs × (20 words + 37 regions))")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} threads; ms per forward+backward of the Q/K/V projections (hidden {args.hidden})")
    print(f"{'dtype':<6}{'tokens':>8}{'three':>10}{'fused':>10}{'concat':>10}{'floor':>10}{'fused/three':>13}")
    for name, dtype in DTYPES.items():
        for tokens in map(int, args.tokens.split(",")):
            ms = {k: 1000 * v for k, v in measure(tokens, args.hidden, dtype, args.repeats).items()}
            print(f"{name:<6}{tokens:>8}{ms['three projections']:>10.3f}{ms['one fused parameter']:>10.3f}"
                  f"{ms['three, concatenated per call']:>10.3f}{ms['matmul floor']:>10.3f}"
                  f"{ms['one fused parameter'] / ms['three projections']:>12.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

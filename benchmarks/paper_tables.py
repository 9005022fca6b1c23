#!/usr/bin/env python
"""The shape of the paper's Tables 1 and 2 at CPU scale, on the synthetic corpus.

  python benchmarks/paper_tables.py --seeds 2 --pretrain-steps 100 --finetune-steps 40 \\
      --json runs/paper_tables.json

For each seed: a synthetic corpus; two tiny models pretrained from the same initial weights,
one with MSM + MRM + ITM (the paper's tasks) and one with MLM + MOM + ITM (Table 2's baseline);
zero-shot retrieval of both on the test split; then Flickr30K-style 4-way fine-tuning (with
hard negatives and the binary ITM loss) of both and of a model without multi-modal pretraining,
and the full retrieval evaluation of each. Every cell is the mean ± standard deviation over
the seeds. Pretraining and fine-tuning here run a plain PyTorch loop (AdamW, linear warm-up and
decay) over the project's datasets, model and losses, because the DeepSpeed engine's start-up
would dominate runs this short; `interbert/pretrain.py` and `interbert/finetune.py` are the
engine-backed paths. The synthetic corpus is a learnable toy, so the table shows whether the
pipeline reproduces the paper's orderings, not the paper's numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from interbert.config import InterBertConfig  # noqa: E402
from interbert.data.loader import build_pretraining_loader  # noqa: E402
from interbert.data.pretraining_dataset import PretrainingDataset, PretrainingTasks  # noqa: E402
from interbert.data.retrieval import RetrievalCorpus  # noqa: E402
from interbert.data.synth import synthesize_corpus  # noqa: E402
from interbert.finetuning.batching import build_loader, collate_choices  # noqa: E402
from interbert.finetuning.flickr30k import Flickr30kTrainSet, HardNegativeMiner  # noqa: E402
from interbert.finetuning.model import InterBertForFinetuning, TaskSpec  # noqa: E402
from interbert.finetuning.retrieval import evaluate_full_retrieval  # noqa: E402
from interbert.modeling import InterBertForPretraining  # noqa: E402
from interbert.training.optimizer import decay_parameter_groups  # noqa: E402

RECALLS = ("t2i_r@1", "t2i_r@5", "t2i_r@10")
ROWS = ("w/o pretraining", "MLM+MOM+ITM", "MSM+MRM+ITM")


def _optimizer(model, lr: float, steps: int):
    optimizer = torch.optim.AdamW(decay_parameter_groups(model, 0.01), lr=lr, eps=1e-6)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(steps - warmup, 1))))
    return optimizer, schedule


def _cycle(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def pretrain(model, corpus: Path, text_task: str, region_task: str, steps: int, batch: int, lr: float, seed: int):
    tasks = PretrainingTasks(text_task=text_task, region_task=region_task, mrm_soft_labels=True)
    dataset = PretrainingDataset(corpus / "features", corpus / "captions.jsonl", split="train", tasks=tasks, seed=seed)
    loader = build_pretraining_loader(dataset, batch, seed=seed, drop_last=True)
    optimizer, schedule = _optimizer(model, lr, steps)
    model.train()
    for _, batch_inputs in zip(range(steps), _cycle(loader)):
        loss = model(**batch_inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return model.eval()


def finetune(pretraining, corpus: Path, steps: int, batch: int, lr: float, seed: int, pool: int, refresh: int):
    model = InterBertForFinetuning(pretraining, TaskSpec("flickr30k", "retrieval"))
    dataset = Flickr30kTrainSet(corpus / "features", corpus / "captions.jsonl", max_regions=36, seed=seed)
    loader = build_loader(dataset, collate_choices, batch, seed=seed)
    miner = HardNegativeMiner(dataset, loader.sampler, pool_size=pool, refresh_every=refresh, window=refresh * batch,
                              device=torch.device("cpu"), dtype=torch.float32, seed=seed)
    optimizer, schedule = _optimizer(model, lr, steps)
    model.train()
    for step, batch_inputs in zip(range(steps), _cycle(loader)):
        if step % refresh == 0:
            miner.refresh(model.pretraining)
        batch_inputs = {k: v for k, v in batch_inputs.items() if not k.startswith("count_")}
        loss = model(**batch_inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return model.pretraining.eval()


def recalls(model, corpus: RetrievalCorpus) -> dict:
    metrics = evaluate_full_retrieval(model, corpus).full.metrics
    return {key: 100 * metrics[key] for key in RECALLS}


def run_seed(seed: int, args, scratch: Path) -> dict:
    corpus_dir = scratch / f"corpus-{seed}"
    synthesize_corpus(corpus_dir, args.images, seed=seed, val_images=0, test_images=args.test_images, progress=False)
    test = RetrievalCorpus(corpus_dir / "features", corpus_dir / "captions.jsonl", split="test", max_regions=36)
    config = InterBertConfig.from_preset("tiny")
    torch.manual_seed(seed)
    initial = InterBertForPretraining(config).state_dict()
    results = {}
    for row in ROWS:
        torch.manual_seed(seed)
        model = InterBertForPretraining(config)
        model.load_state_dict(initial)
        if row != "w/o pretraining":
            text_task, region_task = ("msm", "mrm") if row.startswith("MSM") else ("mlm", "mom")
            pretrain(model, corpus_dir, text_task, region_task, args.pretrain_steps, args.pretrain_batch,
                     args.pretrain_lr, seed)
            results[(row, "zero-shot")] = recalls(model, test)
        fine = finetune(model, corpus_dir, args.finetune_steps, args.finetune_batch, args.finetune_lr, seed,
                        args.pool_size, args.refresh_every)
        results[(row, "fine-tuned")] = recalls(fine, test)
    return results


def format_tables(per_seed: list, chance: dict) -> str:
    def cell(row, setting, key):
        values = [r[(row, setting)][key] for r in per_seed if (row, setting) in r]
        if not values:
            return f"{'-':>13}"
        return f"{np.mean(values):6.1f} ± {np.std(values):4.1f}"

    lines = [f"Table 1 (shape): text→image retrieval on the synthetic test split, % (mean ± std over "
             f"{len(per_seed)} seeds)",
             f"{'':18}" + "".join(f"{'IR ' + k[4:]:>15}" for k in RECALLS)
             + "".join(f"{'zero-shot ' + k[4:]:>17}" for k in RECALLS)]
    for row in ("w/o pretraining", "MSM+MRM+ITM"):
        lines.append(f"{row:18}" + "".join(f"{cell(row, 'fine-tuned', k):>15}" for k in RECALLS)
                     + "".join(f"{cell(row, 'zero-shot', k):>17}" for k in RECALLS))
    lines += ["", "Table 2 (shape): the pretraining tasks, on retrieval (the paper's Table 2 uses VCR)",
              f"{'':18}" + "".join(f"{'IR ' + k[4:]:>15}" for k in RECALLS)
              + "".join(f"{'zero-shot ' + k[4:]:>17}" for k in RECALLS)]
    for row in ("MLM+MOM+ITM", "MSM+MRM+ITM"):
        lines.append(f"{row:18}" + "".join(f"{cell(row, 'fine-tuned', k):>15}" for k in RECALLS)
                     + "".join(f"{cell(row, 'zero-shot', k):>17}" for k in RECALLS))
    lines.append("chance: " + ", ".join(f"{k[4:]} {100 * chance[k]:.1f}%" for k in RECALLS))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--images", type=int, default=160, help="synthetic images per seed (5 captions each)")
    parser.add_argument("--test-images", type=int, default=20)
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument("--pretrain-batch", type=int, default=16)
    parser.add_argument("--pretrain-lr", type=float, default=5e-4)
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--finetune-batch", type=int, default=4, help="captions per step (x4 pairs)")
    parser.add_argument("--finetune-lr", type=float, default=2e-4)
    parser.add_argument("--pool-size", type=int, default=8, help="hard-negative candidate images")
    parser.add_argument("--refresh-every", type=int, default=20, help="steps between hard-negative refreshes")
    parser.add_argument("--json", help="write per-seed values and the table here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    per_seed = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in range(args.seeds):
            per_seed.append(run_seed(seed, args, Path(scratch)))
            print(f"seed {seed} done after {time.perf_counter() - started:.0f} s", flush=True)
    from interbert.evaluation.metrics import chance_metrics

    chance = chance_metrics(args.test_images, 5 * args.test_images)
    table = format_tables(per_seed, chance)
    print(table)
    print(f"wall-clock: {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "arguments": vars(args), "table": table, "seconds": time.perf_counter() - started,
            "per_seed": [{f"{row} / {setting}": values for (row, setting), values in r.items()} for r in per_seed]},
            indent=2) + "\n")
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

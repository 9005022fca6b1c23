#!/usr/bin/env python
"""The shape of the paper's Tables 1 and 2 at CPU scale, on the synthetic corpus.

  python benchmarks/paper_tables.py --json runs/paper_tables.json       # the full run (hours)
  python benchmarks/paper_tables.py --quick                             # a smoke run (minutes)

For each seed: a synthetic corpus; two models pretrained from the same initial weights, one
with MSM + MRM + ITM (the paper's tasks) and one with MLM + MOM + ITM (Table 2's baseline);
zero-shot retrieval of both on the test split; then Flickr30K-style 4-way fine-tuning (with
hard negatives and the binary ITM loss) of both and of a model without multi-modal pretraining,
and the full retrieval evaluation of each. Every cell is the mean ± standard deviation over
the seeds, printed with the settings and the chance level of the test split used. Pretraining
and fine-tuning here run a plain PyTorch loop (AdamW, linear warm-up and decay) over the
project's datasets, model and losses, because the DeepSpeed engine's start-up would dominate
runs this short; `interbert/pretrain.py` and `interbert/finetune.py` are the engine-backed paths.

The defaults follow what the CPU demo (`./run.sh`, docs/training.md) needed before a model
trained from scratch matched words to regions at all: a corpus of few object classes
(`--objects 12`), no dropout (`--preset tiny-demo`), 10 regions per image (`--max-regions`, used
alike by pretraining, fine-tuning and evaluation), a long linear warm-up (`--warmup-fraction`
1/6: with a 100-step warm-up at the same peak lr the demo had not started within 1,500 steps),
batches of 64 at peak lr 1e-3, and some 2,000 pretraining steps (the demo's ITM leaves chance
after about 750 steps with tiny-demo's MSM weight 0.3, 1,100 with equal weights, and it keeps
improving to 3,500). At `--quick` sizes, or with far fewer steps, every cell is
at chance, which says only that the pipeline runs. The synthetic corpus is a learnable toy, so
even a full run shows whether the pipeline reproduces the paper's orderings (pretrained above
not pretrained, MSM+MRM above MLM+MOM), not the paper's numbers.
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

from interbert.config import PRESETS, InterBertConfig  # noqa: E402
from interbert.data.loader import build_loader  # noqa: E402
from interbert.data.pretraining_dataset import PretrainingDataset, PretrainingTasks  # noqa: E402
from interbert.data.retrieval import RetrievalCorpus  # noqa: E402
from interbert.data.synth import synthesize_corpus  # noqa: E402
from interbert.evaluation.metrics import chance_metrics  # noqa: E402
from interbert.finetuning.batching import collate_choices  # noqa: E402
from interbert.finetuning.flickr30k import Flickr30kTrainSet, HardNegativeMiner  # noqa: E402
from interbert.finetuning.model import InterBertForFinetuning, TaskSpec  # noqa: E402
from interbert.evaluation.full_retrieval import evaluate_full_retrieval  # noqa: E402
from interbert.modeling import InterBertForPretraining  # noqa: E402
from interbert.training.optimizer import decay_parameter_groups  # noqa: E402

RECALLS = ("t2i_r@1", "t2i_r@5", "t2i_r@10")
ROWS = ("w/o pretraining", "MLM+MOM+ITM", "MSM+MRM+ITM")


def _optimizer(model, lr: float, steps: int, warmup_fraction: float):
    """AdamW with a linear warm-up over ``warmup_fraction`` of ``steps`` (at least one step), then
    a linear decay to zero at ``steps``."""
    optimizer = torch.optim.AdamW(decay_parameter_groups(model, 0.01), lr=lr, eps=1e-6)
    warmup = warmup_steps(steps, warmup_fraction)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(steps - warmup, 1))))
    return optimizer, schedule


def warmup_steps(steps: int, fraction: float) -> int:
    return max(1, round(steps * fraction))


def _update(model, optimizer, schedule, loss) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()


def _cycle(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def pretrain(model, corpus: Path, text_task: str, region_task: str, args, seed: int):
    tasks = PretrainingTasks(text_task=text_task, region_task=region_task, mrm_soft_labels=True)
    dataset = PretrainingDataset(corpus / "features", corpus / "captions.jsonl", split="train",
                                 max_regions=args.max_regions, tasks=tasks, seed=seed)
    loader = build_loader(dataset, args.pretrain_batch, seed=seed, drop_last=True)
    optimizer, schedule = _optimizer(model, args.pretrain_lr, args.pretrain_steps, args.warmup_fraction)
    model.train()
    for _, batch_inputs in zip(range(args.pretrain_steps), _cycle(loader)):
        _update(model, optimizer, schedule, model(**batch_inputs).loss)
    return model.eval()


def finetune(pretraining, corpus: Path, args, seed: int):
    model = InterBertForFinetuning(pretraining, TaskSpec("flickr30k", "retrieval"))
    dataset = Flickr30kTrainSet(corpus / "features", corpus / "captions.jsonl", max_regions=args.max_regions,
                                seed=seed)
    batch, refresh = args.finetune_batch, args.refresh_every
    loader = build_loader(dataset, batch, seed=seed, drop_last=True, collate=collate_choices, samples_key="labels")
    miner = HardNegativeMiner(dataset, loader.sampler, pool_size=args.pool_size, refresh_every=refresh,
                              window=refresh * batch, device=torch.device("cpu"), dtype=torch.float32, seed=seed)
    optimizer, schedule = _optimizer(model, args.finetune_lr, args.finetune_steps, args.warmup_fraction)
    model.train()
    for step, batch_inputs in zip(range(args.finetune_steps), _cycle(loader)):
        if step % refresh == 0:
            miner.refresh(model.pretraining)
        batch_inputs = {k: v for k, v in batch_inputs.items() if not k.startswith("count_")}
        _update(model, optimizer, schedule, model(**batch_inputs).loss)
    return model.pretraining.eval()


def recalls(model, corpus: RetrievalCorpus) -> dict:
    metrics = evaluate_full_retrieval(model, corpus).full.metrics
    return {key: 100 * metrics[key] for key in RECALLS}


def run_seed(seed: int, args, work: Path) -> tuple[dict, dict]:
    """The cells of one seed, and what its corpus and test split hold."""
    corpus_dir = work / f"corpus-{seed}"
    summary = synthesize_corpus(corpus_dir, args.images, seed=seed, val_images=0, test_images=args.test_images,
                                progress=False, num_objects=args.objects, overwrite=True)
    test = RetrievalCorpus(corpus_dir / "features", corpus_dir / "captions.jsonl", split="test",
                           max_regions=args.max_regions)
    config = InterBertConfig.from_preset(args.preset)
    torch.manual_seed(seed)
    initial = InterBertForPretraining(config).state_dict()
    results = {}
    for row in ROWS:
        torch.manual_seed(seed)
        model = InterBertForPretraining(config)
        model.load_state_dict(initial)
        if row != "w/o pretraining":
            text_task, region_task = ("msm", "mrm") if row.startswith("MSM") else ("mlm", "mom")
            pretrain(model, corpus_dir, text_task, region_task, args, seed)
            results[(row, "zero-shot")] = recalls(model, test)
        fine = finetune(model, corpus_dir, args, seed)
        results[(row, "fine-tuned")] = recalls(fine, test)
    corpus = {"objects": summary["objects"], "splits": summary["splits"],
              "test_images": len(test.image_ids), "test_captions": len(test)}
    return results, corpus


def settings_line(args) -> str:
    return (f"settings: {args.images} images ({args.test_images} test), {args.objects} object classes, "
            f"preset {args.preset}, {args.max_regions} regions; pretraining {args.pretrain_steps} steps x "
            f"{args.pretrain_batch} pairs at lr {args.pretrain_lr:g} (warm-up "
            f"{warmup_steps(args.pretrain_steps, args.warmup_fraction)}); fine-tuning {args.finetune_steps} steps "
            f"x {args.finetune_batch} captions x 4 pairs at lr {args.finetune_lr:g} (warm-up "
            f"{warmup_steps(args.finetune_steps, args.warmup_fraction)}); warm-up fraction "
            f"{args.warmup_fraction:.3g}")


def format_tables(per_seed: list, chance: dict, args) -> str:
    def cell(row, setting, key):
        values = [r[(row, setting)][key] for r in per_seed if (row, setting) in r]
        if not values:
            return f"{'-':>13}"
        return f"{np.mean(values):6.1f} ± {np.std(values):4.1f}"

    header = (f"{'':18}" + "".join(f"{'IR ' + k[4:]:>15}" for k in RECALLS)
              + "".join(f"{'zero-shot ' + k[4:]:>17}" for k in RECALLS))
    lines = [settings_line(args), "",
             f"Table 1 (shape): text→image retrieval on the synthetic test split, % (mean ± std over "
             f"{len(per_seed)} seeds)", header]
    for row in ("w/o pretraining", "MSM+MRM+ITM"):
        lines.append(f"{row:18}" + "".join(f"{cell(row, 'fine-tuned', k):>15}" for k in RECALLS)
                     + "".join(f"{cell(row, 'zero-shot', k):>17}" for k in RECALLS))
    lines += ["", "Table 2 (shape): the pretraining tasks, on retrieval (the paper's Table 2 uses VCR)", header]
    for row in ("MLM+MOM+ITM", "MSM+MRM+ITM"):
        lines.append(f"{row:18}" + "".join(f"{cell(row, 'fine-tuned', k):>15}" for k in RECALLS)
                     + "".join(f"{cell(row, 'zero-shot', k):>17}" for k in RECALLS))
    lines.append(f"chance ({chance['images']} test images, {chance['captions']} captions): "
                 + ", ".join(f"{k[4:]} {100 * chance[k]:.1f}%" for k in RECALLS))
    return "\n".join(lines)


# Sizes of a run that can leave chance (see the module docstring), and of a smoke run (--quick).
# A flag given explicitly overrides either.
FULL = {"seeds": 3, "images": 1000, "test_images": 100, "pretrain_steps": 2000, "pretrain_batch": 64,
        "pretrain_lr": 1e-3, "finetune_steps": 300, "finetune_batch": 16, "finetune_lr": 2e-4}
QUICK = {"seeds": 1, "images": 120, "test_images": 20, "pretrain_steps": 50, "pretrain_batch": 16,
         "pretrain_lr": 1e-3, "finetune_steps": 20, "finetune_batch": 4, "finetune_lr": 2e-4}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke-run sizes (" + ", ".join(f"{k} {v:g}" for k, v in QUICK.items()) + ")")
    sizes = parser.add_argument_group("sizes (defaults: the full run; --quick: the smoke run)")
    sizes.add_argument("--seeds", type=int)
    sizes.add_argument("--images", type=int, help="synthetic images per seed (5 captions each)")
    sizes.add_argument("--test-images", type=int)
    sizes.add_argument("--pretrain-steps", type=int)
    sizes.add_argument("--pretrain-batch", type=int, help="image-caption pairs per step")
    sizes.add_argument("--pretrain-lr", type=float, help="peak learning rate")
    sizes.add_argument("--finetune-steps", type=int)
    sizes.add_argument("--finetune-batch", type=int, help="captions per step (x4 pairs)")
    sizes.add_argument("--finetune-lr", type=float, help="peak learning rate")
    parser.add_argument("--objects", type=int, default=12,
                        help="object classes of the synthetic corpus (first N of its 60 words; 5-60)")
    parser.add_argument("--preset", default="tiny-demo", choices=sorted(PRESETS), help="model preset")
    parser.add_argument("--max-regions", type=int, default=10,
                        help="detector regions per image in pretraining, fine-tuning and evaluation")
    parser.add_argument("--warmup-fraction", type=float, default=1 / 6,
                        help="linear warm-up over this fraction of the steps, in pretraining and fine-tuning")
    parser.add_argument("--pool-size", type=int, default=8, help="hard-negative candidate images")
    parser.add_argument("--refresh-every", type=int, default=20, help="steps between hard-negative refreshes")
    parser.add_argument("--work-dir", help="keep the synthetic corpora here (default: a temporary folder)")
    parser.add_argument("--json", help="write the settings, per-seed values and the table here")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 0 < args.warmup_fraction <= 1:
        parser.error("--warmup-fraction must be in (0, 1]")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(settings_line(args), flush=True)
    started = time.perf_counter()
    per_seed, corpora = [], []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        for seed in range(args.seeds):
            results, corpus = run_seed(seed, args, work)
            per_seed.append(results)
            corpora.append(corpus)
            print(f"seed {seed} done after {time.perf_counter() - started:.0f} s", flush=True)
    test_images, test_captions = corpora[0]["test_images"], corpora[0]["test_captions"]
    chance = {"images": test_images, "captions": test_captions,
              **{k: v for k, v in chance_metrics(test_images, test_captions).items() if k in RECALLS}}
    table = format_tables(per_seed, chance, args)
    print(table)
    print(f"wall-clock: {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "arguments": vars(args),
            "settings": {"objects": args.objects, "object_words": corpora[0]["objects"], "preset": args.preset,
                         "model_config": InterBertConfig.from_preset(args.preset).to_dict(),
                         "max_regions": args.max_regions, "warmup_fraction": args.warmup_fraction,
                         "pretrain_warmup_steps": warmup_steps(args.pretrain_steps, args.warmup_fraction),
                         "finetune_warmup_steps": warmup_steps(args.finetune_steps, args.warmup_fraction)},
            "chance": chance, "corpora": corpora, "table": table, "seconds": time.perf_counter() - started,
            "per_seed": [{f"{row} / {setting}": values for (row, setting), values in r.items()} for r in per_seed]},
            indent=2) + "\n")
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""The shape of the paper's Tables 1 and 2 at CPU scale, on the synthetic corpus.

  python benchmarks/paper_tables.py --json runs/paper_tables.json       # the full run (hours)
  python benchmarks/paper_tables.py --quick                             # a smoke run (minutes)

For each seed: a synthetic corpus; two models pretrained from the same initial weights, one
with MSM + MRM + ITM (the paper's tasks) and one with MLM + MOM + ITM (Table 2's baseline);
zero-shot retrieval of both on the test split; then Flickr30K-style 4-way fine-tuning (with
hard negatives and the binary ITM loss) of both and of a model without multi-modal pretraining,
and the full retrieval evaluation of each. Every cell is the mean ± standard deviation over
the seeds, printed with the settings and the chance level of the test split used. Every run goes
through the real entry points, one process each, in the DeepSpeed engine (fp32, ZeRO-1, AdamW,
linear warm-up and decay): `interbert/pretrain.py --tasks msm,mrm,itm` or `--tasks mlm,mom,itm`,
then `interbert/finetune.py --task flickr30k` (and its `--eval-only` for zero-shot). Each run's
folder under `--work-dir` keeps its DeepSpeed config, console log, run_config.json and model.

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
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from interbert.config import PRESETS, InterBertConfig  # noqa: E402
from interbert.data.ingest.synth import synthesize_corpus  # noqa: E402
from interbert.data.retrieval.corpus import RetrievalCorpus  # noqa: E402
from interbert.data.text.tokenization import default_vocab_file  # noqa: E402
from interbert.evaluation.metrics import chance_metrics  # noqa: E402

RECALLS = ("t2i_r@1", "t2i_r@5", "t2i_r@10")
ROWS = {"w/o pretraining": None, "MLM+MOM+ITM": "mlm,mom,itm", "MSM+MRM+ITM": "msm,mrm,itm"}


def warmup_steps(steps: int, fraction: float) -> int:
    return max(1, round(steps * fraction))


def ds_config(batch: int, lr: float, steps: int, warmup_fraction: float, finetune: dict | None = None) -> dict:
    """One process, fp32, ZeRO-1, AdamW with a linear warm-up over `warmup_fraction` of the steps,
    then a linear decay to zero."""
    config = {"train_batch_size": batch, "train_micro_batch_size_per_gpu": batch, "gradient_clipping": 1.0,
              "optimizer": {"type": "AdamW", "params": {"lr": lr, "eps": 1e-6, "weight_decay": 0.01}},
              "scheduler": {"type": "WarmupDecayLR",
                            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": lr, "warmup_type": "linear",
                                       "warmup_num_steps": warmup_steps(steps, warmup_fraction),
                                       "total_num_steps": steps}},
              "zero_optimization": {"stage": 1}, "tensorboard": {"enabled": False}}
    if finetune is not None:
        config["finetune"] = finetune
    return config


def entry_point(module: str, config: dict, output: Path, *args: str) -> Path:
    """`python -m interbert.<module>` with `config` as its DeepSpeed config, one process; returns `output`."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "ds_config.json").write_text(json.dumps(config, indent=2))
    command = [sys.executable, "-m", f"interbert.{module}", "--deepspeed_config", str(output / "ds_config.json"),
               "--output-dir", str(output), "--num-workers", "0", *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    (output / "console.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}; see {output / 'console.log'}:\n"
                           f"{result.stderr[-2000:]}")
    return output


def pretrain(corpus: Path, tasks: str, args, seed: int, output: Path) -> Path:
    """interbert/pretrain.py --tasks TASKS; returns the model directory."""
    config = ds_config(args.pretrain_batch, args.pretrain_lr, args.pretrain_steps, args.warmup_fraction)
    entry_point("pretrain", config, output, "--preset", args.preset, "--tasks", tasks, "--seed", str(seed),
                "--features", str(corpus / "features"), "--captions", str(corpus / "captions.jsonl"),
                "--vocab", args.vocab, "--max-regions", str(args.max_regions), "--max-steps", str(args.pretrain_steps),
                "--validation-split", "", "--eval-images", "0", "--save-every", "0",
                "--log-every", str(max(args.pretrain_steps // 10, 1)))
    return output / "model"


def flickr30k(corpus: Path, model: Path | None, args, seed: int, output: Path, eval_only: bool = False) -> dict:
    """interbert/finetune.py --task flickr30k (4-way, hard negatives, binary ITM loss, no EMA), or its
    --eval-only evaluation; returns the test split's recalls in %."""
    section = {"task": "flickr30k", "max_regions": args.max_regions, "retrieval_loss": "binary",
               "hard_negatives": {"enabled": True, "pool_size": args.pool_size, "refresh_every": args.refresh_every},
               "ema": {"enabled": False}}
    config = ds_config(args.finetune_batch, args.finetune_lr, args.finetune_steps, args.warmup_fraction, section)
    source = ["--init-model", str(model)] if model else ["--preset", args.preset]
    length = ["--eval-only"] if eval_only else ["--max-steps", str(args.finetune_steps)]
    entry_point("finetune", config, output, "--task", "flickr30k", *source, *length, "--seed", str(seed),
                "--features", str(corpus / "features"), "--captions", str(corpus / "captions.jsonl"),
                "--vocab", args.vocab, "--eval-split", "test", "--log-every", str(max(args.finetune_steps // 5, 1)))
    metrics = json.loads((output / "results.json").read_text())
    return {key: 100 * metrics[key] for key in RECALLS}


def run_seed(seed: int, args, work: Path) -> tuple[dict, dict]:
    """The cells of one seed, and what its corpus and test split hold. Every model of a seed starts
    from the same initial weights: the entry points seed them from --seed."""
    corpus_dir = work / f"corpus-{seed}"
    summary = synthesize_corpus(corpus_dir, args.images, seed=seed, val_images=0, test_images=args.test_images,
                                progress=False, num_objects=args.objects, overwrite=True)
    test = RetrievalCorpus(corpus_dir / "features", corpus_dir / "captions.jsonl", split="test",
                           max_regions=args.max_regions)
    results = {}
    for row, tasks in ROWS.items():
        runs = work / f"seed-{seed}" / row.replace("/", "").replace("+", "-").replace(" ", "-")
        model = None
        if tasks is not None:
            model = pretrain(corpus_dir, tasks, args, seed, runs / "pretrain")
            results[(row, "zero-shot")] = flickr30k(corpus_dir, model, args, seed, runs / "zero-shot", eval_only=True)
        results[(row, "fine-tuned")] = flickr30k(corpus_dir, model, args, seed, runs / "fine-tuned")
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
    parser.add_argument("--vocab", default=None,
                        help="bert-base-uncased vocab.txt (default: the one of the dev extra's test wheel)")
    parser.add_argument("--work-dir", help="keep the synthetic corpora and every run here (default: a temporary "
                                           "folder)")
    parser.add_argument("--json", help="write the settings, per-seed values and the table here")
    parser.add_argument("--parallel-seeds", type=int, default=1,
                        help="seeds run side by side, each its runs one after another (default 1)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.vocab = args.vocab or default_vocab_file()
    if not 0 < args.warmup_fraction <= 1:
        parser.error("--warmup-fraction must be in (0, 1]")
    if args.parallel_seeds < 1:
        parser.error("--parallel-seeds must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(settings_line(args), flush=True)
    started = time.perf_counter()
    per_seed, corpora = [], []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        # One process per seed (a fresh interpreter each: transformers' lazy first import is not
        # thread-safe, and each seed's runs are subprocesses anyway).
        with ProcessPoolExecutor(max_workers=args.parallel_seeds, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_seed, seed, args, work) for seed in range(args.seeds)]
            for seed, future in enumerate(futures):
                results, corpus = future.result()
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

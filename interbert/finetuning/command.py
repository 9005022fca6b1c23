"""InterBERT fine-tuning with DeepSpeed: Flickr30K retrieval, VCR, GLUE (paper §3, Appendix 6.2).

    deepspeed --hostfile hostfiles/v100x8 interbert/finetune.py --task flickr30k \\
        --deepspeed_config ds_configs/finetune_flickr30k_v100x8.json --init-model runs/pretrain/model \\
        --features stores/flickr30k --captions f30k.jsonl --output-dir runs/f30k

Also `python -m interbert.finetune ...`, `interbert finetune ...` and `mpirun`. The task's
knobs (epochs, regions, loss, hard negatives, EMA) live in the config's `finetune` section;
optimizer, schedule, batch sizes, precision and ZeRO in the rest of it. `--eval-only` evaluates
a model directory (zero-shot retrieval: a pretrained one). See docs/finetuning.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from interbert.config import PRESETS, InterBertConfig
from interbert.data.loading.loader import build_loader
from interbert.data.text.tokenization import find_vocab
from interbert.errors import UsageError, run_reporting_user_errors
from interbert.finetuning.ema import ExponentialMovingAverage
from interbert.finetuning.model import InterBertForFinetuning
from interbert.finetuning.objective import FinetuneObjective
from interbert.finetuning.settings import TaskInputs, fill_schedule, split_settings
from interbert.finetuning.tasks import build_task
from interbert.modeling import InterBertForPretraining
from interbert.training import ds_config as dsc
from interbert.training import startup
from interbert.training.distributed import barrier
from interbert.training.inputs import check_feature_size
from interbert.training.loop import Schedule, TrainingLoop
from interbert.training.startup import add_run_arguments
from interbert.training.stopping import ignore_stop_signals


def build_parser(prog: str = "interbert/finetune.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="flickr30k, vcr or glue-NAME (cola, sst2, mrpc, stsb, "
                                                      "qqp, mnli, qnli, rte)")
    model = parser.add_argument_group("model")
    model.add_argument("--init-model", metavar="DIR", help="a pretrained (or fine-tuned) model directory")
    model.add_argument("--preset", choices=sorted(PRESETS), help="no multi-modal pretraining: a fresh model")
    model.add_argument("--model-config", help="a model config JSON instead of a preset")
    model.add_argument("--init-bert", metavar="DIR", help="with --preset: text side from a BERT directory")
    data = parser.add_argument_group("data")
    data.add_argument("--features", help="feature store (flickr30k, vcr: the detector regions)")
    data.add_argument("--gt-features", help="vcr: feature store of the ground-truth object boxes, keyed by img_fn")
    data.add_argument("--captions", help="flickr30k: caption manifest with train/val/test splits")
    data.add_argument("--train-split", default="train", help="flickr30k: manifest split to train on (default train)")
    data.add_argument("--eval-split", default="val", help="flickr30k: manifest split to evaluate on (default val)")
    data.add_argument("--eval-images", type=int, default=0, help="flickr30k: the first N images (default 0: all)")
    data.add_argument("--hard-negatives", choices=("mined-images", "release-captions"),
                      help="flickr30k: the 4th pair's hard negative: an image mined online from the model being "
                           "trained, or (the release's) a hard caption from a precomputed pool (default: "
                           "finetune.hard_negatives.kind of the config, mined-images)")
    data.add_argument("--hard-captions", metavar="FILE",
                      help="flickr30k: the pool for release-captions (python -m interbert.finetuning.hard_captions)")
    data.add_argument("--vcr-train", help="vcr: train.jsonl")
    data.add_argument("--vcr-val", help="vcr: val.jsonl")
    data.add_argument("--vcr-test", help="vcr: test.jsonl (no labels): with --eval-only, write the leaderboard's "
                                         "Q->AR submission (4 answers x 4 rationales) to OUTPUT_DIR")
    data.add_argument("--glue-dir", help="glue: the task folder (train.tsv, dev*.tsv)")
    data.add_argument("--skip-malformed", action="store_true", help="glue: skip (and count) malformed lines")
    data.add_argument("--vocab", help="the bert-base-uncased vocab.txt (default: vocab.txt of --init-model or "
                                      "--init-bert)")
    data.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per rank (default 2)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval-only", action="store_true", help="evaluate --init-model and exit")
    evaluation.add_argument("--eval-batch-size", type=int, default=32,
                            help="vcr/glue examples per forward (default 32)")
    evaluation.add_argument("--pair-batch", type=int, default=0,
                            help="flickr30k: pairs per forward (default 0: from memory)")
    evaluation.add_argument("--two-stage-k", type=int, default=0,
                            help="flickr30k: also run the two-stage top-k re-ranking (default 0: off)")
    add_run_arguments(parser, keep_last=2, epochs_default="finetune.epochs of the config",
                      outputs="checkpoints/, tensorboard/, model/, model_ema/, results.json")


def check_args(args) -> None:
    sources = [flag for flag in ("init_model", "preset", "model_config") if getattr(args, flag)]
    if len(sources) != 1:
        raise UsageError("give exactly one of --init-model (a pretrained model directory), --preset or "
                         "--model-config (no multi-modal pretraining)")
    if args.init_bert and args.init_model:
        raise UsageError("--init-bert initialises a fresh model; it does not combine with --init-model")
    for flag in ("init_model", "init_bert", "model_config"):
        value = getattr(args, flag)
        if value and not Path(value).exists():
            raise UsageError(f"--{flag.replace('_', '-')} {value}: no such file or directory")
    if args.eval_batch_size <= 0:
        raise UsageError(f"--eval-batch-size must be positive, got {args.eval_batch_size}")
    for flag in ("num_workers", "eval_images", "pair_batch", "two_stage_k"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")


def build_model(args, spec, say):
    if args.init_model:
        model = InterBertForFinetuning.from_pretrained(args.init_model, task=spec)
        say(f"model: from {args.init_model}; task head: {model.head_source}")
        return model
    config = (InterBertConfig.from_json_file(args.model_config) if args.model_config
              else InterBertConfig.from_preset(args.preset))
    pretraining = InterBertForPretraining(config)
    if args.init_bert:
        say(f"model: text side from BERT in {args.init_bert}: {pretraining.init_from_bert(args.init_bert)}")
    else:
        say("model: fresh weights (no multi-modal pretraining)")
    return InterBertForFinetuning(pretraining, spec)


def run(args) -> int:
    check_args(args)
    args.vocab = find_vocab(args.vocab, {"--init-model": args.init_model, "--init-bert": args.init_bert})
    run_settings = startup.RunSettings.from_args(args)
    raw_config, settings = split_settings(dsc.load_ds_config(args.deepspeed_config), args.deepspeed_config)
    if settings.task and settings.task != args.task:
        raise UsageError(f"{args.deepspeed_config} is for task {settings.task!r} (finetune.task), not {args.task!r}")
    job = startup.prepare(run_settings, "finetune", raw_config, trains=not args.eval_only)
    built = []
    startup.start(job, [lambda: built.append(build_task(TaskInputs.from_args(args), settings))])  # on every host
    task = built[0]
    for note in task.notes:
        job.say(note)
    startup.seed_everything(run_settings.seed)
    model = build_model(args, task.spec, job.say)
    for flag in ("features", "gt_features"):
        if getattr(args, flag):
            check_feature_size(getattr(args, flag), model.config, f"--{flag.replace('_', '-')}")
    if args.eval_only:
        return evaluate_only(args, model, task, job)
    return train(args, job, model, task, settings)


def train(args, job, model, task, settings) -> int:
    env, run, ds_config, precision, say = job.started, job.run, job.ds_config, job.precision, job.say
    micro = ds_config["train_micro_batch_size_per_gpu"]
    steps_per_epoch = max(
        len(task.train_set) // (micro * env.world_size) // ds_config["gradient_accumulation_steps"], 1)
    max_steps = startup.plan_steps(run, ds_config, steps_per_epoch, settings.epochs, "finetune.epochs")
    for note in fill_schedule(ds_config, max_steps, settings):
        say(note)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    ema = ExponentialMovingAverage(model, settings.ema.rate, settings.ema.warmup) if settings.ema.enabled else None
    say(f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters "
        f"({sum(t.numel() for t in frozen.values()):,} frozen: unused by {task.spec.name})")
    engine, optimizer = startup.build_engine(job, model)
    loader = build_loader(task.train_set, micro, rank=env.rank, world_size=env.world_size, seed=run.seed,
                          num_workers=args.num_workers, drop_last=True, worker_init_fn=ignore_stop_signals,
                          collate=task.collate, samples_key="labels")
    miner = None
    if task.miner_factory is not None:
        window = settings.hard_negatives.refresh_every * micro * ds_config["gradient_accumulation_steps"] + \
            2 * micro * max(args.num_workers, 1)
        miner = task.miner_factory(loader.sampler, env.device, precision.dtype, window)
        say(f"hard negatives: every {miner.refresh_every} steps, the next {window} captions of each rank "
            f"against pools of {miner.pool_size} images")
    monitor = startup.make_monitor(job, "finetune")
    startup.write_run_config(job, monitor, {
        "arguments": vars(args), "settings": dataclasses.asdict(settings), "deepspeed_config": ds_config,
        "model_config": model.config.to_dict(), "task": dataclasses.asdict(task.spec), "max_steps": max_steps,
        "steps_per_epoch": steps_per_epoch, "world_size": env.world_size, "precision": precision.name,
        "optimizer": optimizer})
    say(f"training {max_steps} steps ({steps_per_epoch} per epoch), global batch {ds_config['train_batch_size']}; "
        f"EMA {'rate ' + str(settings.ema.rate) if ema else 'off'}; TensorBoard: {monitor.tensorboard_dir}")
    objective = FinetuneObjective(task, device=env.device, dtype=precision.dtype, ema=ema, miner=miner,
                                  say=monitor.print)
    loop = TrainingLoop(engine=engine, objective=objective, loader=loader, monitor=monitor, env=env,
                        precision=precision, checkpoint_dir=run.checkpoint_dir,
                        schedule=Schedule(max_steps, steps_per_epoch, run.log_every, run.save_every,
                                          run.keep_last, run.eval_every),
                        guard=run.guard, rank_timeout=run.rank_timeout)
    status = startup.run_loop(loop, run.resume)
    if status == 0 and loop.step >= max_steps:
        results = loop.evaluate() if not run.eval_every or loop.step % run.eval_every else None
        weights = startup.consolidated_weights(engine, job, keep=frozen)  # every rank: gathered from their partitions
        if env.is_main:
            save_models(job, model, weights, ema, args.vocab)
            if results is not None:
                (run.output_dir / "results.json").write_text(
                    json.dumps({"step": loop.step, **results}, indent=2) + "\n")
        barrier()
    monitor.close()
    return status


def save_models(job, model, weights, ema, vocab) -> None:
    """model/ (raw fp32 weights, consolidated) and, with EMA, model_ema/ beside it (rank 0)."""

    final = type(model)(type(model.pretraining)(model.config), model.task)
    final.load_state_dict(weights, strict=True)
    startup.write_model_directory(final, job.run.output_dir / "model", vocab, job.say)
    if ema is not None:
        with ema.swapped_in(final):
            startup.write_model_directory(final, job.run.output_dir / "model_ema", vocab, job.say,
                                          f"EMA model (rate {ema.rate}, {ema.updates} updates)")


def evaluate_only(args, model, task, job) -> int:
    env, precision = job.started, job.precision
    model = model.to(env.device)
    if precision.name != "fp32":
        model = model.to(precision.dtype)
    results = task.evaluate(model, env.device, precision.dtype)
    job.say(f"{task.spec.name} evaluation of {args.init_model or 'a fresh model'}: "
            + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
    if env.is_main:
        job.run.output_dir.mkdir(parents=True, exist_ok=True)
        (job.run.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        job.say(f"results written to {job.run.output_dir / 'results.json'}")
    submission = task.submit(model, env.device, precision.dtype, job.run.output_dir)
    if submission is not None:
        job.say(f"test-split submission written to {submission}")
    return 0


def main(argv: list[str] | None = None, prog: str = "interbert/finetune.py") -> int:
    args = build_parser(prog).parse_args(argv)
    return run_with_errors(args, prog)


def run_with_errors(args, prog: str) -> int:
    """``run(args)``; a user's mistake is one line on stderr and exit status 2."""
    return run_reporting_user_errors(run, args, prog)


if __name__ == "__main__":
    sys.exit(main())

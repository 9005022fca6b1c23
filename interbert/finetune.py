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

import os
import sys

if __package__ in (None, ""):
    # Run as a script (the DeepSpeed launcher does so): drop interbert/ from sys.path, where its
    # modules would shadow same-named top-level ones, and put the repository root there.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402


from interbert.config import PRESETS, InterBertConfig  # noqa: E402
from interbert.data.tokenization import VOCAB_NAME, find_vocab  # noqa: E402
from interbert.errors import UsageError, run_reporting_user_errors  # noqa: E402
from interbert.training.precision import PRECISIONS  # noqa: E402



def build_parser(prog: str = "interbert/finetune.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    data.add_argument("--train-split", default="train", help="flickr30k: manifest split to train on")
    data.add_argument("--eval-split", default="val", help="flickr30k: manifest split to evaluate on")
    data.add_argument("--eval-images", type=int, default=0, help="flickr30k: the first N images (0: all)")
    data.add_argument("--vcr-train", help="vcr: train.jsonl")
    data.add_argument("--vcr-val", help="vcr: val.jsonl")
    data.add_argument("--glue-dir", help="glue: the task folder (train.tsv, dev*.tsv)")
    data.add_argument("--skip-malformed", action="store_true", help="glue: skip (and count) malformed lines")
    data.add_argument("--vocab", help="the bert-base-uncased vocab.txt (default: vocab.txt of --init-model or "
                                      "--init-bert)")
    data.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per rank")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval-only", action="store_true", help="evaluate --init-model and exit")
    evaluation.add_argument("--eval-batch-size", type=int, default=32, help="vcr/glue examples per forward")
    evaluation.add_argument("--pair-batch", type=int, default=0, help="flickr30k: pairs per forward (0: from memory)")
    evaluation.add_argument("--two-stage-k", type=int, default=0,
                            help="flickr30k: also run the two-stage top-k re-ranking (0: off)")
    run = parser.add_argument_group("run")
    run.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", required=True)
    run.add_argument("--output-dir", required=True, help="checkpoints/, tensorboard/, model/, model_ema/ go here")
    run.add_argument("--precision", choices=PRECISIONS, default="auto")
    length = run.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help="optimizer steps (default: the config's epochs)")
    length.add_argument("--epochs", type=float, help="epochs (default: finetune.epochs of the config)")
    run.add_argument("--save-every", type=int, default=1000, help="checkpoint every N steps (0: end only)")
    run.add_argument("--keep-last", type=int, default=2, help="checkpoints kept (0: all)")
    run.add_argument("--log-every", type=int, default=50)
    run.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: at the end)")
    run.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints")
    run.add_argument("--seed", type=int, default=42)
    run.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the DeepSpeed launcher")


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
    for flag in ("max_steps", "log_every", "eval_batch_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    for flag in ("save_every", "keep_last", "eval_every", "num_workers", "eval_images", "pair_batch", "two_stage_k"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")


def build_model(args, spec, say):
    from interbert.finetuning.model import InterBertForFinetuning
    from interbert.modeling import InterBertForPretraining

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
    from interbert.finetuning.settings import fill_schedule, split_settings
    from interbert.finetuning.tasks import build_task
    from interbert.pretrain import seed_everything, set_cpu_threads
    from interbert.training import ds_config as dsc
    from interbert.training.distributed import discover_job, init_process_group, job_device
    from interbert.training.precision import resolve_precision

    check_args(args)
    args.vocab = find_vocab(args.vocab, {"--init-model": args.init_model, "--init-bert": args.init_bert})
    placement = discover_job(args.local_rank)

    def say(message: str) -> None:
        if placement.rank == 0:
            print(f"[finetune] {message}", flush=True)

    raw_config, settings = split_settings(dsc.load_ds_config(args.deepspeed_config), args.deepspeed_config)
    if settings.task and settings.task != args.task:
        raise UsageError(f"{args.deepspeed_config} is for task {settings.task!r} (finetune.task), not {args.task!r}")
    ds_config = dsc.resolve_batch_sizes(raw_config, placement.world_size, args.deepspeed_config)
    device = job_device(placement)
    precision = resolve_precision(args.precision, ds_config, device, args.deepspeed_config)
    output_dir = Path(args.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    if not args.eval_only:
        if args.resume and not (checkpoint_dir / "latest").is_file():
            raise UsageError(f"--resume: no checkpoint in {checkpoint_dir}; start without --resume")
        if not args.resume and (checkpoint_dir / "latest").is_file():
            raise UsageError(f"{checkpoint_dir} already holds checkpoints: pass --resume or choose another --output-dir")
    task = build_task(args, settings)
    env = init_process_group(placement, device)
    set_cpu_threads(placement, device, say)
    say(f"{env.world_size} rank(s) via {env.launcher}, device {device}; precision {precision.name} ({precision.reason})")
    for note in task.notes:
        say(note)
    seed_everything(args.seed)
    model = build_model(args, task.spec, say)
    if args.eval_only:
        return evaluate_only(args, model, task, env, precision, output_dir, say)

    micro = ds_config["train_micro_batch_size_per_gpu"]
    steps_per_epoch = max(len(task.train_set) // (micro * env.world_size) // ds_config["gradient_accumulation_steps"], 1)
    epochs = args.epochs or settings.epochs
    if args.max_steps:
        max_steps = args.max_steps
    elif epochs:
        max_steps = max(1, round(epochs * steps_per_epoch))
    elif dsc.scheduler_total_steps(ds_config):
        max_steps = int(dsc.scheduler_total_steps(ds_config))
    else:
        raise UsageError(f"give --max-steps or --epochs ({args.deepspeed_config} sets neither finetune.epochs "
                         "nor scheduler.params.total_num_steps)")
    for note in fill_schedule(ds_config, max_steps, settings):
        say(note)
    return train(args, model, task, settings, env, ds_config, precision, max_steps, steps_per_epoch,
                 output_dir, checkpoint_dir, say)


def train(args, model, task, settings, env, ds_config, precision, max_steps, steps_per_epoch, output_dir,
          checkpoint_dir, say) -> int:
    import deepspeed

    from interbert.finetuning.batching import build_loader
    from interbert.finetuning.ema import ExponentialMovingAverage
    from interbert.finetuning.trainer import FinetuneMonitor, FinetuneTrainer
    from interbert.pretrain import seed_everything
    from interbert.training import ds_config as dsc
    from interbert.training.corpus import ignore_stop_signals
    from interbert.training.optimizer import build_optimizer
    from interbert.training.trainer import Schedule

    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    ema = ExponentialMovingAverage(model, settings.ema.rate, settings.ema.warmup) if settings.ema.enabled else None
    choice = build_optimizer(model, ds_config, env.device, args.deepspeed_config)
    say(f"optimizer: {choice.implementation}; {sum(p.numel() for p in model.parameters() if p.requires_grad):,} "
        f"trainable parameters ({sum(t.numel() for t in frozen.values()):,} frozen: unused by {task.spec.name})")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=choice.optimizer, config=dsc.for_engine(ds_config))
    seed_everything(args.seed + env.rank)
    loader = build_loader(task.train_set, task.collate, engine.train_micro_batch_size_per_gpu(), rank=env.rank,
                          world_size=env.world_size, seed=args.seed, num_workers=args.num_workers,
                          worker_init_fn=ignore_stop_signals)
    miner = None
    if task.miner_factory is not None:
        window = settings.hard_negatives.refresh_every * engine.train_micro_batch_size_per_gpu() * \
            engine.gradient_accumulation_steps() + 2 * engine.train_micro_batch_size_per_gpu() * max(args.num_workers, 1)
        miner = task.miner_factory(loader.sampler, env.device, precision.dtype, window)
        say(f"hard negatives: every {miner.refresh_every} steps, the next {window} captions of each rank "
            f"against pools of {miner.pool_size} images")
    monitor = FinetuneMonitor(output_dir, enabled=env.is_main, tensorboard=dsc.tensorboard_enabled(ds_config),
                              deepspeed_monitors=dsc.external_monitors(ds_config))
    if env.is_main:
        (output_dir / "run_config.json").write_text(json.dumps(
            {"arguments": vars(args), "settings": _as_dict(settings), "deepspeed_config": ds_config,
             "model_config": model.config.to_dict(), "task": _as_dict(task.spec), "max_steps": max_steps,
             "steps_per_epoch": steps_per_epoch, "world_size": env.world_size, "precision": precision.name,
             "optimizer": choice.implementation}, indent=2, default=str) + "\n")
        monitor.text("run/config", "```\n" + json.dumps(_as_dict(settings), indent=2) + "\n```")
    say(f"training {max_steps} steps ({steps_per_epoch} per epoch), global batch {ds_config['train_batch_size']}; "
        f"EMA {'rate ' + str(settings.ema.rate) if ema else 'off'}; TensorBoard: {monitor.tensorboard_dir}")
    trainer = FinetuneTrainer(engine=engine, task=task, loader=loader, monitor=monitor, env=env, precision=precision,
                              schedule=Schedule(max_steps, steps_per_epoch, args.log_every, args.save_every,
                                                args.keep_last, args.eval_every),
                              checkpoint_dir=checkpoint_dir, ema=ema, miner=miner)
    if args.resume:
        trainer.resume()
    status = trainer.train()
    if status == 0 and trainer.step >= max_steps:
        results = trainer.evaluate() if not args.eval_every or trainer.step % args.eval_every else None
        save_models(engine, model, frozen, ema, precision, checkpoint_dir, trainer.step, args.vocab, output_dir, env,
                    say)
        if env.is_main and results is not None:
            (output_dir / "results.json").write_text(json.dumps({"step": trainer.step, **results}, indent=2) + "\n")
    monitor.close()
    return status


def _as_dict(value) -> dict:
    import dataclasses

    return dataclasses.asdict(value)


def save_models(engine, model, frozen, ema, precision, checkpoint_dir, step, vocab, output_dir, env, say) -> None:
    """Rank 0 writes model/ (raw fp32 weights) and, with EMA, model_ema/ beside it."""
    from interbert.training.checkpoint import tag_for
    from interbert.training.distributed import barrier

    if env.is_main:
        module = engine.module
        if precision.name != "fp32":
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag_for(step))
            state = {**{k: v.float() for k, v in module.state_dict().items()}, **frozen, **state}
            module = type(model)(type(model.pretraining)(model.config), model.task)
            module.load_state_dict(state, strict=True)
        module.save_pretrained(output_dir / "model")
        shutil.copyfile(vocab, output_dir / "model" / VOCAB_NAME)
        say(f"model saved: {output_dir / 'model'}")
        if ema is not None:
            with ema.swapped_in(module):
                module.save_pretrained(output_dir / "model_ema")
            shutil.copyfile(vocab, output_dir / "model_ema" / VOCAB_NAME)
            say(f"EMA model saved: {output_dir / 'model_ema'} (rate {ema.rate}, {ema.updates} updates)")
    barrier()


def evaluate_only(args, model, task, env, precision, output_dir, say) -> int:
    model = model.to(env.device)
    if precision.name != "fp32":
        model = model.to(precision.dtype)
    results = task.evaluate(model, env.device, precision.dtype)
    say(f"{task.spec.name} evaluation of {args.init_model or 'a fresh model'}: "
        + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        say(f"results written to {output_dir / 'results.json'}")
    return 0


def main(argv: list[str] | None = None, prog: str = "interbert/finetune.py") -> int:
    args = build_parser(prog).parse_args(argv)
    return run_with_errors(args, prog)


def run_with_errors(args, prog: str) -> int:
    """``run(args)``; a user's mistake is one line on stderr and exit status 2."""
    return run_reporting_user_errors(run, args, prog)


if __name__ == "__main__":
    sys.exit(main())

"""InterBERT pretraining with DeepSpeed (MSM + MRM + ITM).

    deepspeed --hostfile hostfiles/v100x8 interbert/pretrain.py \\
        --deepspeed_config ds_configs/pretrain_v100x8.json --preset paper-base \\
        --init-bert BERT_DIR --features STORE --captions cc.jsonl sbu.jsonl coco.jsonl \\
        --output-dir runs/paper-base

Also `python -m interbert.pretrain ...` and `mpirun -np N python interbert/pretrain.py ...`.
Flags choose paths and run shape; optimizer, schedule, batch sizes, precision and ZeRO live
in the DeepSpeed config. See docs/training.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from interbert.config import PRESETS, InterBertConfig, parse_pretraining_tasks
from interbert.data.retrieval.corpus import build_retrieval_corpus
from interbert.data.text.tokenization import find_vocab
from interbert.errors import UsageError, run_reporting_user_errors
from interbert.modeling import InterBertForPretraining
from interbert.modeling.layer_norm import layer_norm_implementation
from interbert.pretraining.data import build_run_data, check_paths
from interbert.pretraining.objective import PretrainingObjective
from interbert.training import ds_config as dsc
from interbert.training import startup
from interbert.training.distributed import barrier
from interbert.training.ds_config import scheduler_total_steps
from interbert.training.inputs import check_feature_size
from interbert.training.loop import Schedule, TrainingLoop
from interbert.training.peaks import device_peak
from interbert.training.startup import add_run_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interbert/pretrain.py", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of pretraining (``interbert/pretrain.py`` and ``interbert pretrain``); every help
    text names its default once."""
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="model preset (default paper-base)")
    model.add_argument("--model-config", help="a model config JSON file instead of a preset")
    model.add_argument("--init-bert", metavar="DIR",
                       help="initialise the text side from a Hugging Face BERT directory")
    model.add_argument("--tasks", metavar="LIST",
                       help="pretraining tasks, comma-separated from msm, mrm, itm, mlm, mom (default: the model "
                            "config's pretraining_tasks, msm,mrm,itm; Table 2's baseline: mlm,mom,itm)")
    model.add_argument("--init-model", metavar="DIR",
                       help="start from a model directory (save_pretrained / convert-release); "
                            "its config.json is the model config")
    data = parser.add_argument_group("data")
    data.add_argument("--features", help="feature store (LMDB directory)")
    data.add_argument("--captions", nargs="+", help="caption manifests (JSON lines with a split)")
    data.add_argument("--vocab", help="the bert-base-uncased vocab.txt (default: vocab.txt of --init-bert or "
                                      "--init-model)")
    data.add_argument("--max-text-len", type=int, default=36, help="word pieces per caption (default 36)")
    data.add_argument("--max-regions", type=int, default=36, help="detector regions per image (default 36)")
    data.add_argument("--num-workers", type=int, default=2, help="DataLoader workers per rank (default 2)")
    data.add_argument("--skip-corrupt", action="store_true",
                      help="drop a sample whose feature record fails its checksum (counted and logged with "
                           "the image id) instead of stopping the run")
    data.add_argument("--validation-split", default="val",
                      help="manifest split for validation losses and retrieval (default val; '' for none)")
    data.add_argument("--eval-images", type=int, default=100,
                      help="held-out images for zero-shot retrieval during training (default 100; 0: none)")
    run = add_run_arguments(parser, keep_last=3, epochs_default="the scheduler's total_num_steps",
                            outputs="checkpoints/, tensorboard/, model/ and train_log.jsonl")
    run.add_argument("--fit-schedule", action="store_true",
                     help="stretch the config's learning-rate schedule (total_num_steps, and "
                          "warm-up in proportion) to this run's length")


def check_args(args: argparse.Namespace) -> None:
    if args.init_model and (args.preset or args.model_config):
        raise UsageError("--init-model takes the model config from DIR/config.json; "
                         "drop --preset / --model-config")
    if args.preset and args.model_config:
        raise UsageError("give --preset or --model-config, not both")
    if args.init_model and args.init_bert:
        raise UsageError("--init-model and --init-bert both initialise the model; choose one")
    if args.model_config and not Path(args.model_config).is_file():
        raise UsageError(f"--model-config {args.model_config}: no such file")
    for flag in ("init_bert", "init_model"):
        value = getattr(args, flag)
        if value and not Path(value).is_dir():
            raise UsageError(f"--{flag.replace('_', '-')} {value}: no such directory")
    for flag in ("max_text_len", "max_regions"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    for flag in ("num_workers", "eval_images"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")


def model_config_from_args(args: argparse.Namespace) -> InterBertConfig:
    if args.init_model:
        config = InterBertConfig.from_json_file(Path(args.init_model) / "config.json")
    elif args.model_config:
        config = InterBertConfig.from_json_file(args.model_config)
    else:
        config = InterBertConfig.from_preset(args.preset or "paper-base")
    if args.tasks:
        try:
            config.pretraining_tasks = ",".join(parse_pretraining_tasks(args.tasks))
        except ValueError as error:
            raise UsageError(f"--tasks: {error}") from None
    return config


def build_model(args, model_config, say):
    if args.init_model:
        say(f"model: from {args.init_model}")
        return InterBertForPretraining.from_pretrained(args.init_model)
    model = InterBertForPretraining(model_config)
    if args.init_bert:
        report = model.init_from_bert(args.init_bert)
        say(f"model: text side initialised from BERT in {args.init_bert}: {report}")
    return model


def run(args: argparse.Namespace) -> int:
    check_args(args)
    job = startup.prepare(startup.RunSettings.from_args(args), "pretrain")
    try:
        model_config = model_config_from_args(args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    def check_inputs() -> None:  # on every host: each reads its own view of the paths
        check_paths(args.features, args.captions)
        check_feature_size(args.features, model_config)
        args.vocab = find_vocab(args.vocab, {"--init-bert": args.init_bert, "--init-model": args.init_model})

    startup.start(job, [check_inputs])
    return train(args, job, model_config)


def train(args, job, model_config) -> int:
    env, run, ds_config, precision = job.started, job.run, job.ds_config, job.precision
    data = build_run_data(
        features=args.features, captions=args.captions, vocab=args.vocab,
        model_config=model_config, micro_batch=ds_config["train_micro_batch_size_per_gpu"],
        rank=env.rank, world_size=env.world_size, num_workers=args.num_workers, seed=run.seed,
        max_text_len=args.max_text_len, max_regions=args.max_regions,
        validation_split=args.validation_split or None, skip_corrupt=args.skip_corrupt)
    retrieval = None
    if args.eval_images and args.validation_split:
        retrieval = build_retrieval_corpus(args.features, args.captions, args.vocab,
                                           args.validation_split, args.eval_images,
                                           args.max_text_len, args.max_regions)
    steps_per_epoch = max(len(data.train) // ds_config["gradient_accumulation_steps"], 1)
    max_steps = startup.plan_steps(run, ds_config, steps_per_epoch)
    if args.fit_schedule:
        job.say(dsc.fit_schedule(ds_config, max_steps, run.deepspeed_config))

    startup.seed_everything(run.seed)  # the same initial weights on every rank
    model = build_model(args, model_config, job.say)
    model.config.pretraining_tasks = model_config.pretraining_tasks  # --tasks over a loaded model's own
    model_config = model.config
    engine, optimizer = startup.build_engine(job, model)
    layer_norm = layer_norm_implementation(env.device)
    job.say(f"layer norm: {layer_norm}")
    peak = device_peak(env.device, precision.dtype)
    monitor = startup.make_monitor(job, "pretrain")
    describe_run(job, monitor, args, model_config, optimizer, layer_norm, peak, max_steps, steps_per_epoch,
                 len(data.train_set))
    objective = PretrainingObjective(model_config, device=env.device, dtype=precision.dtype,
                                     validation_loader=data.validation, retrieval_corpus=retrieval)
    loop = TrainingLoop(engine=engine, objective=objective, loader=data.train, monitor=monitor, env=env,
                        precision=precision, checkpoint_dir=run.checkpoint_dir, peak_flops=peak.flops_per_second,
                        schedule=Schedule(max_steps=max_steps, steps_per_epoch=steps_per_epoch,
                                          log_every=run.log_every, save_every=run.save_every,
                                          keep_last=run.keep_last, eval_every=run.eval_every),
                        guard=run.guard, rank_timeout=run.rank_timeout)
    status = startup.run_loop(loop, run.resume)
    if status == 0 and loop.step >= max_steps:
        if not run.eval_every or loop.step % run.eval_every:
            loop.evaluate()
        weights = startup.consolidated_weights(engine, job)  # every rank: gathered from their partitions
        if env.is_main:
            final = InterBertForPretraining(model_config)
            final.load_state_dict(weights, strict=True)
            startup.write_model_directory(final, run.output_dir / "model", args.vocab, job.say,
                                          "inference model (load with InterBertForPretraining.from_pretrained)")
        barrier()
    monitor.close()
    return status


def describe_run(job, monitor, args, model_config, optimizer, layer_norm, peak, max_steps, steps_per_epoch,
                 train_pairs) -> None:
    """Print the run's knobs once and keep them in OUTPUT_DIR/run_config.json and TensorBoard."""

    env, ds_config, precision = job.started, job.ds_config, job.precision
    summary = {
        "arguments": vars(args), "world_size": env.world_size, "launcher": env.launcher,
        "device": str(env.device), "precision": precision.name,
        "precision_reason": precision.reason, "optimizer": optimizer,
        "layer_norm": layer_norm, "peak_flops_per_device": peak.flops_per_second,
        "peak_source": peak.source, "max_steps": max_steps, "steps_per_epoch": steps_per_epoch,
        "train_pairs": train_pairs, "deepspeed_config": ds_config,
        "model_config": model_config.to_dict(), "tasks": model_config.pretraining_tasks.split(","),
    }
    startup.write_run_config(job, monitor, summary)
    monitor.print(f"training {max_steps} steps ({steps_per_epoch} per epoch over {train_pairs} "
                  f"pairs), global batch {ds_config['train_batch_size']} = "
                  f"{ds_config['train_micro_batch_size_per_gpu']} x "
                  f"{ds_config['gradient_accumulation_steps']} accumulation x {env.world_size} ranks")
    monitor.print(f"tasks: {model_config.pretraining_tasks.replace(',', ', ')}"
                  + (" (the paper's)" if model_config.pretraining_tasks == "msm,mrm,itm" else ""))
    monitor.print(f"peak for MFU: {peak.source}")
    total = scheduler_total_steps(ds_config)
    if total and total != max_steps:
        monitor.print(f"note: the scheduler's total_num_steps is {total}, the run is {max_steps} "
                      "steps: the learning rate will not follow the full schedule")
    monitor.print(f"TensorBoard: tensorboard --logdir {monitor.tensorboard_dir}")
    monitor.text("run/optimizer", optimizer)
    monitor.text("run/layer_norm", layer_norm)
    monitor.text("run/tasks", model_config.pretraining_tasks)
    monitor.text("run/precision", f"{precision.name}: {precision.reason}")


def main(argv: list[str] | None = None) -> int:
    return run_with_errors(build_parser().parse_args(argv), "interbert/pretrain.py")


def run_with_errors(args: argparse.Namespace, prog: str) -> int:
    """``run(args)``; a user's mistake is one line on stderr and exit status 2."""
    return run_reporting_user_errors(run, args, prog)


if __name__ == "__main__":
    sys.exit(main())

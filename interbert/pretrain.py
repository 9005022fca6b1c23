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

import os
import sys

if __package__ in (None, ""):
    # Run as a script (the DeepSpeed launcher does so): Python put interbert/ itself first on
    # sys.path, where its modules would shadow same-named top-level ones. Put the repository
    # root there instead so `interbert.*` imports resolve to this checkout.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from interbert.config import PRESETS, InterBertConfig  # noqa: E402
from interbert.data.tokenization import VOCAB_NAME, find_vocab  # noqa: E402
from interbert.errors import UsageError, run_reporting_user_errors  # noqa: E402
from interbert.training.precision import PRECISIONS  # noqa: E402



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
    run = parser.add_argument_group("run")
    run.add_argument("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config",
                     required=True, help="DeepSpeed JSON config (see ds_configs/)")
    run.add_argument("--output-dir", required=True,
                     help="checkpoints/, tensorboard/, model/ and train_log.jsonl go here")
    run.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="default auto: the config's choice on CUDA, bf16 instead of fp16 on a CPU")
    length = run.add_mutually_exclusive_group()
    length.add_argument("--max-steps", type=int, help="optimizer steps to train")
    length.add_argument("--epochs", type=float,
                        help="epochs to train (default: the scheduler's total_num_steps)")
    run.add_argument("--fit-schedule", action="store_true",
                     help="stretch the config's learning-rate schedule (total_num_steps, and "
                          "warm-up in proportion) to this run's length")
    run.add_argument("--save-every", type=int, default=1000,
                     help="checkpoint every N steps (default 1000; 0: at the end only)")
    run.add_argument("--keep-last", type=int, default=3, help="checkpoints to keep (default 3; 0: all)")
    run.add_argument("--log-every", type=int, default=50, help="console and TensorBoard every N steps (default 50)")
    run.add_argument("--eval-every", type=int, default=0,
                     help="validate every N steps (default 0: only at the end)")
    run.add_argument("--resume", action="store_true",
                     help="continue from the latest checkpoint in OUTPUT_DIR/checkpoints")
    run.add_argument("--seed", type=int, default=42, help="seed of every random draw (default 42)")
    run.add_argument("--local_rank", "--local-rank", type=int, default=None,
                     help="set by the DeepSpeed launcher")


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
    for flag in ("max_steps", "max_text_len", "max_regions", "log_every"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.epochs is not None and args.epochs <= 0:
        raise UsageError(f"--epochs must be positive, got {args.epochs}")
    for flag in ("save_every", "keep_last", "eval_every", "num_workers", "eval_images"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")


def model_config_from_args(args: argparse.Namespace) -> InterBertConfig:
    if args.init_model:
        return InterBertConfig.from_json_file(Path(args.init_model) / "config.json")
    if args.model_config:
        return InterBertConfig.from_json_file(args.model_config)
    return InterBertConfig.from_preset(args.preset or "paper-base")


def build_model(args, model_config, say):
    from interbert.modeling import InterBertForPretraining

    if args.init_model:
        say(f"model: from {args.init_model}")
        return InterBertForPretraining.from_pretrained(args.init_model)
    model = InterBertForPretraining(model_config)
    if args.init_bert:
        report = model.init_from_bert(args.init_bert)
        say(f"model: text side initialised from BERT in {args.init_bert}: {report}")
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_cpu_threads(placement, device, say) -> None:
    """Share the cores between the ranks of this node unless OMP_NUM_THREADS says otherwise."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, (os.cpu_count() or 1) // max(placement.local_size, 1))
    torch.set_num_threads(threads)
    say(f"CPU threads per rank: {threads} ({os.cpu_count()} cores, {placement.local_size} ranks here)")


def run(args: argparse.Namespace) -> int:
    from interbert.training import ds_config as dsc
    from interbert.training.distributed import discover_job, init_process_group, job_device
    from interbert.training.precision import resolve_precision

    check_args(args)
    placement = discover_job(args.local_rank)
    is_main = placement.rank == 0

    def say(message: str) -> None:
        if is_main:
            print(f"[pretrain] {message}", flush=True)

    # Everything that can be checked without the process group is checked first, on every
    # rank alike, so a mistake fails at once instead of hanging a collective.
    config_path = args.deepspeed_config
    ds_config = dsc.resolve_batch_sizes(dsc.load_ds_config(config_path), placement.world_size,
                                        config_path)
    device = job_device(placement)
    precision = resolve_precision(args.precision, ds_config, device, config_path)
    try:
        model_config = model_config_from_args(args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    from interbert.training.corpus import check_paths

    check_paths(args.features, args.captions)
    args.vocab = find_vocab(args.vocab, {"--init-bert": args.init_bert, "--init-model": args.init_model})
    output_dir = Path(args.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    if args.resume and not (checkpoint_dir / "latest").is_file():
        raise UsageError(f"--resume: no checkpoint in {checkpoint_dir} (no 'latest' file); "
                         "start without --resume")
    if not args.resume and (checkpoint_dir / "latest").is_file():
        raise UsageError(f"{checkpoint_dir} already holds checkpoints: pass --resume to continue "
                         "that run, or choose another --output-dir")

    env = init_process_group(placement, device)
    set_cpu_threads(placement, device, say)
    say(f"{env.world_size} rank(s) via {env.launcher}, device {device}, backend {env.backend}")
    say(f"precision: {precision.name} ({precision.reason})")
    return train(args, env, ds_config, precision, model_config, output_dir, checkpoint_dir, say)


def train(args, env, ds_config, precision, model_config, output_dir, checkpoint_dir, say) -> int:
    import deepspeed

    from interbert.modeling.layer_norm import layer_norm_implementation
    from interbert.training import ds_config as dsc
    from interbert.evaluation.retrieval import build_retrieval_corpus
    from interbert.training.corpus import build_run_data
    from interbert.training.flops import device_peak
    from interbert.training.monitor import Monitor
    from interbert.training.optimizer import build_optimizer
    from interbert.training.trainer import Schedule, Trainer

    data = build_run_data(
        features=args.features, captions=args.captions, vocab=args.vocab,
        model_config=model_config, micro_batch=ds_config["train_micro_batch_size_per_gpu"],
        rank=env.rank, world_size=env.world_size, num_workers=args.num_workers, seed=args.seed,
        max_text_len=args.max_text_len, max_regions=args.max_regions,
        validation_split=args.validation_split or None, skip_corrupt=args.skip_corrupt)
    retrieval = None
    if args.eval_images and args.validation_split:
        retrieval = build_retrieval_corpus(args.features, args.captions, args.vocab,
                                           args.validation_split, args.eval_images,
                                           args.max_text_len, args.max_regions)
    steps_per_epoch = max(len(data.train) // ds_config["gradient_accumulation_steps"], 1)
    max_steps = plan_steps(args, ds_config, steps_per_epoch, args.deepspeed_config)
    if args.fit_schedule:
        say(dsc.fit_schedule(ds_config, max_steps, args.deepspeed_config))

    seed_everything(args.seed)  # the same initial weights on every rank
    model = build_model(args, model_config, say)
    model_config = model.config
    choice = build_optimizer(model, ds_config, env.device, args.deepspeed_config)
    say(f"optimizer: {choice.implementation}" + (f" (passed over: {'; '.join(choice.tried)})"
                                                   if choice.tried else ""))
    layer_norm = layer_norm_implementation(env.device)
    say(f"layer norm: {layer_norm}")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=choice.optimizer,
                                           config=dsc.for_engine(ds_config))
    seed_everything(args.seed + env.rank)  # distinct dropout streams per rank

    peak = device_peak(env.device, precision.dtype)
    monitor = Monitor(output_dir, enabled=env.is_main, tensorboard=dsc.tensorboard_enabled(ds_config),
                      deepspeed_monitors=dsc.external_monitors(ds_config))
    describe_run(monitor, args, env, ds_config, precision, model_config, choice, layer_norm, peak,
                 max_steps, steps_per_epoch, len(data.train.dataset), output_dir)
    trainer = Trainer(engine=engine, model_config=model_config, train_loader=data.train,
                      validation_loader=data.validation, retrieval_corpus=retrieval,
                      monitor=monitor, env=env, precision=precision,
                      schedule=Schedule(max_steps=max_steps, steps_per_epoch=steps_per_epoch,
                                        log_every=args.log_every, save_every=args.save_every,
                                        keep_last=args.keep_last, eval_every=args.eval_every),
                      checkpoint_dir=checkpoint_dir, peak=peak)
    if args.resume:
        trainer.resume()
    status = trainer.train()
    if status == 0 and trainer.step >= max_steps:
        if not args.eval_every or trainer.step % args.eval_every:
            trainer.validate()
        save_inference_model(engine, precision, model_config, checkpoint_dir, trainer.step, args.vocab,
                             output_dir / "model", env, say)
    monitor.close()
    return status


def plan_steps(args, ds_config, steps_per_epoch, config_path) -> int:
    from interbert.training import ds_config as dsc

    if args.max_steps:
        return args.max_steps
    if args.epochs:
        return max(1, round(args.epochs * steps_per_epoch))
    total = dsc.scheduler_total_steps(ds_config)
    if not total:
        raise UsageError(f"give --max-steps or --epochs ({config_path} has no "
                         "scheduler.params.total_num_steps to take the run length from)")
    return int(total)


def describe_run(monitor, args, env, ds_config, precision, model_config, choice, layer_norm,
                 peak, max_steps, steps_per_epoch, train_pairs, output_dir) -> None:
    """Print the run's knobs once and keep them in OUTPUT_DIR/run_config.json and TensorBoard."""
    from interbert.training.ds_config import scheduler_total_steps

    summary = {
        "arguments": vars(args), "world_size": env.world_size, "launcher": env.launcher,
        "device": str(env.device), "precision": precision.name,
        "precision_reason": precision.reason, "optimizer": choice.implementation,
        "layer_norm": layer_norm, "peak_flops_per_device": peak.flops_per_second,
        "peak_source": peak.source, "max_steps": max_steps, "steps_per_epoch": steps_per_epoch,
        "train_pairs": train_pairs, "deepspeed_config": ds_config,
        "model_config": model_config.to_dict(),
    }
    if not env.is_main:
        return
    (output_dir / "run_config.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    monitor.print(f"training {max_steps} steps ({steps_per_epoch} per epoch over {train_pairs} "
                  f"pairs), global batch {ds_config['train_batch_size']} = "
                  f"{ds_config['train_micro_batch_size_per_gpu']} x "
                  f"{ds_config['gradient_accumulation_steps']} accumulation x {env.world_size} ranks")
    monitor.print(f"peak for MFU: {peak.source}")
    total = scheduler_total_steps(ds_config)
    if total and total != max_steps:
        monitor.print(f"note: the scheduler's total_num_steps is {total}, the run is {max_steps} "
                      "steps: the learning rate will not follow the full schedule")
    monitor.print(f"TensorBoard: tensorboard --logdir {monitor.tensorboard_dir}")
    monitor.text("run/optimizer", choice.implementation)
    monitor.text("run/layer_norm", layer_norm)
    monitor.text("run/precision", f"{precision.name}: {precision.reason}")
    monitor.text("run/config", "```\n" + json.dumps(summary, indent=2, default=str) + "\n```")


def save_inference_model(engine, precision, model_config, checkpoint_dir, step, vocab, directory, env, say):
    """Rank 0 writes a model directory with consolidated fp32 weights (from the ZeRO
    partitions of the final checkpoint when training was not in fp32) and the run's vocab.txt."""
    from interbert.modeling import InterBertForPretraining
    from interbert.training.checkpoint import tag_for
    from interbert.training.distributed import barrier

    if env.is_main:
        if precision.name == "fp32":
            model = engine.module
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag_for(step))
            model = InterBertForPretraining(model_config)
            model.load_state_dict(state, strict=True)
        model.save_pretrained(directory)
        shutil.copyfile(vocab, Path(directory) / VOCAB_NAME)
        say(f"inference model saved: {directory} (load with InterBertForPretraining.from_pretrained)")
    barrier()


def main(argv: list[str] | None = None) -> int:
    return run_with_errors(build_parser().parse_args(argv), "interbert/pretrain.py")


def run_with_errors(args: argparse.Namespace, prog: str) -> int:
    """``run(args)``; a user's mistake is one line on stderr and exit status 2."""
    return run_reporting_user_errors(run, args, prog)


if __name__ == "__main__":
    sys.exit(main())

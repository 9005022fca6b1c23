"""`interbert info` and `interbert convert-release`."""
from __future__ import annotations

import argparse
import json
import os
import sys

from interbert.config import PRESETS, InterBertConfig


def _config_from_args(args: argparse.Namespace) -> InterBertConfig:
    if args.config:
        return InterBertConfig.from_json_file(args.config)
    return InterBertConfig.from_preset(args.preset)


def _add_config_flags(parser: argparse.ArgumentParser, default_preset: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", choices=sorted(PRESETS), default=default_preset,
                       help=f"model preset (default {default_preset})")
    group.add_argument("--config", help="a model config JSON file (overrides --preset)")


def run_info(args: argparse.Namespace) -> int:
    from interbert.modeling.layer_norm import layer_norm_implementation
    from interbert.modeling.parameters import count_parameters
    from interbert.modeling.pretraining import InterBertForPretraining

    config = _config_from_args(args)
    report = {
        "preset": None if args.config else args.preset,
        "config": args.config,
        "parameters": count_parameters(InterBertForPretraining(config)),
        "layers": {name: stream.num_layers for name, stream in config.streams().items()},
        "layer_norm": {"cpu": layer_norm_implementation("cpu"),
                       "cuda": layer_norm_implementation("cuda")},
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


def run_convert_release(args: argparse.Namespace) -> int:
    from interbert.modeling.release import convert_release

    if os.path.lexists(args.out) and not args.overwrite:
        print(f"interbert convert-release: {args.out} already exists; choose another --out or pass --overwrite to "
              "replace the model there", file=sys.stderr)
        return 2
    try:
        report = convert_release(args.checkpoint, args.out, _config_from_args(args))
    except (ValueError, FileNotFoundError) as error:
        print(f"interbert convert-release: {error}", file=sys.stderr)
        return 2
    print(f"converted {report.converted} tensors into {report.output} "
          "(ITM classes reordered: 1 = matched)")
    if report.task_heads:
        print(f"kept {len(report.task_heads)} fine-tuning head tensors "
              f"({', '.join(report.task_heads)}) in {report.output}/release_task_heads.safetensors")
    return 0


def register(subparsers) -> None:
    info = subparsers.add_parser("info", help="parameter counts per part of a preset, as JSON")
    _add_config_flags(info, "paper-base")
    info.set_defaults(func=run_info)

    convert = subparsers.add_parser(
        "convert-release",
        help="the authors' released InterBERT weights -> a model directory",
        description="Convert a released InterBERT state_dict (pytorch_model_*.bin, with or "
                    "without a 'module.' prefix; the Flickr30K fine-tuned release too) into a "
                    "directory that InterBertForPretraining.from_pretrained loads.",
    )
    convert.add_argument("checkpoint", help="the released .bin file (or a .safetensors copy)")
    convert.add_argument("--out", required=True, help="the model directory to write")
    convert.add_argument("--overwrite", action="store_true", help="replace a model directory at --out")
    _add_config_flags(convert, "release-base")
    convert.set_defaults(func=run_convert_release)

"""`interbert evaluate retrieval`: zero-shot image-text retrieval of a saved model.

    interbert evaluate retrieval --model runs/demo/model --features demo/features \\
        --captions demo/captions.jsonl --split test --images 100

Scores every caption against every image with the ITM head (the project's one retrieval scorer,
`interbert.evaluation.full_retrieval.evaluate_full_retrieval`: pairs in unpadded buckets of one caption
length x one region count), prints R@1/5/10 in both directions next to chance, and optionally
writes them as JSON. `--precision bf16` scores with a bfloat16 copy of the model (faster where
the hardware has bf16 matmuls; may change a few ranks). Under `torchrun` or `deepspeed`, every
rank scores its share of the pairs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from interbert.data.retrieval.corpus import build_retrieval_corpus
from interbert.data.text.tokenization import find_vocab
from interbert.errors import UserError
from interbert.evaluation.full_retrieval import evaluate_full_retrieval
from interbert.evaluation.metrics import format_table
from interbert.modeling import InterBertForPretraining


def run_retrieval(args: argparse.Namespace) -> int:
    import torch

    for flag, path, kind in (("--model", args.model, "dir"), ("--features", args.features, "dir"),
                             ("--captions", args.captions, "file")):
        exists = Path(path).is_dir() if kind == "dir" else Path(path).is_file()
        if not exists:
            print(f"interbert evaluate retrieval: {flag} {path}: no such "
                  f"{'directory' if kind == 'dir' else 'file'}", file=sys.stderr)
            return 2
    if args.images is not None and args.images < 2:
        print("interbert evaluate retrieval: --images must be at least 2", file=sys.stderr)
        return 2
    if args.batch_size is not None and args.batch_size < 1:
        print("interbert evaluate retrieval: --batch-size must be at least 1", file=sys.stderr)
        return 2
    distributed = _init_distributed_if_launched()
    device = _device()
    try:
        model = InterBertForPretraining.from_pretrained(args.model).to(device)
        vocab = find_vocab(args.vocab, {"--model": args.model})
        corpus = build_retrieval_corpus(args.features, [args.captions], vocab, args.split,
                                        args.images, args.max_text_len, args.max_regions)
    except (UserError, ValueError, FileNotFoundError) as error:
        print(f"interbert evaluate retrieval: {error}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    result = evaluate_full_retrieval(model, corpus, device=device, pair_batch=args.batch_size,
                                     precision=args.precision, progress=True)
    run = result.full
    rank = torch.distributed.get_rank() if distributed else 0
    if rank == 0:
        print(f"zero-shot retrieval of {args.model} on split {args.split!r}: {result.num_images} "
              f"images, {result.num_captions} captions, {run.pairs} pairs scored in {run.seconds:.1f} s "
              f"(precision {result.precision}, at most {result.pair_batch} pairs per forward pass)")
        print(format_table(run.metrics, result.chance))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "model": args.model, "split": args.split, "images": result.num_images,
                "captions": result.num_captions, "precision": result.precision,
                "pair_batch": result.pair_batch, "metrics": run.metrics,
                "chance": result.chance, "seconds": run.seconds}, indent=2) + "\n")
            print(f"metrics written to {args.json}")
    return 0


def _device():
    """This rank's GPU (LOCAL_RANK) when CUDA is available, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _init_distributed_if_launched() -> bool:
    """Join the launcher's process group when there is one (nccl on this rank's GPU, else gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(_device())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def register(subparsers) -> None:
    evaluate = subparsers.add_parser("evaluate", help="evaluate a saved model (retrieval)")
    commands = evaluate.add_subparsers(dest="evaluate_command", metavar="EVALUATE_COMMAND")
    commands.required = True
    retrieval = commands.add_parser(
        "retrieval", help="zero-shot image-text retrieval: R@1/5/10 both ways, next to chance",
        description=__doc__.split("\n\n")[0])
    retrieval.add_argument("--model", required=True, help="model directory (save_pretrained)")
    retrieval.add_argument("--features", required=True, help="feature store (LMDB directory)")
    retrieval.add_argument("--captions", required=True, help="caption manifest (JSON lines)")
    retrieval.add_argument("--split", default="test", help="manifest split to evaluate on")
    retrieval.add_argument("--images", type=int, default=None,
                           help="the first N images of the split (default: all)")
    retrieval.add_argument("--vocab", help="the bert-base-uncased vocab.txt (default: vocab.txt of --model)")
    retrieval.add_argument("--batch-size", type=int, default=None,
                           help="at most this many pairs per forward pass (default: sized to about "
                                "1 GiB of activations)")
    retrieval.add_argument("--precision", choices=("exact", "bf16"), default="exact",
                           help="exact (default): score with the model as saved (fp32); bf16: with a "
                                "bfloat16 copy, faster where the CPU or GPU has bf16 matmuls (runs "
                                "anywhere PyTorch does), and may change a few ranks where two scores "
                                "differ by less than bf16 rounding")
    retrieval.add_argument("--max-text-len", type=int, default=36)
    retrieval.add_argument("--max-regions", type=int, default=36)
    retrieval.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    retrieval.add_argument("--json", help="also write the metrics to this JSON file")
    retrieval.set_defaults(func=run_retrieval)

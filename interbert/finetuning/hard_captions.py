"""Precompute the release's kind of Flickr30K hard negatives: for every training image, the captions
of other images that a model scores highest for it (`--hard-negatives release-captions`).

    python -m interbert.finetuning.hard_captions --model runs/pretrain/model --features stores/flickr30k \\
        --captions f30k.jsonl --out f30k_hard_captions.json

Images are scored in chunks of 64, each chunk against `--candidates` random captions of the split
with the model's ITM head (a caption of the image itself never counts); each image keeps its
`--pool-size` highest-scoring captions. The release scored every caption against every image
(29,000 images x 145,000 captions for Flickr30K, 4.2 billion pairs); candidates bound that to
images x candidates pairs (58 million at the default 2,000).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from interbert.data.text.tokenization import find_vocab
from interbert.errors import UsageError, run_reporting_user_errors
from interbert.evaluation.pair_scoring import PairEmbedder
from interbert.finetuning.flickr30k import Flickr30kTrainSet, HardCaptionPool, score_captions_against_images
from interbert.modeling import InterBertForPretraining


def build_pool(model, dataset: Flickr30kTrainSet, *, split: str, pool_size: int, candidates: int, seed: int,
               device: torch.device, dtype: torch.dtype, chunk: int = 64, pair_batch: int = 256,
               progress=None) -> HardCaptionPool:

    scorer = PairEmbedder(model, device, dtype)
    rng = np.random.Generator(np.random.PCG64([seed, 11]))
    pool = {}
    for start in range(0, len(dataset.image_ids), chunk):
        images = np.arange(start, min(start + chunk, len(dataset.image_ids)))
        captions = rng.choice(len(dataset.texts), size=min(candidates, len(dataset.texts)), replace=False)
        scores = score_captions_against_images(scorer, dataset, captions, images, pair_batch)  # captions x images
        keep = min(pool_size, len(captions))
        top = scores.topk(keep, dim=0)
        for column, image in enumerate(images):
            valid = torch.isfinite(top.values[:, column])
            pool[dataset.image_ids[image]] = captions[top.indices[:, column][valid].numpy()].tolist()
        if progress is not None:
            progress(len(images))
    return HardCaptionPool(pool, split, len(dataset.texts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interbert.finetuning.hard_captions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model directory (pretrained or fine-tuned)")
    parser.add_argument("--features", required=True, help="feature store of the images")
    parser.add_argument("--captions", required=True, help="caption manifest with the split")
    parser.add_argument("--out", required=True, help="the pool file to write (JSON)")
    parser.add_argument("--split", default="train", help="manifest split (default train)")
    parser.add_argument("--pool-size", type=int, default=20, help="hard captions kept per image (default 20)")
    parser.add_argument("--candidates", type=int, default=2000,
                        help="random captions scored against each chunk of images (default 2000)")
    parser.add_argument("--max-regions", type=int, default=100, help="regions per image (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the candidate draws (default 0)")
    parser.add_argument("--vocab", help="vocab.txt (default: the model directory's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return run_reporting_user_errors(_run, parser.parse_args(argv), "interbert.finetuning.hard_captions")


def _run(args) -> int:
    if Path(args.out).exists() and not args.overwrite:
        raise UsageError(f"{args.out} already exists; choose another --out or pass --overwrite to replace it")
    if args.pool_size < 1 or args.candidates < 1:
        raise UsageError("--pool-size and --candidates must be at least 1")
    vocab = find_vocab(args.vocab, {"--model": args.model})
    model = InterBertForPretraining.from_pretrained(args.model)
    dataset = Flickr30kTrainSet(args.features, args.captions, vocab, split=args.split, max_regions=args.max_regions)
    started, done = time.perf_counter(), [0]

    def progress(images: int) -> None:
        done[0] += images
        print(f"\r{done[0]}/{len(dataset.image_ids)} images", end="", file=sys.stderr, flush=True)

    pool = build_pool(model, dataset, split=args.split, pool_size=args.pool_size, candidates=args.candidates,
                      seed=args.seed, device=torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                      dtype=torch.float32, progress=progress)
    pool.save(args.out)
    print(f"\nwrote {args.out}: {len(pool.pool)} images x up to {args.pool_size} hard captions "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

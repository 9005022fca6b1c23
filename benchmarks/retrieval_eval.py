#!/usr/bin/env python
"""Retrieval evaluation speed: our full evaluation against the released evaluation's loop, in
the same run, on the same model, corpus and threads.

  python benchmarks/retrieval_eval.py --images 40 --preset tiny --json runs/retrieval_eval.json

The released-style loop (as the authors' ViLBERT-derived evaluation does it): all test images'
features preloaded into one tensor padded to max_regions + 1, captions padded to max_text_len;
for each caption, batches of 500 images, the caption repeated 500 times, through the model's
ordinary forward. The release's model is a ViLBERT fork whose forward runs all pretraining heads
on every call (`self.cls(...)`: vocabulary logits at every text position, class logits at every
region, then the ITM logits the evaluation keeps), so the loop does that too; a second row times
the same loop with the ITM head only, and the output gives our speed-up against both. Ours:
`interbert.evaluation.full_retrieval.evaluate_full_retrieval` (region and text embeddings and the
first interaction layer's projections once per image / caption, the last extraction layers
computed for token 0 only, pairs grouped into buckets of one caption length × one region count so
that none is padded and attention needs no mask, every pair scored), once per `--precisions`
entry: "exact" (the model's fp32) and "bf16" (a bfloat16 copy of the weights), each its own row;
the bf16 row also counts the captions and images whose rank of their own match differs from the
exact row. Both score all C×I pairs of `--images` images. The released-style loop runs at its own
operating point, 500 images per forward, so it gets `--released-images` (default 500) images of
the same synthetic distribution and is timed on `--released-captions` captions against all of
them (pairs/s does not depend on how many captions are timed). Scores of the captions both score
are compared.

`--device` (default: cuda when PyTorch sees one, else cpu) holds the model and every tensor;
`--autocast` picks the precision both loops run in: fp32 (no autocast), fp16 or bf16 through
torch.autocast; "auto" is bf16 on a GPU that has it, fp16 on an older GPU, fp32 on a CPU. Under
autocast the default `--precisions` is "exact" alone (the weights stay fp32, autocast casts).
The output and the JSON state the device and the precision.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from interbert.config import PRESETS, InterBertConfig  # noqa: E402
from interbert.data.ingest.synth import synthesize_corpus  # noqa: E402
from interbert.data.retrieval.corpus import RetrievalCorpus  # noqa: E402
from interbert.evaluation.bucket_scoring import PRECISIONS  # noqa: E402
from interbert.evaluation.full_retrieval import evaluate_full_retrieval, format_result  # noqa: E402
from interbert.evaluation.metrics import image_to_text_ranks, text_to_image_ranks  # noqa: E402
from interbert.modeling import InterBertForPretraining  # noqa: E402
from interbert.modeling.heads import ITM_MATCHED  # noqa: E402

RELEASED_HEADS = ("all", "itm")


def released_forward(model, batch: dict, heads: str) -> torch.Tensor:
    """Match probabilities of a batch through the ordinary forward. heads="all" also computes
    what the release's forward computes on every call and the evaluation throws away: the
    pretraining heads' vocabulary logits at every text position and class logits at every region
    (ViLBERT-derived models run `self.cls(...)` on each forward); "itm": the ITM head only."""
    if heads == "itm":
        return model.itm_score(**batch)
    output = model.interbert(**batch)
    model.msm_head(output.text_hidden, model.interbert.embeddings.word_embeddings.weight)
    model.mrm_head(output.image_hidden)
    return model.itm_head(output.pooled_text, output.pooled_image).float().softmax(-1)[:, ITM_MATCHED]


def released_style_scores(model, corpus, caption_indices, images_per_batch: int, max_text_len: int,
                          heads: str = "all", device: torch.device | None = None) -> torch.Tensor:
    """Scores of `caption_indices` × all images the released way: fixed padding, the caption
    repeated against batches of `images_per_batch` preloaded images, the ordinary forward; the
    inputs on `device` (default: cpu), the scores returned on the CPU."""
    device = device or torch.device("cpu")
    num_images = len(corpus.image_ids)
    images = corpus.image_batch(list(range(num_images)))  # preloaded, as features_all
    regions = corpus.max_regions + 1
    fixed = {key: torch.nn.functional.pad(value, (0, 0) * (value.dim() - 2) + (0, regions - value.shape[1])).to(device)
             for key, value in images.items()}
    scores = torch.empty(len(caption_indices), num_images)
    with torch.no_grad():
        for row, caption in enumerate(caption_indices):
            text = corpus.text_batch([caption])
            text = {key: torch.nn.functional.pad(value, (0, max_text_len - value.shape[1])).to(device)
                    for key, value in text.items()}
            for start in range(0, num_images, images_per_batch):
                count = min(images_per_batch, num_images - start)
                batch = {key: value.expand(count, -1) for key, value in text.items()}
                batch.update({key: value[start:start + count] for key, value in fixed.items()})
                scores[row, start:start + count] = released_forward(model, batch, heads).float().cpu()
    return scores


def rank_changes(scores: torch.Tensor, reference: torch.Tensor, caption_image: torch.Tensor) -> dict:
    """How many captions (text→image) and images (image→text) rank their own match differently
    under `scores` than under `reference`."""
    return {"t2i_captions": int((text_to_image_ranks(scores, caption_image)
                                 != text_to_image_ranks(reference, caption_image)).sum()),
            "i2t_images": int((image_to_text_ranks(scores, caption_image)
                               != image_to_text_ranks(reference, caption_image)).sum())}


AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def has_bf16(device: torch.device) -> bool:
    """Whether bf16 runs natively here: a CPU (autocast supports it), a GPU of compute capability >= 8.0."""
    return device.type == "cpu" or torch.cuda.get_device_capability(device)[0] >= 8


def resolve_autocast(requested: str, device: torch.device) -> str:
    """fp32, fp16 or bf16: "auto" is fp32 on a CPU, bf16 on a GPU that has it, else fp16."""
    if requested != "auto":
        return requested
    if device.type == "cpu":
        return "fp32"
    return "bf16" if has_bf16(device) else "fp16"


def precision_context(autocast: str, device: torch.device):
    """torch.autocast in `autocast` on `device`, or nothing for fp32."""
    dtype = AUTOCAST[autocast]
    return nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"


def check_device(parser, args) -> torch.device:
    """The device of --device, refused in one line when this machine lacks it or its --autocast."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: expected cpu or cuda")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: expected cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA device here; use --device cpu")
    if args.autocast == "bf16" and not has_bf16(device):
        parser.error(f"--autocast bf16: {device_name(device)} has no bf16 (compute capability < 8.0); use fp16")
    return device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100, help="test images of our full evaluation (5 captions each)")
    parser.add_argument("--released-images", type=int, default=500, help="images the released-style loop scores")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="a randomly initialised model")
    parser.add_argument("--model", help="a saved model directory instead (e.g. runs/demo/model, with --corpus)")
    parser.add_argument("--max-regions", type=int, default=36)
    parser.add_argument("--max-text-len", type=int, default=36)
    parser.add_argument("--released-batch", type=int, default=500, help="images per forward, released loop")
    parser.add_argument("--released-captions", type=int, default=4, help="captions timed in the released loop")
    parser.add_argument("--pair-batch", type=int, default=0, help="ours: pairs per forward (0: from memory)")
    parser.add_argument("--precisions", nargs="+", choices=list(PRECISIONS),
                        help="ours: one row per weight precision, the first the reference of the rank counts "
                             "(default: exact and bf16 in fp32, exact alone under autocast)")
    parser.add_argument("--device", default=default_device(), help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--autocast", choices=("auto", *AUTOCAST), default="auto",
                        help="precision of both loops: auto (bf16 on a GPU that has it, fp16 on an older GPU, "
                             "fp32 on a CPU), fp32, fp16, bf16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--corpus", help="an existing corpus directory (features/, captions.jsonl)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = check_device(parser, args)
    autocast = resolve_autocast(args.autocast, device)
    run_precision = "fp32" if autocast == "fp32" else f"autocast {autocast}"
    args.precisions = args.precisions or (list(PRECISIONS) if autocast == "fp32" else ["exact"])
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.corpus) if args.corpus else Path(scratch) / "corpus"
        largest = max(args.images, args.released_images)
        if not args.corpus:
            synthesize_corpus(root, largest + 2, seed=args.seed, val_images=0, test_images=largest, progress=False)

        def load(count):
            corpus = RetrievalCorpus(root / "features", root / "captions.jsonl", split=args.split, max_images=count,
                                     max_regions=args.max_regions, max_text_len=args.max_text_len)
            for index in range(len(corpus.image_ids)):
                corpus.image(index)  # decoded before timing: the comparison is of the scoring
            return corpus

        corpus, released_corpus = load(args.images), load(args.released_images)
        torch.manual_seed(args.seed)
        if args.model:
            model = InterBertForPretraining.from_pretrained(args.model).eval()
        else:
            model = InterBertForPretraining(InterBertConfig.from_preset(args.preset)).eval()
        model.to(device)
        captions, images = len(corpus), len(corpus.image_ids)
        print(f"{args.model or args.preset + ' preset'}, {images} images x {captions} captions = "
              f"{images * captions} pairs, {torch.get_num_threads()} threads")
        print(f"device: {device} ({device_name(device)}); precision: {run_precision}")
        timed = list(range(min(args.released_captions, captions)))
        with precision_context(autocast, device):
            if device.type == "cuda":  # warm-up: CUDA context, kernels, allocator, before anything is timed
                released_style_scores(model, released_corpus, timed[:1], args.released_batch, args.max_text_len,
                                      "itm", device)
            runs = {}
            for weights in args.precisions:
                runs[weights] = evaluate_full_retrieval(model, corpus, device=device,
                                                        pair_batch=args.pair_batch or None, precision=weights)
                print(format_result(runs[weights]))
            loops = {}
            for heads in RELEASED_HEADS:
                start = time.perf_counter()
                scores = released_style_scores(model, released_corpus, timed, args.released_batch, args.max_text_len,
                                               heads, device)
                loops[heads] = (scores, time.perf_counter() - start)
        ours = runs[args.precisions[0]]
    released, released_seconds = loops["all"]
    released_pairs_per_second = released.numel() / released_seconds
    itm_only_pairs_per_second = loops["itm"][0].numel() / loops["itm"][1]
    # The first images of both corpora are the same images (manifest order).
    shared = min(images, len(released_corpus.image_ids))
    difference = float((released[:, :shared] - ours.scores[timed, :shared]).abs().max())
    caption_image = torch.as_tensor(corpus.caption_to_image)
    changes = {precision: rank_changes(run.scores, ours.scores, caption_image) for precision, run in runs.items()}
    real_tokens = float(np.mean(corpus.captions.lengths())) + float(np.mean(
        [corpus.image(i)[0].shape[0] for i in range(images)]))
    per_forward = min(args.released_batch, len(released_corpus.image_ids))
    rows = [(f"released-style loop, {per_forward} images/forward", released.numel(), released_seconds,
             released_pairs_per_second),
            ("  the same loop, ITM head only", loops["itm"][0].numel(), loops["itm"][1], itm_only_pairs_per_second),
            *((f"ours: full evaluation, {weights}{'' if autocast == 'fp32' else ', ' + run_precision}", run.full.pairs,
               run.full.seconds, run.full.pairs_per_second) for weights, run in runs.items())]
    print(f"\n{'method':48}{'pairs':>9}{'seconds':>10}{'pairs/s':>10}{'speed-up':>10}")
    for name, pairs, seconds, rate in rows:
        print(f"{name:48}{pairs:>9}{seconds:>10.2f}{rate:>10.1f}{rate / released_pairs_per_second:>9.1f}x")
    print("speed-up: against the released-style loop, which computes every head as the release's forward "
          f"does; against the ITM-only loop ours is {ours.full.pairs_per_second / itm_only_pairs_per_second:.1f}x "
          f"({args.precisions[0]})")
    print(f"largest score difference, released-style vs ours ({args.precisions[0]}), on the {len(timed)} shared "
          f"captions: {difference:.2e}")
    for precision, run in list(runs.items())[1:]:
        print(f"{precision} vs {args.precisions[0]}: largest score difference "
              f"{float((run.scores - ours.scores).abs().max()):.2e}; own-match rank changed for "
              f"{changes[precision]['t2i_captions']} of {captions} captions (text->image) and "
              f"{changes[precision]['i2t_images']} of {images} images (image->text)")
    print(f"tokens per pair: released pads to {args.max_text_len + args.max_regions + 1}; the corpus averages "
          f"{real_tokens:.1f} real tokens (captions + regions with the global token)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "model": args.model or f"{args.preset} preset", "images": images, "captions": captions,
            "threads": torch.get_num_threads(),
            "device": str(device), "device_name": device_name(device), "precision": run_precision, "autocast": autocast,
            "released": {"pairs": released.numel(), "seconds": released_seconds,
                         "images": len(released_corpus.image_ids),
                         "pairs_per_second": released_pairs_per_second, "images_per_batch": args.released_batch,
                         "heads": "all (vocabulary logits at every text position, class logits at every region, ITM)"},
            "released_itm_only": {"pairs": loops["itm"][0].numel(), "seconds": loops["itm"][1],
                                  "max_score_difference_to_all_heads": float((loops["itm"][0] - released).abs().max()),
                                  "pairs_per_second": itm_only_pairs_per_second,
                                  "speedup_of_ours": {precision: run.full.pairs_per_second / itm_only_pairs_per_second
                                                      for precision, run in runs.items()}},
            "ours": {precision: {"pairs": run.full.pairs, "seconds": run.full.seconds,
                                 "pairs_per_second": run.full.pairs_per_second, "pair_batch": run.pair_batch,
                                 "metrics": run.full.metrics, "rank_changes": changes[precision],
                                 "speedup": run.full.pairs_per_second / released_pairs_per_second}
                     for precision, run in runs.items()},
            "max_score_difference": difference,
            "padded_tokens_per_pair_released": args.max_text_len + args.max_regions + 1,
            "mean_real_tokens_per_pair": real_tokens}, indent=2) + "\n")
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

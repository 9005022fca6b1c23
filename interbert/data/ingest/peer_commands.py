"""``interbert data convert-lmdb`` and ``convert-vinvl``: the stores other projects wrote.

Formats and their layouts: docs/formats.md. Each converter module is imported when its command
runs, so ``interbert data`` starts light.
"""
from __future__ import annotations

import argparse
import os

from interbert.data.ingest.converter_flags import conversion_options, report_conversion, store_flags
from interbert.data.ingest.guarded_command import guarded

LMDB_FORMATS = ("vilbert", "uniter", "tensorpack")
FORMAT_ONLY_FLAGS = {"image_sizes": ("--image-sizes", "uniter"), "captions_out": ("--captions-out", "tensorpack")}


def _write_captions(result, path: str, split: str) -> None:
    from interbert.data.text.manifests import write_manifest

    count = write_manifest(path, ({"image_id": image_id, "caption": caption, "split": split, "source": "cc"}
                                  for image_id, caption in result.captions))
    print(f"wrote {path}: {count} captions (split {split})")


def run_convert_lmdb(args: argparse.Namespace) -> int:
    from interbert.data.ingest.detections import ConversionError

    if args.format not in LMDB_FORMATS:
        raise ConversionError(f"unknown --format {args.format!r}; give one of {', '.join(LMDB_FORMATS)} "
                              "(docs/formats.md)")
    for attribute, (flag, fmt) in FORMAT_ONLY_FLAGS.items():
        if getattr(args, attribute) and args.format != fmt:
            raise ConversionError(f"{flag} applies to --format {fmt} only")
    if args.captions_out and os.path.lexists(args.captions_out) and not args.overwrite:
        raise ConversionError(f"{args.captions_out} already exists; choose another --captions-out or pass "
                              "--overwrite to replace it")
    options = conversion_options(args)
    if args.format == "vilbert":
        from interbert.data.ingest.formats.vilbert_lmdb import convert_vilbert_lmdb
        result = convert_vilbert_lmdb(args.src, options)
    elif args.format == "uniter":
        from interbert.data.ingest.formats.uniter_lmdb import convert_uniter_lmdb
        result = convert_uniter_lmdb(args.src, options, image_sizes=args.image_sizes)
    else:
        from interbert.data.ingest.formats.tensorpack_lmdb import convert_tensorpack_lmdb
        result = convert_tensorpack_lmdb(args.src, options)
    report_conversion(result, args.out)
    if args.format == "uniter" and not args.image_sizes:
        print("boxes are normalised (width = height = 1.0): UNITER stores no image size; --image-sizes FILE "
              "gives pixels")
    if args.captions_out:
        _write_captions(result, args.captions_out, args.captions_split)
    return 0


def run_convert_vinvl(args: argparse.Namespace) -> int:
    from interbert.data.ingest.detections import ConversionError
    from interbert.data.ingest.formats.vinvl import convert_vinvl

    if args.labelmap and not args.predictions:
        raise ConversionError("--labelmap maps the class names of --predictions; give --predictions too")
    result = convert_vinvl(args.features, conversion_options(args), predictions=args.predictions,
                           labelmap=args.labelmap)
    report_conversion(result, args.out)
    if not args.predictions:
        print("no --predictions: boxes are the normalised positions (width = height = 1.0), labels -1, no "
              "confidences")
    elif not args.labelmap:
        print("labels are -1 (no class ids): give --labelmap VinVL's labelmap JSON (label_to_idx) to map the "
              "predicted class names")
    return 0


def register_peer_converters(commands) -> None:
    """Add the peer converters' subcommands to ``interbert data``."""

    lmdb = commands.add_parser("convert-lmdb", help="a ViLBERT, UNITER or tensorpack (InterBERT CC) LMDB -> "
                                                    "feature store (docs/formats.md)")
    store_flags(lmdb)
    lmdb.add_argument("--format", required=True, metavar="|".join(LMDB_FORMATS),
                      help="vilbert: ViLBERT / InterBERT-release image LMDB; uniter: UNITER's image LMDB; "
                           "tensorpack: the InterBERT release's Conceptual Captions LMDB")
    lmdb.add_argument("--image-sizes", default=None, metavar="FILE",
                      help="uniter: JSON object or JSON lines of image id -> [width, height]; boxes are then "
                           "stored in pixels (default: normalised, width = height = 1)")
    lmdb.add_argument("--captions-out", default=None, metavar="FILE.jsonl",
                      help="tensorpack: also write the captions as a manifest (refused if it exists, unless "
                           "--overwrite)")
    lmdb.add_argument("--captions-split", default="train", help="split of the --captions-out lines (default train)")
    lmdb.add_argument("src", help="the LMDB: its directory, or tensorpack's single .lmdb file")
    lmdb.set_defaults(func=guarded(run_convert_lmdb))

    vinvl = commands.add_parser("convert-vinvl", help="VinVL / Oscar+ feature TSV (+ predictions) -> feature store")
    store_flags(vinvl)
    vinvl.add_argument("--predictions", default=None, metavar="PREDICTIONS.tsv",
                       help="VinVL predictions TSV (image_id, JSON objects with rect, class, conf; image_h, "
                            "image_w): labels, confidences and pixel boxes")
    vinvl.add_argument("--labelmap", default=None, metavar="FILE.json",
                       help="VinVL labelmap JSON (label_to_idx, 1-based) mapping class names to ids")
    vinvl.add_argument("features", help="feature TSV (NAME.lineidx beside it is used when present)")
    vinvl.set_defaults(func=guarded(run_convert_vinvl))

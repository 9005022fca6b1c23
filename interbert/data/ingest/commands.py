"""``interbert data ...``: synth, the converters, captions, verify, migrate, merge.

Start-up stays light: nothing here imports torch or the model; each command imports its module
when it runs.
"""
from __future__ import annotations

import argparse
import sys

from interbert.data.ingest.converter_flags import conversion_options, report_conversion, store_flags
from interbert.data.ingest.guarded_command import guarded
from interbert.data.ingest.peer_commands import register_peer_converters


def run_synth(args: argparse.Namespace) -> int:
    from interbert.data.ingest.synth import synthesize_corpus

    class_probs = {"auto": None, "on": True, "off": False}[args.class_probs]
    summary = synthesize_corpus(args.out, args.images, seed=args.seed, captions_per_image=args.captions_per_image,
                                val_images=args.val_images, test_images=args.test_images, class_probs=class_probs,
                                overwrite=args.overwrite, num_objects=args.objects)
    print(f"wrote {args.out}: features/ ({summary['images']} images), captions.jsonl ({summary['captions']} "
          f"captions; {summary['splits']}), corpus.json")
    return 0


def run_convert_tsv(args: argparse.Namespace) -> int:
    from interbert.data.ingest.formats.tsv import convert_tsv

    return report_conversion(convert_tsv(args.tsv, conversion_options(args), columns=args.columns), args.out)


def run_convert_npz(args: argparse.Namespace) -> int:
    from interbert.data.ingest.formats.npz import convert_npz

    return report_conversion(convert_npz(args.folder, conversion_options(args)), args.out)


def run_captions(args: argparse.Namespace) -> int:
    from collections import Counter

    from interbert.data.ingest.captions import convert_captions
    from interbert.data.text.manifests import unknown_splits_note

    splits: Counter = Counter()
    count, skipped, examples = convert_captions(args.format, args.input, args.out, split=args.split,
                                                id_rule=args.id_rule, strict=args.strict, overwrite=args.overwrite,
                                                splits=splits)
    print(f"wrote {args.out}: {count} captions ({', '.join(f'{name} {n}' for name, n in sorted(splits.items()))})")
    note = unknown_splits_note(splits)
    if note:
        print(f"note: {note}")
    for problem, n in skipped.items():
        print(f"skipped {n} lines ({problem}); first: {'; '.join(examples)} (--strict makes this an error)")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from interbert.data.ingest.verify import verify

    if not args.features and not args.captions:
        print("error: give --features STORE, --captions FILE.jsonl, or both", file=sys.stderr)
        return 2
    report = verify(args.features, args.captions or (), box_tolerance=args.box_tolerance)
    print(report.format())
    return 0 if report.clean else 1


def run_migrate(args: argparse.Namespace) -> int:
    from interbert.data.ingest.conversion import ConversionOptions
    from interbert.data.ingest.migrate import migrate_store

    options = ConversionOptions(out=args.out, workers=args.workers, shards=args.shards, strict=args.strict)
    result, decision = migrate_store(args.store, options, labels=args.labels)
    print(f"labels: {'shifted by one (0-based objects_id)' if decision == 'shift' else 'kept'}")
    return report_conversion(result, args.out)


def run_merge(args: argparse.Namespace) -> int:
    from interbert.data.ingest.merge import merge_stores

    metadata = merge_stores(args.out, args.stores)
    print(f"wrote {args.out}: {metadata.record_count} images in {len(args.stores)} stores, listed (nothing copied)")
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="feature stores, caption manifests, synthetic corpora (docs/data.md)")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    commands.required = True

    synth = commands.add_parser("synth", help="write a learnable synthetic corpus: feature store + captions")
    synth.add_argument("--out", required=True, help="directory to create (features/, captions.jsonl, corpus.json)")
    synth.add_argument("--images", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--captions-per-image", type=int, default=5)
    synth.add_argument("--objects", type=int, default=60,
                       help="object classes to draw from (5-60, default 60); fewer are learnt in fewer steps")
    synth.add_argument("--val-images", type=int, default=None, help="default: 100 from 1,000 images up, else N/10")
    synth.add_argument("--test-images", type=int, default=None, help="default: 100 from 1,000 images up, else N/10")
    synth.add_argument("--class-probs", choices=("auto", "on", "off"), default="auto",
                       help="store detector class distributions (auto: on up to 20,000 images)")
    synth.add_argument("--overwrite", action="store_true")
    synth.set_defaults(func=guarded(run_synth))

    tsv = commands.add_parser("convert-tsv", help="bottom-up-attention / LXMERT TSV files -> feature store")
    store_flags(tsv)
    tsv.add_argument("--columns", default=None,
                     help="column names, comma-separated, or a preset (bottom-up, bottom-up-cls-prob, "
                          "bottom-up-detections, bottom-up-cls-prob-detections, lxmert); default: the header row "
                          "if there is one, else recognised from the first row")
    tsv.add_argument("tsv", nargs="+", help="TSV files")
    tsv.set_defaults(func=guarded(run_convert_tsv))

    npz = commands.add_parser("convert-npz", help="a folder of per-image .npz files -> feature store")
    store_flags(npz)
    npz.add_argument("folder", help="folder searched recursively for *.npz (image id = file name)")
    npz.set_defaults(func=guarded(run_convert_npz))

    captions = commands.add_parser("captions", help="caption corpora -> caption manifest (JSON lines)")
    captions.add_argument("--format", required=True, choices=("coco", "cc", "sbu", "flickr30k"))
    captions.add_argument("--out", required=True, help="manifest file to write (.jsonl)")
    captions.add_argument("--split", default=None, help="split for every line (default: from the input)")
    captions.add_argument("--id-rule", choices=("index", "url-stem", "url-sha1"), default="index",
                          help="cc/sbu: how an image id is made from a row (default: the 0-based row index)")
    captions.add_argument("--strict", action="store_true", help="an empty caption is an error, not a counted skip")
    captions.add_argument("--overwrite", action="store_true", help="replace an existing manifest at --out")
    captions.add_argument("input", nargs="+", help="input files (sbu: captions.txt urls.txt, or one JSON)")
    captions.set_defaults(func=guarded(run_captions))

    check = commands.add_parser("verify", help="check a feature store and caption manifests; exit 0 when clean")
    check.add_argument("--features", default=None, help="feature store directory")
    check.add_argument("--captions", nargs="*", default=None, help="caption manifests (.jsonl)")
    check.add_argument("--box-tolerance", type=float, default=1.0, help="pixels a box may exceed the image by")
    check.set_defaults(func=guarded(run_verify))

    migrate = commands.add_parser("migrate", help="a store of schema 1 -> a new store of the current schema")
    migrate.add_argument("--out", required=True, help="the new store (the old one is only read)")
    migrate.add_argument("--labels", choices=("auto", "shift", "keep"), default="auto",
                         help="auto (default): judged from the store; shift: labels were 0-based objects_id; "
                              "keep: labels already count the background")
    migrate.add_argument("--workers", type=int, default=1, help="processes that decode and encode (default 1)")
    migrate.add_argument("--shards", type=int, default=1, help="LMDB environments of the new store (default 1)")
    migrate.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    migrate.add_argument("store", help="the schema-1 store")
    migrate.set_defaults(func=guarded(run_migrate))

    merge = commands.add_parser("merge", help="list several stores (e.g. made on different machines) as one")
    merge.add_argument("--out", required=True, help="the merged store directory to create (holds store.json)")
    merge.add_argument("stores", nargs="+", help="the stores to list; they stay where they are")
    merge.set_defaults(func=guarded(run_merge))

    register_peer_converters(commands)

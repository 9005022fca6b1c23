"""What the converter commands share: their flags (``store_flags``), the ``ConversionOptions`` those
flags make, and the report of what a conversion wrote and skipped."""
from __future__ import annotations

import argparse


def store_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every converter shares (see ``conversion_options``)."""
    parser.add_argument("--out", required=True, help="the feature store directory to create")
    parser.add_argument("--feature-size", type=int, default=2048, help="values per region feature (default 2048)")
    parser.add_argument("--num-classes", type=int, default=1601,
                        help="detector classes with the background at 0 (default 1601, Visual Genome)")
    parser.add_argument("--objects-id-base", type=int, choices=(0, 1), default=0,
                        help="0 (default): objects_id counts classes without the background, as the public "
                             "extractors write it, and is stored +1; 1: it already counts the background")
    parser.add_argument("--workers", type=int, default=1, help="processes that parse and encode (default 1)")
    parser.add_argument("--shards", type=int, default=1,
                        help="LMDB environments to spread the store over (default 1; see docs/data.md)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image instead of skipping it")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="count and skip records that cannot be read (default: stop at the first)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")


def conversion_options(args: argparse.Namespace):
    """The ConversionOptions of a converter's flags (``store_flags``)."""
    from interbert.data.ingest.conversion import ConversionOptions

    return ConversionOptions(out=args.out, feature_size=args.feature_size, num_classes=args.num_classes,
                             strict=args.strict, overwrite=args.overwrite, workers=args.workers,
                             shards=args.shards, skip_unreadable=args.skip_unreadable,
                             objects_id_base=args.objects_id_base)


def report_conversion(result, out: str) -> int:
    """Print what a converter wrote and skipped; the exit status (0)."""
    metadata = result.metadata
    print(f"wrote {out}: {metadata.record_count} images, {metadata.region_count} regions, "
          f"feature size {metadata.feature_size}, class distributions: {metadata.has_class_probs}")
    for problem, count in sorted(result.skipped.items()):
        print(f"skipped {count} images ({problem}); first: {'; '.join(result.skip_examples[problem])}")
    if result.skipped:
        print("(--strict turns skipped images into errors)")
    return 0

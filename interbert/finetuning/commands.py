"""`interbert finetune ...`: the fine-tuning entry point as a subcommand (single process, or one
rank of a torchrun / mpirun job). The DeepSpeed launcher runs `interbert/finetune.py` instead."""
from __future__ import annotations


def register(subparsers) -> None:
    from interbert import finetune

    parser = subparsers.add_parser("finetune", help="fine-tune or evaluate on flickr30k, vcr or glue-NAME",
                                   description=finetune.__doc__.split("\n\n")[0])
    finetune.add_arguments(parser)
    parser.set_defaults(func=lambda args: finetune.run_with_errors(args, "interbert finetune"))

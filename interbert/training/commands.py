"""`interbert pretrain ...`: the pretraining entry point as a subcommand (single process, or one
rank of a torchrun / mpirun job). The DeepSpeed launcher runs `interbert/pretrain.py` instead."""
from __future__ import annotations


def register(subparsers) -> None:
    from interbert import pretrain

    parser = subparsers.add_parser("pretrain", help="pretrain with MSM, MRM and ITM in a DeepSpeed engine",
                                   description=pretrain.__doc__.split("\n\n")[0])
    pretrain.add_arguments(parser)
    parser.set_defaults(func=lambda args: pretrain.run_with_errors(args, "interbert pretrain"))

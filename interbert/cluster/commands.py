"""`interbert cluster-env`: the `.deepspeed_env` that gives every host of a pdsh or mpirun launch
the environment this one has (see interbert/cluster/environment.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from interbert.errors import UsageError, run_reporting_user_errors

DEFAULT_FILE = ".deepspeed_env"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cluster-env", help="print or write the .deepspeed_env every host of a multi-node launch needs",
        description="Print (or with --write, write) DeepSpeed's .deepspeed_env: PATH with this virtual "
                    "environment's bin, CUDA_HOME, the accelerator and thread settings set here, and the "
                    "GLOO/NCCL socket interface that reaches --master-addr. DeepSpeed reads the file from the "
                    "folder the deepspeed command runs in, the home folder, or DS_ENV_FILE.")
    parser.add_argument("--master-addr", help="the address every host reaches rank 0's host by (the launcher's "
                                              "--master_addr); picks the socket interface towards it")
    parser.add_argument("--master-port", type=int,
                        help="written as MASTER_PORT (with --master-addr as MASTER_ADDR): what ranks started by "
                             "`deepspeed --launcher openmpi` rendezvous at, since that launcher passes neither")
    parser.add_argument("--write", nargs="?", const=DEFAULT_FILE, metavar="FILE",
                        help=f"write the file (default {DEFAULT_FILE} here) instead of printing it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    parser.set_defaults(func=lambda args: run_reporting_user_errors(run, args, "interbert cluster-env"))


def run(args) -> int:
    from interbert.cluster.environment import cluster_environment, render

    try:
        values = cluster_environment(args.master_addr, args.master_port)
    except OSError as error:
        raise UsageError(f"--master-addr {args.master_addr}: cannot be resolved or routed to ({error})") from None
    text = render(values)
    if not args.write:
        sys.stdout.write(text)
    else:
        target = Path(args.write)
        if target.exists() and not args.overwrite:
            raise UsageError(f"{target} exists: pass --overwrite to replace it, or --write another file "
                             "(and point DS_ENV_FILE at it)")
        target.write_text(text)
        print(f"wrote {target} ({', '.join(values)})", file=sys.stderr)
    if args.master_addr and "GLOO_SOCKET_IFNAME" not in values:
        print(f"note: no interface of this machine reaches {args.master_addr} directly; set GLOO_SOCKET_IFNAME "
              "and NCCL_SOCKET_IFNAME yourself", file=sys.stderr)
    if not args.master_addr:
        print("note: without --master-addr no socket interface is pinned; pass the address every host reaches "
              "rank 0's host by (and give the same to deepspeed --master_addr)", file=sys.stderr)
    return 0

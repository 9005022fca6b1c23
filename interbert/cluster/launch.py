"""`interbert launch DEEPSPEED_ARGS...`: DeepSpeed's launcher, after the checks its runner does not
make or makes with a traceback. The arguments are the `deepspeed` command's, unchanged; once
every check passes, DeepSpeed's runner runs with them in this process, its pdsh runner's kill
command (run on every host when the job is stopped) narrowed to this job's launchers
(`pdsh_kill.py`: as shipped it stops every DeepSpeed job of this Python on the job's hosts).

Checks, each failing with one line that names the host and what to do (exit status 2):
- the hostfile exists and parses;
- one host that is not this machine, without --force_multi: DeepSpeed would run it here (one host
  that is this machine needs no ssh: --no_ssh_check and --master_addr 127.0.0.1 are added);
- over several hosts (or --force_multi): every host answers over ssh without a password, has
  this Python and the training script at the same paths, and sees the script's input paths
  (--deepspeed_config, --features, --captions, --vocab); the master port is free on the first host.
The ranks check at start that every host sees the same --output-dir (training/shared_folder.py).
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from interbert.errors import UsageError, run_reporting_user_errors

SSH_TIMEOUT = 15
INPUT_FLAGS = ("--deepspeed_config", "--deepspeed-config", "--features", "--captions", "--vocab")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "launch", help="check the hosts of a hostfile, then run deepspeed with the same arguments",
        description=__doc__.split("\n\n")[0], add_help=False)
    parser.set_defaults(passes_through=True,
                        func=lambda args: run_reporting_user_errors(run, args, "interbert launch"))


def _parse(argv: list[str]):
    from deepspeed.launcher.runner import parse_args

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: interbert launch [deepspeed options] SCRIPT [script options]\n\n" + __doc__)
        raise SystemExit(0)
    return parse_args(argv)


def _hosts(args) -> list[str]:
    from deepspeed.launcher.runner import fetch_hostfile, parse_inclusion_exclusion

    if not Path(args.hostfile).is_file():
        if args.hostfile != "/job/hostfile":  # DeepSpeed's default: absent means "the local devices"
            raise UsageError(f"--hostfile {args.hostfile}: no such file")
        return []
    try:
        pool = fetch_hostfile(args.hostfile)
        active = parse_inclusion_exclusion(pool, args.include, args.exclude) if pool else {}
    except ValueError as error:
        raise UsageError(f"--hostfile {args.hostfile}: {error}") from None
    return list(active)


def _script_inputs(user_args: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(add_help=False)
    for flag in INPUT_FLAGS:
        parser.add_argument(flag, nargs="+", dest=flag.lstrip("-").replace("-", "_"))
    known, _ = parser.parse_known_args(user_args)
    return [path for values in vars(known).values() if values for path in values]


def _ssh(host: str, command: str, ssh_port: int | None) -> subprocess.CompletedProcess:
    port = ["-p", str(ssh_port)] if ssh_port else []
    return subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT}", *port, host,
                           command], capture_output=True, text=True, timeout=SSH_TIMEOUT * 4)


def check_host(host: str, script: str, inputs: list[str], ssh_port: int | None) -> None:
    """One ssh round trip: the host answers, has this Python, the script and every input path."""
    python, here = sys.executable, os.getcwd()
    tests = [f"test -x {shlex.quote(python)} || echo 'has no {python}'",
             f"cd {shlex.quote(here)} 2>/dev/null || echo 'has no folder {here}'",
             f"test -f {shlex.quote(script)} || echo 'has no {Path(here) / script}'"]
    tests += [f"test -e {shlex.quote(path)} || echo 'does not see {path}'" for path in inputs]
    try:
        result = _ssh(host, "; ".join(tests), ssh_port)
    except subprocess.TimeoutExpired:
        raise UsageError(f"host {host} did not answer over ssh within {SSH_TIMEOUT * 4} s") from None
    if result.returncode == 255:
        reason = (result.stderr.strip().splitlines() or ["ssh failed"])[-1]
        raise UsageError(f"cannot reach host {host} over ssh ({reason}): every host of the hostfile must accept "
                         "ssh from here without a password (see 'Several hosts' in docs/training.md)")
    lacks = result.stdout.strip().splitlines()
    if lacks:
        raise UsageError(f"host {host} {lacks[0]}: install the environment and the code at the same paths on every "
                         "host, and the data on a file system every host mounts")


def check_port(host: str, address: str, port: int, ssh_port: int | None) -> None:
    probe = (f"{shlex.quote(sys.executable)} -c \"import socket; s = socket.socket(); "
             f"s.bind(('{address}', {port}))\" 2>/dev/null || echo busy")
    result = _ssh(host, probe, ssh_port)
    if result.returncode == 0 and "busy" in result.stdout:
        raise UsageError(f"port {port} is in use on {host} (the rendezvous of rank 0): pass another --master_port")


def preflight(argv: list[str]) -> list[str]:
    """The checks; returns the arguments to run deepspeed with (`argv`, with --no_ssh_check and
    --master_addr 127.0.0.1 added for a hostfile of this machine alone)."""
    from interbert.training.hosts import is_this_machine

    args = _parse(argv)
    hosts = _hosts(args)
    multi = args.force_multi or len(hosts) > 1
    if hosts and not multi and not args.no_ssh:
        if not is_this_machine(hosts[0]):
            raise UsageError(f"--hostfile {args.hostfile} names one host, {hosts[0]}, which is not this machine: "
                             f"DeepSpeed would train here. Run the command on {hosts[0]}, or add --force_multi to "
                             "start it there over ssh")
        # This machine alone: DeepSpeed's runner would still ssh to it (its check, and `hostname -I`
        # for a missing --master_addr); nothing needs ssh here.
        extra = [] if args.no_ssh_check else ["--no_ssh_check"]
        extra += [] if args.master_addr else ["--master_addr", "127.0.0.1"]
        return extra + argv
    if not multi:
        return argv
    inputs = _script_inputs(args.user_args)
    for host in hosts:
        check_host(host, args.user_script, inputs, args.ssh_port)
    if args.master_addr:
        check_port(hosts[0], args.master_addr, args.master_port, args.ssh_port)
    return argv


def run(args) -> int:
    argv = preflight(list(args.extra))
    from deepspeed.launcher import runner

    from interbert.cluster.pdsh_kill import scope_pdsh_kill

    scope_pdsh_kill()
    runner.main(argv)  # exits with the job's status when it is not 0
    return 0
